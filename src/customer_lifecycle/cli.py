"""The ``lifecycle`` command line: a thin Typer layer over the packages (docs/cli.md).

Each command parses its options, calls one function of ``features``, ``training``,
``serving`` or ``simulator``, and turns a ``ValueError``/``OSError`` a user can cause
into one line on stderr with exit status 2.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    help="Customer lifecycle stage and churn-risk prediction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])


# Options several commands share, declared once.
EventsOption = Annotated[
    Path, typer.Option(help="Event log: .csv, .csv.gz, .parquet (file or folder), .jsonl.")
]
OutOption = Annotated[Path, typer.Option(help="Output table: .parquet or .csv.")]
MappingOption = Annotated[
    str | None,
    typer.Option(help="Column/event mapping: a YAML file, or a preset: ga4, segment."),
]
AllowMissingAmountsOption = Annotated[
    bool,
    typer.Option(
        "--allow-missing-amounts",
        help="Load the log even when the mapping's amount source is missing, or null on "
        "every purchase (purchase amounts are then lost; the default stops the run).",
    ),
]
UnknownEventsOption = Annotated[
    str,
    typer.Option(
        help="strict: quarantine rows with unknown event types; lenient: keep them "
        "(they count only in the all-events features)."
    ),
]
QuarantineOption = Annotated[
    Path | None,
    typer.Option(
        help="Where to write bad rows (default: <events>.quarantine.csv; with --engine spark "
        "a Parquet dataset, <events>.quarantine.parquet)."
    ),
]
SparkMasterOption = Annotated[str, typer.Option(help="Spark master URL for --engine spark.")]
StoreOption = Annotated[
    str | None,
    typer.Option(
        help="Score store: a SQLite file path or a SQLAlchemy URL "
        "(postgresql+psycopg://user@host/db); see docs/api.md."
    ),
]


def _allowing(mapping: str | None, allow_missing_amounts: bool) -> Any:
    """``--mapping`` as given, or loaded and told to allow missing amounts (then an
    ``EventMapping``, which every loader also takes)."""
    if not allow_missing_amounts or mapping is None:
        return mapping
    from customer_lifecycle.features.mapping import load_mapping

    loaded = load_mapping(mapping)
    return None if loaded is None else loaded.model_copy(update={"allow_missing_amounts": True})


def user_errors(func: F) -> F:
    """Report errors a user can cause as one line and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ValueError, OSError, KeyError) as exc:
            message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=2) from None
        except Exception as exc:
            # MLflow's errors (unknown model, registry trouble) are the user's to fix too
            if not type(exc).__module__.startswith("mlflow"):
                raise
            typer.echo(f"error: {str(exc).splitlines()[0]}", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: no output was written", err=True)
            raise typer.Exit(code=130) from None
        except Stopped as exc:
            typer.echo(f"stopped by {exc.name}: no output was written", err=True)
            raise typer.Exit(code=128 + exc.signum) from None

    return wrapper  # type: ignore[return-value]


class Stopped(BaseException):
    """A stop signal (SIGTERM, SIGHUP) raised in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``: the run unwinds through the same clean-up (temporary files,
    spill directories) and :func:`user_errors` exits with ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


#: Signals that stop a run the way Ctrl-C does (SIGINT already raises KeyboardInterrupt).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def stops_cleanly(func: F) -> F:
    """Turn SIGTERM and SIGHUP into :class:`Stopped` while ``func`` runs (under
    :func:`user_errors`), instead of dying with files half written."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return func(*args, **kwargs)  # handlers can only be set in the main thread

        def stop(signum: int, frame: object) -> None:
            # a second signal must not cut the clean-up short
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
            raise Stopped(signum)

        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
        try:
            return func(*args, **kwargs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    return wrapper  # type: ignore[return-value]


def _refuse_overwrites(
    inputs: dict[str, object], outputs: dict[str, object] | list[tuple[str, Path]]
) -> None:
    """Refuse, in one line and before any work, a run whose output is one of its inputs
    (or inside one), or another of its outputs (:mod:`features.paths`)."""
    from customer_lifecycle.features.paths import refuse_overlaps

    written = outputs.items() if isinstance(outputs, dict) else outputs
    refuse_overlaps(
        # inputs that are not files (preset names, model URIs) cannot be overwritten
        [(k, Path(str(v))) for k, v in inputs.items() if v is not None and Path(str(v)).exists()],
        [(k, Path(str(v))) for k, v in written if v is not None],
    )


def _quarantine_output(
    events: Path, quarantine: Path | None, *, engine: str = "memory"
) -> dict[str, object]:
    from customer_lifecycle.features.events import default_quarantine_path

    if quarantine is not None:
        return {"--quarantine": quarantine}
    if engine == "spark":
        from customer_lifecycle.features.spark_engine import default_spark_quarantine_path

        return {"the quarantine": default_spark_quarantine_path(events)}
    return {"the quarantine file": default_quarantine_path(events)}


def _progress_bar(description: str) -> tuple[Any, Callable[[int, int], None]]:
    """A rich progress bar on stderr and the ``progress(done, total)`` callback feeding it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@app.command()
@user_errors
@stops_cleanly
def features(
    events: EventsOption,
    as_of: Annotated[
        str,
        typer.Option(
            help="Point in time (ISO 8601; naive means UTC). Only events strictly before it "
            "are used."
        ),
    ],
    out: OutOption,
    mapping: MappingOption = None,
    allow_missing_amounts: AllowMissingAmountsOption = False,
    unknown_events: UnknownEventsOption = "strict",
    definition: Annotated[
        Path | None, typer.Option(help="Feature definition YAML (default: the shipped one).")
    ] = None,
    quarantine: QuarantineOption = None,
    engine: Annotated[
        str,
        typer.Option(
            help="memory: this machine; spark: a Spark cluster (Parquet out, see docs/spark.md)."
        ),
    ] = "memory",
    chunk_customers: Annotated[
        int | None,
        typer.Option(
            help="Stream the log and build features for about this many customers at a "
            "time, in bounded memory (default: the whole log at once)."
        ),
    ] = None,
    spark_master: SparkMasterOption = "local[*]",
) -> None:
    """Build point-in-time features, one row per customer, from an event log."""
    from customer_lifecycle.features.contract import parse_as_of
    from customer_lifecycle.features.definition import load_definition

    if unknown_events not in ("strict", "lenient"):
        raise ValueError("--unknown-events must be strict or lenient")
    _check_engine(engine)
    cutoff = parse_as_of(as_of)
    spec = load_definition(definition)
    _refuse_overwrites(
        {"--events": events, "--mapping": mapping, "--definition": definition},
        {"--out": out, **_quarantine_output(events, quarantine, engine=engine)},
    )
    if engine == "spark":
        from customer_lifecycle.features.mapping import load_mapping
        from customer_lifecycle.features.spark_engine import features_spark

        n, load_summary = features_spark(
            events,
            as_of=cutoff,
            out=out,
            definition=spec,
            mapping=load_mapping(_allowing(mapping, allow_missing_amounts)),
            master=spark_master,
            unknown_events=unknown_events,
            quarantine_path=quarantine,
        )
        typer.echo(str(load_summary), err=True)
        typer.echo(f"wrote {n:,} customers as of {cutoff.isoformat()} to {out} (Spark)")
        return
    if chunk_customers is not None:
        from customer_lifecycle.features.streaming import features_file

        bar, report = _phased_progress_bar()
        with bar:
            summary = features_file(
                events,
                as_of=cutoff,
                out=out,
                definition=spec,
                mapping=_allowing(mapping, allow_missing_amounts),
                unknown_events=unknown_events,
                quarantine_path=quarantine,
                chunk_customers=chunk_customers,
                progress=report,
            )
        typer.echo(str(summary.load), err=True)
        typer.echo(
            f"wrote {summary.customers:,} customers x {len(spec.feature_names())} features as "
            f"of {cutoff.isoformat()} to {out}"
        )
        return

    from customer_lifecycle.features.engine import build_features
    from customer_lifecycle.features.events import load_events
    from customer_lifecycle.features.io import table_format
    from customer_lifecycle.features.mapping import load_mapping
    from customer_lifecycle.features.sink import write_atomic

    table_format(out)  # refuse a bad output name before the long work
    log, load_summary = load_events(
        events,
        mapping=load_mapping(_allowing(mapping, allow_missing_amounts)),
        unknown_events=unknown_events,  # type: ignore[arg-type]
        quarantine_path=quarantine,
    )
    typer.echo(str(load_summary), err=True)
    bar, update = _progress_bar("building features")
    with bar:
        table = build_features(log, as_of=cutoff, definition=spec, progress=update)
    write_atomic(table.reset_index(), out)
    typer.echo(
        f"wrote {len(table):,} customers x {table.shape[1]} features as of "
        f"{cutoff.isoformat()} to {out}"
    )


def _check_engine(engine: str) -> None:
    if engine not in ("memory", "spark"):
        raise ValueError(f"--engine must be memory or spark, got {engine!r}")


def _spark_refuses(**options: object) -> None:
    for name, value in options.items():
        if value is not None:
            raise ValueError(f"--{name} is not supported with --engine spark (docs/spark.md)")


def _phased_progress_bar() -> tuple[Any, Callable[[str, int, int], None]]:
    """A progress bar whose description follows the phase: ``report(phase, done, total)``."""
    bar, update = _progress_bar("reading events")

    def report(phase: str, done: int, total: int) -> None:
        bar.update(bar.task_ids[0], description=phase)
        update(done, total)

    return bar, report


@app.command()
@user_errors
@stops_cleanly
def simulate(
    customers: Annotated[int, typer.Option(help="Number of customers to simulate.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same bytes.")],
    out: Annotated[Path, typer.Option(help="Output directory (created if missing).")],
    scenario: Annotated[
        str, typer.Option(help="Shipped scenario (default, subscription) or a scenario YAML path.")
    ] = "default",
    as_of: Annotated[
        list[str] | None,
        typer.Option(
            "--as-of",
            help="Snapshot time at midnight UTC (ISO 8601); repeat for several. "
            "Default: the end of the arrival period.",
        ),
    ] = None,
    horizon_days: Annotated[
        int, typer.Option(help="Churn window after each snapshot, in days.")
    ] = 90,
    fmt: Annotated[
        str, typer.Option("--format", help="Event file format: parquet, csv or jsonl.")
    ] = "parquet",
    oracle: Annotated[
        bool,
        typer.Option("--oracle", help="Also write the Bayes-optimal predictions and their scores."),
    ] = False,
) -> None:
    """Simulate customer journeys: events, true stages, churn outcomes and metadata."""
    from customer_lifecycle.simulator.generate import write_dataset

    # the files write_dataset writes (docs/cli.md), and its spill directory
    names = [f"events.{fmt}", "labels.csv", "outcomes.csv", "metadata.json", ".events-tmp"]
    _refuse_overwrites(
        {"--scenario": scenario},
        [("--out", out / name) for name in [*names, *(["oracle.csv"] if oracle else [])]],
    )
    bar, update = _progress_bar("simulating")

    def report(phase: str, done: int, total: int) -> None:
        bar.update(bar.task_ids[0], description=phase)
        update(done, total)

    with bar:
        meta = write_dataset(
            out,
            scenario=scenario,
            customers=customers,
            seed=seed,
            as_of=as_of,
            horizon_days=horizon_days,
            fmt=fmt,
            oracle=oracle,
            progress=report,
        )
    counts = meta["counts"]
    typer.echo(
        f"wrote {counts['events']:,} events of {counts['customers']:,} customers "
        f"(scenario {meta['scenario']}, seed {meta['seed']}) to {out}"
    )
    for snap in meta["snapshots"]:
        typer.echo(
            f"as_of {snap['as_of']}: {snap['labelled_customers']:,} labelled customers, "
            f"churn rate {snap['churn_rate']:.3f}"
        )
    if oracle:
        s = meta["oracle"]
        typer.echo(
            f"oracle: stage accuracy {s['stage_accuracy']:.4f}, macro-F1 "
            f"{s['stage_macro_f1']:.4f}, churn ROC-AUC {s['churn_roc_auc']:.4f}"
        )


@app.command()
@user_errors
def check(
    events: EventsOption,
    mapping: MappingOption = None,
    allow_missing_amounts: AllowMissingAmountsOption = False,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CRM labels: customer_id, stage[, as_of]. Without it, the rulebook's labels "
            "at --as-of."
        ),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            help="Snapshot time for labels without an as_of column, and for rulebook labels."
        ),
    ] = None,
    horizon_days: Annotated[int, typer.Option(help="Churn horizon after as_of, in days.")] = 90,
    taxonomy: Annotated[
        str | None,
        typer.Option(help="Stage taxonomy: a YAML file, or a shipped one: default, hubspot."),
    ] = None,
    qualifying: Annotated[
        str, typer.Option(help="Activity that counts as not churned: any or purchases.")
    ] = "any",
    unknown_events: UnknownEventsOption = "strict",
    definition: Annotated[Path | None, typer.Option(help="Feature definition YAML.")] = None,
    rulebook: Annotated[
        Path | None, typer.Option(help="Stage rulebook YAML, for labels without --labels.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
) -> None:
    """Report what a log and its labels hold and whether they are enough to train.

    Exit status 0: enough to train; 1: readable but not enough (the reasons are printed);
    2: unreadable input.
    """
    import json

    from customer_lifecycle.training.eligibility import check_data

    report = check_data(
        events,
        mapping=_allowing(mapping, allow_missing_amounts),
        labels_path=labels,
        as_of=as_of,
        horizon_days=horizon_days,
        qualifying=qualifying,
        unknown_events=unknown_events,
        taxonomy_path=taxonomy,
        definition_path=definition,
        rulebook_path=rulebook,
    )
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_text())
    if not report.eligible:
        raise typer.Exit(code=1)


@app.command()
@user_errors
def train(
    events: EventsOption,
    as_of: Annotated[
        str | None,
        typer.Option(
            help="Snapshot time for labels without an as_of column, and for rulebook labels."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="CRM labels: customer_id, stage[, as_of]. Without it, the rulebook labels."
        ),
    ] = None,
    horizon_days: Annotated[int, typer.Option(help="Churn horizon after as_of, in days.")] = 90,
    qualifying: Annotated[
        str, typer.Option(help="Activity that counts as not churned: any or purchases.")
    ] = "any",
    register: Annotated[
        str | None, typer.Option(help="Register the model in the MLflow registry by this name.")
    ] = None,
    promote_if_better: Annotated[
        bool,
        typer.Option(
            help="Move the champion alias to the new version if it beats the champion "
            "on this run's validation data."
        ),
    ] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "lifecycle",
    seed: Annotated[int, typer.Option(help="Seed of the split and the boosters.")] = 0,
    risk_low: Annotated[float, typer.Option(help="Churn risk is low below this.")] = 0.3,
    risk_high: Annotated[float, typer.Option(help="Churn risk is high from this.")] = 0.6,
    mapping: MappingOption = None,
    allow_missing_amounts: AllowMissingAmountsOption = False,
    unknown_events: UnknownEventsOption = "strict",
    definition: Annotated[Path | None, typer.Option(help="Feature definition YAML.")] = None,
    taxonomy: Annotated[
        str | None,
        typer.Option(help="Stage taxonomy: a YAML file, or a shipped one: default, hubspot."),
    ] = None,
    rulebook: Annotated[
        Path | None,
        typer.Option(
            help="Stage rulebook YAML for the taxonomy's stages (default: the shipped one, "
            "when it fits the taxonomy)."
        ),
    ] = None,
    latent_states: Annotated[
        bool,
        typer.Option(
            help="Fit the latent-stage model (EM on every customer's event sequence) and "
            "give its filtered states to both heads; it also gives p_next_<stage>."
        ),
    ] = True,
    value: Annotated[
        bool,
        typer.Option(
            help="Fit the customer value model (BG/NBD, Gamma-Gamma, learned heads kept only "
            "where they beat them) and evaluate it on held-out time."
        ),
    ] = True,
    value_horizon_days: Annotated[
        int,
        typer.Option(help="Horizon of the expected purchases and spend, in days."),
    ] = 365,
    value_tiers: Annotated[
        str,
        typer.Option(help="Value tiers as top percentages of predicted spend, e.g. 1,5,10,25,50."),
    ] = "1,5,10,25,50",
    cv_folds: Annotated[
        str,
        typer.Option(
            help="Customer folds that choose the rounds and the calibration: auto (5 up to "
            "25,000 fit rows, 3 up to 50,000, then one held-out fold) or 1 to 10."
        ),
    ] = "auto",
    refit_worker: Annotated[
        str,
        typer.Option(
            help="Fit the final boosters on every row in a second process while the folds "
            "train: auto (with 2+ cores and 5,000+ labelled rows), always or never.",
        ),
    ] = "auto",
    final_seeds: Annotated[
        str,
        typer.Option(
            help="Final boosters per head, each with its own seed, averaged into one: auto "
            "(3 from 5,000 labelled rows up to 25,000 fit rows, else 1) or 1 to 10.",
        ),
    ] = "auto",
    churn_history: Annotated[
        str,
        typer.Option(
            help="Earlier snapshots per labelled customer added to the churn head's rows: "
            "auto (3 up to 25,000 labelled rows, else 0) or 0 to 12.",
        ),
    ] = "auto",
    churn_history_step_days: Annotated[
        str,
        typer.Option(
            help="Days between those earlier snapshots: auto (one horizon: their churn "
            "windows do not overlap) or 1 to 3650.",
        ),
    ] = "auto",
) -> None:
    """Train the stage and churn heads, log the run to MLflow, print run id and model URI."""
    from customer_lifecycle.simulator import dataset_oracle
    from customer_lifecycle.training.train import TrainConfig
    from customer_lifecycle.training.train import train as run_training

    _refuse_overwrites(
        {
            "--events": events,
            "--labels": labels,
            "--mapping": mapping,
            "--definition": definition,
            "--taxonomy": taxonomy,
            "--rulebook": rulebook,
        },
        _quarantine_output(events, None),
    )
    config = TrainConfig(
        horizon_days=horizon_days,
        qualifying=qualifying,
        seed=seed,
        risk_thresholds=(risk_low, risk_high),
        unknown_events=unknown_events,
        latent_states=latent_states,
        value=value,
        value_horizon_days=value_horizon_days,
        value_tiers=_tier_shares(value_tiers),
        cv_folds=_count_or_auto(cv_folds, "--cv-folds"),
        refit_worker=refit_worker.strip().lower(),
        final_seeds=_count_or_auto(final_seeds, "--final-seeds"),
        churn_history=_count_or_auto(churn_history, "--churn-history", "from 0 to 12"),
        churn_history_step_days=_count_or_auto(
            churn_history_step_days, "--churn-history-step-days", "from 1 to 3650"
        ),
    )
    # On a simulated log, score the Bayes-optimal oracle beside the model. Its churn is
    # "no event at all in the horizon", so it only answers --qualifying any.
    oracle = (
        dataset_oracle(events, horizon_days=horizon_days, as_of=[as_of] if as_of else ())
        if qualifying == "any"
        else None
    )
    result = run_training(
        events,
        as_of=as_of,
        labels_path=labels,
        config=config,
        definition_path=definition,
        taxonomy_path=taxonomy,
        rulebook_path=rulebook,
        mapping=_allowing(mapping, allow_missing_amounts),
        register=register,
        promote_if_better=promote_if_better,
        experiment=experiment,
        oracle_predictions=oracle,
        say=lambda line: typer.echo(line, err=True),
    )
    m = result.metrics
    typer.echo(
        f"validation: stage macro-F1 {m['valid_stage_macro_f1']:.4f}, "
        f"accuracy {m['valid_stage_accuracy']:.4f}; churn ROC-AUC {m['valid_churn_roc_auc']:.4f}"
    )
    if "oracle_stage_macro_f1" in m:
        typer.echo(
            f"oracle:     stage macro-F1 {m['oracle_stage_macro_f1']:.4f} "
            f"(model/oracle {m['ratio_stage_macro_f1_to_oracle']:.3f}); "
            f"churn ROC-AUC {m['oracle_churn_roc_auc']:.4f}"
        )
    typer.echo(f"run id: {result.run_id}")
    typer.echo(f"model URI: {result.model_uri}")


def _count_or_auto(text: str, option: str, span: str = "from 1 to 10") -> int | str:
    """``auto`` or a whole number (TrainConfig checks its range)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{option} must be auto or a whole number {span}, not {text!r}") from None


def _tier_shares(text: str) -> tuple[float, ...]:
    """``"1,5,10"`` (percent) as shares ``(0.01, 0.05, 0.1)``; one-line error otherwise."""
    try:
        return tuple(float(part) / 100.0 for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--value-tiers must be comma-separated percentages such as 1,5,10,25,50, not {text!r}"
        ) from None


@app.command()
@user_errors
def evaluate(
    events: EventsOption,
    model: Annotated[str, typer.Option(help="Model URI (models:/NAME@champion) or directory.")],
    labels: Annotated[
        Path | None, typer.Option(help="CRM labels; without them the rulebook labels.")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Snapshot time for labels without as_of.")
    ] = None,
    horizon_days: Annotated[
        int | None, typer.Option(help="Churn horizon (default: the model's).")
    ] = None,
    mapping: MappingOption = None,
    taxonomy: Annotated[
        str | None,
        typer.Option(
            help="Read stage labels with this taxonomy (a YAML file or a shipped name) "
            "instead of the model's own; its stages must be the model's."
        ),
    ] = None,
    rulebook: Annotated[
        Path | None,
        typer.Option(help="Stage rulebook YAML for labels without --labels."),
    ] = None,
) -> None:
    """Score labelled snapshots with a model and print its metrics per head and class."""
    from customer_lifecycle.training.train import evaluate_model

    _refuse_overwrites(
        {
            "--events": events,
            "--model": model,
            "--labels": labels,
            "--mapping": mapping,
            "--taxonomy": taxonomy,
            "--rulebook": rulebook,
        },
        _quarantine_output(events, None),
    )
    result = evaluate_model(
        events,
        model=model,
        labels_path=labels,
        as_of=as_of,
        horizon_days=horizon_days,
        mapping=mapping,
        taxonomy_path=taxonomy,
        rulebook_path=rulebook,
        say=lambda line: typer.echo(line, err=True),
    )
    for key in sorted(result):
        typer.echo(f"{key}\t{result[key]:.6g}")


@app.command()
@user_errors
def promote(
    name: Annotated[str, typer.Option(help="Registered model name.")],
    version: Annotated[
        str | None, typer.Option(help="Version to promote (default: the latest).")
    ] = None,
) -> None:
    """Point the registered model's champion alias at a version."""
    from customer_lifecycle.training.tracking import promote as set_champion

    done = set_champion(name, version)
    typer.echo(f"models:/{name}@champion -> version {done}")


@app.command()
@user_errors
@stops_cleanly
def score(
    events: EventsOption,
    model: Annotated[
        str, typer.Option(help="Model URI (models:/NAME@champion, models:/NAME/3) or directory.")
    ],
    as_of: Annotated[str, typer.Option(help="Score as of this time (ISO 8601; naive is UTC).")],
    out: OutOption,
    mapping: MappingOption = None,
    allow_missing_amounts: AllowMissingAmountsOption = False,
    unknown_events: UnknownEventsOption = "strict",
    engine: Annotated[
        str,
        typer.Option(
            help="memory: stream the log on this machine; spark: a Spark cluster "
            "(Parquet out, see docs/spark.md)."
        ),
    ] = "memory",
    chunk_customers: Annotated[
        int,
        typer.Option(
            help="Customers validated, featurized and scored at a time; lower it to use "
            "less memory."
        ),
    ] = 50_000,
    quarantine: QuarantineOption = None,
    spark_master: SparkMasterOption = "local[*]",
    store: StoreOption = None,
    keep_runs: Annotated[
        int, typer.Option(help="Runs the score store keeps (older ones are removed).")
    ] = 10,
) -> None:
    """Score every customer: stage, churn probability, risk band, stage probabilities."""
    _check_engine(engine)
    _refuse_overwrites(
        {"--events": events, "--model": model, "--mapping": mapping},
        {
            "--out": out,
            # a store given by URL is not a local file
            **_quarantine_output(events, quarantine, engine=engine),
            "--store": store if store is not None and "://" not in store else None,
        },
    )
    if engine == "spark":
        from customer_lifecycle.features.mapping import load_mapping
        from customer_lifecycle.scoring.spark import score_parquet

        _spark_refuses(store=store)
        n, load_summary = score_parquet(
            events,
            model=model,
            as_of=as_of,
            out=out,
            mapping=load_mapping(_allowing(mapping, allow_missing_amounts)),
            master=spark_master,
            unknown_events=unknown_events,
            quarantine_path=quarantine,
        )
        typer.echo(str(load_summary), err=True)
        typer.echo(f"scored {n:,} customers to {out} (Spark)")
        return
    from customer_lifecycle.scoring.batch import score_file

    stored = _StoreRun(store, model, as_of, keep_runs) if store is not None else None
    bar, report = _phased_progress_bar()
    with bar:
        _, summary = score_file(
            events,
            model=model if stored is None else stored.bundle,
            as_of=as_of,
            out=out,
            mapping=_allowing(mapping, allow_missing_amounts),
            unknown_events=unknown_events,
            progress=report,
            chunk_customers=chunk_customers,
            quarantine_path=quarantine,
            return_scores=False,
        )
    typer.echo(str(summary.load), err=True)
    bands = summary.risk_bands
    typer.echo(
        f"scored {summary.customers:,} customers to {out} in {summary.seconds:.1f} s "
        f"(risk: {', '.join(f'{k} {v:,}' for k, v in sorted(bands.items()))})"
    )
    if stored is not None:
        typer.echo(stored.write(out))


class _StoreRun:
    """``score --store``: open the store and pin the model before scoring (a bad URL or an
    older ``as_of`` fails before the work), write the run once the output is complete."""

    def __init__(self, url: str, model: str, as_of: str, keep_runs: int) -> None:
        from customer_lifecycle.scoring.pyfunc import load_bundle
        from customer_lifecycle.scoring.store import open_store
        from customer_lifecycle.scoring.store.writer import check_as_of
        from customer_lifecycle.serving.registry import resolve

        if keep_runs < 1:
            raise ValueError(f"--keep-runs must be at least 1, got {keep_runs}")
        self.url, self.as_of, self.keep_runs = url, as_of, keep_runs
        self.engine = open_store(url)
        check_as_of(self.engine, as_of)
        ref = resolve(model)  # an alias is pinned: the version stored is the one scored
        self.bundle = load_bundle(ref.load_uri)
        self.name = ref.name
        self.version = ref.version or str(self.bundle.metadata.get("run_id") or "local")

    def write(self, out: Path) -> str:
        import time

        from customer_lifecycle.scoring.store import write_run
        from customer_lifecycle.scoring.store.schema import display_url

        start = time.perf_counter()
        try:
            run = write_run(
                self.engine,
                out,
                model_name=self.name,
                model_version=self.version,
                as_of=self.as_of,
                keep_runs=self.keep_runs,
                value_horizon_days=(
                    None if self.bundle.value is None else self.bundle.value.horizon_days
                ),
            )
        finally:
            self.engine.dispose()
        return (
            f"stored run {run.run_id} ({run.customers:,} customers) in "
            f"{display_url(self.url)} in {time.perf_counter() - start:.1f} s"
        )


@app.command()
@user_errors
def serve(
    model: Annotated[
        str | None,
        typer.Option(
            help="Model URI (models:/NAME@champion, models:/NAME/3) or directory; without "
            "one (nor LIFECYCLE_MODEL_URI) scoring answers 503."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port to listen on.")] = 8000,
    api_keys_file: Annotated[
        Path | None,
        typer.Option(help="File with one API key per line (or set LIFECYCLE_API_KEYS)."),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes. One process uses about one CPU core under load: give "
            "one per core to use them all. Each loads its own copy of the model (memory) "
            "and follows the registry alias on its own."
        ),
    ] = 1,
    store: StoreOption = None,
) -> None:
    """Serve the HTTP scoring API (other settings: LIFECYCLE_* variables, see docs/api.md)."""
    from customer_lifecycle.serving.server import run
    from customer_lifecycle.serving.settings import settings_with

    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    settings = settings_with(model_uri=model, api_keys_file=api_keys_file)
    if store is not None:
        import os

        from customer_lifecycle.scoring.store import open_store

        open_store(store).dispose()  # a bad URL or store is one line here, not a failed start
        os.environ["LIFECYCLE_STORE_URL"] = store  # what each worker's app reads
    run(settings, host=host, port=port, workers=workers)


@app.command()
@user_errors
def export(
    store: Annotated[str, typer.Option(help="Score store: SQLite file or SQLAlchemy URL.")],
    out: Annotated[Path, typer.Option(help="Output table: .csv, .csv.gz or .parquet.")],
    segment: Annotated[
        str,
        typer.Option(
            help="Filters, comma separated: stage=NAME, risk=low|medium|high, min_churn=P, "
            "max_churn=P, stage_changed_since=TIME, risk_changed_since=TIME, value_tier=TIER "
            "(top_1, top_5, ..., rest, unknown) (none: everyone)."
        ),
    ] = "",
    run_id: Annotated[
        int | None, typer.Option("--run", help="Run to export (default: the newest).")
    ] = None,
) -> None:
    """Write a segment of the score store to a file for CRM import."""
    from customer_lifecycle.scoring.store import open_store
    from customer_lifecycle.scoring.store.export import export_segment
    from customer_lifecycle.scoring.store.queries import NotFound, parse_segment
    from customer_lifecycle.scoring.store.schema import sqlite_path

    seg = parse_segment(segment)
    engine = open_store(store)
    try:
        n, run = export_segment(engine, seg, out, run_id=run_id, store_file=sqlite_path(store))
    except NotFound as exc:
        raise ValueError(str(exc)) from None
    finally:
        engine.dispose()
    typer.echo(f"exported {n:,} customers of run {run.run_id} (as of {run.as_of}) to {out}")


@app.command()
@user_errors
def vacuum(
    store: Annotated[str, typer.Option(help="Score store: SQLite file or SQLAlchemy URL.")],
) -> None:
    """Compact the score store and refresh its statistics; lookups keep answering."""
    from customer_lifecycle.scoring.store import open_store
    from customer_lifecycle.scoring.store.maintenance import vacuum as vacuum_store
    from customer_lifecycle.scoring.store.schema import display_url, sqlite_path

    path = sqlite_path(store)
    if path is not None and not path.is_file():
        raise ValueError(f"no score store at {path}")  # not an empty store made to vacuum it
    engine = open_store(store)
    try:
        done = vacuum_store(engine)
    finally:
        engine.dispose()
    line = f"vacuumed score store {display_url(store)} in {done.seconds:.1f} s"
    if done.size_before is not None and done.size_after is not None:
        line += f": {done.size_before / 1e6:,.1f} MB -> {done.size_after / 1e6:,.1f} MB"
        if not done.log_truncated:
            line += " (a reader kept the write-ahead log; the next write reuses it)"
    typer.echo(line)


def main() -> None:  # pragma: no cover - console entry convenience
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
