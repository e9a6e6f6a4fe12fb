"""The ``lifecycle`` command line: a thin Typer layer over the packages (SPEC §7).

Each command parses its options, calls one function of ``features``, ``training``,
``serving`` or ``simulator``, and turns a ``ValueError``/``OSError`` a user can cause
into one line on stderr with exit status 2.
"""

from __future__ import annotations

import functools
import sys
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
        except KeyboardInterrupt:
            typer.echo("interrupted: no output was written", err=True)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


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
def features(
    events: Annotated[
        Path, typer.Option(help="Event log: .csv, .csv.gz, .parquet (file or folder), .jsonl.")
    ],
    as_of: Annotated[
        str,
        typer.Option(
            help="Point in time (ISO 8601; naive means UTC). Only events strictly before it "
            "are used."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output table: .parquet or .csv.")],
    mapping: Annotated[
        str | None,
        typer.Option(help="Column/event mapping: a YAML file, or a preset: ga4, segment."),
    ] = None,
    unknown_events: Annotated[
        str,
        typer.Option(
            help="strict: quarantine rows with unknown event types; lenient: keep them "
            "(they count only in the all-events features)."
        ),
    ] = "strict",
    definition: Annotated[
        Path | None, typer.Option(help="Feature definition YAML (default: the shipped one).")
    ] = None,
    quarantine: Annotated[
        Path | None,
        typer.Option(help="Where to write bad rows (default: <events>.quarantine.csv)."),
    ] = None,
) -> None:
    """Build point-in-time features, one row per customer, from an event log."""
    from features.contract import parse_as_of
    from features.definition import load_definition
    from features.engine import build_features
    from features.events import load_events, load_mapping
    from features.io import table_format, write_table

    if unknown_events not in ("strict", "lenient"):
        raise ValueError("--unknown-events must be strict or lenient")
    table_format(out)  # refuse a bad output name before the long work
    cutoff = parse_as_of(as_of)
    spec = load_definition(definition)
    log, summary = load_events(
        events,
        mapping=load_mapping(mapping),
        unknown_events=unknown_events,  # type: ignore[arg-type]
        quarantine_path=quarantine,
    )
    typer.echo(str(summary), err=True)
    bar, update = _progress_bar("building features")
    with bar:
        table = build_features(log, as_of=cutoff, definition=spec, progress=update)
    write_table(table.reset_index(), out)
    typer.echo(
        f"wrote {len(table):,} customers x {table.shape[1]} features as of "
        f"{cutoff.isoformat()} to {out}"
    )


@app.command()
@user_errors
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
    from simulator.generate import write_dataset

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


def main() -> None:  # pragma: no cover - console entry convenience
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
