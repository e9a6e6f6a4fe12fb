"""One training run: labels, point-in-time examples, split, heads, baselines, MLflow.

:func:`train` is what ``lifecycle train`` and the MLproject's ``train`` entry point
call. Everything a run decides is logged to MLflow: the configuration as params, a
data summary, metrics per head and per class for the model and every baseline (and
those of reference predictions, such as the simulator's oracle, when the caller gives
them), plots, and the model, once, as a pyfunc.

Every labelled row reaches the registered model: a held-out validation part is set
aside, the rest (the *fit set*) is cross-fitted by customer folds for calibration and
the number of rounds, and the registered boosters are then fitted on all rows. The
validation metrics are those of the fold models, which never saw a validation customer
(docs/models.md#training-data-and-the-split).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import mlflow
import numpy as np
import pandas as pd
from customer_lifecycle.features.btyd import VALUE_TIER_SHARES, tier_thresholds
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of, parse_timestamps
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.latent import LatentFilter, LatentStateFeatures, model_features
from customer_lifecycle.features.mapping import load_mapping
from customer_lifecycle.features.taxonomy import Taxonomy, load_taxonomy
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.scoring.pyfunc import AS_OF_PARAM, BUNDLE_ARTIFACT, MODEL_CODE, load_bundle
from customer_lifecycle.training import btyd, metrics, models, plots, tracking
from customer_lifecycle.training import value as value_model
from customer_lifecycle.training.eligibility import TrainingCounts, require_trainable
from customer_lifecycle.training.labels import (
    Rulebook,
    check_horizon,
    churn_labels,
    earlier_snapshots,
    load_labels,
    rulebook_for,
)
from customer_lifecycle.training.model_env import model_environment
from customer_lifecycle.training.refit import AUTO_MIN_ROWS, FinalFits, final_names, use_worker
from mlflow.models import infer_signature

Say = Callable[[str], None]

VALIDATION_MODEL = (
    "the fold boosters' mean raw score with the out-of-fold calibration; "
    "none of them saw a validation customer"
)
LOGGED_TRAINING_PARAMS = (
    "folds",
    "rounds_stage",
    "rounds_churn",
    "final_seeds",
    "churn_history_rows",
    "fit_rows",
    "final_fit_rows",
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run; all of it is logged as MLflow params."""

    horizon_days: int = 90
    qualifying: str = "any"
    validation_fraction: float = 0.2
    cv_folds: int | str = "auto"
    latent_states: bool = True
    seed: int = 0
    risk_thresholds: tuple[float, float] = (0.3, 0.6)
    max_rounds: int = 2000
    lgb_params: dict[str, Any] = field(default_factory=dict)
    unknown_events: str = "strict"
    value: bool = True
    value_horizon_days: int = 365
    value_tiers: tuple[float, ...] = VALUE_TIER_SHARES
    refit_worker: str = "auto"
    final_seeds: int | str = "auto"
    churn_history: int | str = "auto"
    churn_history_step_days: int | str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError("validation fraction must be between 0 and 1")
        h = self.value_horizon_days
        if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= 3650:
            raise ValueError(
                f"the value horizon must be a whole number of days from 1 to 3650, not {h!r}"
            )
        tier_thresholds([1.0], self.value_tiers)  # refuses bad shares in one line
        use_worker(self.refit_worker, 0)  # refuses an unknown mode in one line
        _check_count("final_seeds", self.final_seeds, 1, 10)
        _check_count("churn_history", self.churn_history, 0, 12)
        _check_count("churn_history_step_days", self.churn_history_step_days, 1, 3650)
        _check_count(
            "cv_folds", self.cv_folds, 0, 10, "'auto', 0 (automatic) or a whole number from 1 to 10"
        )

    def final_seeds_for(self, fit_rows: int, labelled_rows: int) -> int:
        """Final boosters per head, averaged, for ``fit_rows`` fit-set rows out of
        ``labelled_rows`` labelled rows.

        ``"auto"``: :data:`AUTO_FINAL_SEEDS` from the size at which the refit worker
        starts (:data:`~customer_lifecycle.training.refit.AUTO_MIN_ROWS` labelled rows)
        up to the last size with 5 folds; 1 otherwise.
        """
        if isinstance(self.final_seeds, int):
            return self.final_seeds
        if labelled_rows >= AUTO_MIN_ROWS and fit_rows <= AUTO_FOLDS[0][0]:
            return AUTO_FINAL_SEEDS
        return 1

    def churn_history_for(self, labelled_rows: int) -> int:
        """Earlier snapshots per labelled customer in the churn head's training rows.

        ``"auto"``: :data:`AUTO_CHURN_HISTORY` up to the last size with 5 folds
        (:data:`AUTO_FOLDS`), where labels are few; none above it.
        """
        if isinstance(self.churn_history, int):
            return self.churn_history
        return AUTO_CHURN_HISTORY if labelled_rows <= AUTO_FOLDS[0][0] else 0

    def churn_history_step(self) -> int:
        """Days between a customer's earlier snapshots (``"auto"``: one churn horizon,
        so that their windows do not overlap)."""
        if isinstance(self.churn_history_step_days, int):
            return self.churn_history_step_days
        return self.horizon_days

    def folds_for(self, fit_rows: int) -> int:
        """Number of customer folds for a fit set of ``fit_rows`` rows.

        ``"auto"`` and ``0`` choose from :data:`AUTO_FOLDS` by size; ``1`` is a single
        held-out fold (a fifth of the fit customers).
        """
        if isinstance(self.cv_folds, int) and self.cv_folds > 0:
            return self.cv_folds
        for most_rows, folds in AUTO_FOLDS:
            if fit_rows <= most_rows:
                return folds
        return 1


def _check_count(name: str, value: object, low: int, high: int, allowed: str = "") -> None:
    """Refuse, in one line, a setting that is neither ``auto`` nor a whole number in range.

    ``allowed`` words the range in the message (default: from ``low`` to ``high``).
    """
    whole = isinstance(value, int) and not isinstance(value, bool)
    if not (value == "auto" or (whole and low <= value <= high)):  # type: ignore[operator]
        allowed = allowed or f"'auto' or a whole number from {low} to {high}"
        raise ValueError(f"{name} must be {allowed}, not {value!r}")


# Automatic fold count by fit-set rows: up to this many rows, this many folds; above the
# last, a single held-out fold. Every fold costs about one fit of the whole fit set, and
# "both heads on 100,000 customers in at most 2 minutes" leaves room for few: measured
# in docs/models.md#training-data-and-the-split.
AUTO_FOLDS: tuple[tuple[int, int], ...] = ((25_000, 5), (50_000, 3))
# Final boosters per head with final_seeds "auto" while there are 5 folds and enough
# rows for the refit worker: their mean has less of the variance bagging and feature
# sampling add (docs/models.md). There, the final fits on every row cost about what the
# folds cost, and the worker runs them beside the folds; otherwise, one.
AUTO_FINAL_SEEDS = 3
# Earlier snapshots per labelled customer for the churn head with churn_history "auto"
# (docs/models.md#training-data-and-the-split): churn labels come from the log itself, so
# every horizon of a customer's past is one more example of the same question. Twelve a
# third of a horizon apart, or six half a horizon apart, did no better on the scenario
# family's worst case (measured in the same section of docs/models.md).
AUTO_CHURN_HISTORY = 3


@dataclass
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: str | None
    promoted: bool
    metrics: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Examples:
    """Labelled snapshots with their point-in-time features and both targets."""

    keys: pd.DataFrame  # customer_id, as_of
    X: pd.DataFrame
    stage: np.ndarray  # int index into taxonomy.stages
    churn: np.ndarray  # 1 = churned

    def take(self, mask: np.ndarray) -> Examples:
        return Examples(
            self.keys[mask].reset_index(drop=True), self.X[mask], self.stage[mask], self.churn[mask]
        )


def train(
    events_path: str | Path,
    *,
    as_of: object = None,
    labels_path: str | Path | None = None,
    config: TrainConfig | None = None,
    definition_path: str | Path | None = None,
    taxonomy_path: str | Path | None = None,
    rulebook_path: str | Path | None = None,
    mapping: str | None = None,
    register: str | None = None,
    promote_if_better: bool = False,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    oracle_predictions: pd.DataFrame | None = None,
    say: Say = print,
) -> TrainResult:
    """Train both heads on an event log and log the run to MLflow.

    Parameters
    ----------
    events_path
        The event log (any format of :func:`features.events.load_events`).
    as_of
        Snapshot time for labels without an ``as_of`` column, and for rulebook labels.
    labels_path
        CRM label file ``customer_id, stage[, as_of]``; without it the rulebook labels
        every customer seen before ``as_of`` and the run records that.
    taxonomy_path
        A shipped taxonomy's name (``hubspot``) or a taxonomy YAML file; ``None`` is the
        default taxonomy. The model stores its stages and synonyms.
    rulebook_path
        A rulebook for the taxonomy's stages. Without it the shipped rulebook is used
        when it fits the taxonomy (:func:`~customer_lifecycle.training.labels.rulebook_for`);
        otherwise the rulebook baseline is skipped, and the run records that (param and
        tag ``rulebook_baseline``), or, without a label file, the run is refused.
    register
        Register the model under this name. ``promote_if_better`` then moves the
        ``champion`` alias to the new version if it beats the current champion on this
        run's validation examples (or if there is no champion yet).
    oracle_predictions
        The best predictions known for this log (on simulated data, the Bayes-optimal
        oracle's): ``customer_id``, ``as_of``, and ``p_<stage>`` for every stage and/or
        ``churn_probability``. Their scores on the validation examples are logged as
        ``oracle_*`` beside the model's, with the model's ratio / gap to them; see
        :func:`oracle_metrics`.
    """
    config = config or TrainConfig()
    taxonomy = load_taxonomy(taxonomy_path)
    definition = load_definition(definition_path)
    rulebook, rulebook_note = rulebook_for(rulebook_path, taxonomy=taxonomy, definition=definition)
    if promote_if_better and not register:
        raise ValueError("--promote-if-better needs --register NAME")
    if labels_path is None:
        _check_rulebook_labels(as_of, rulebook, rulebook_note, taxonomy)

    events, load_summary = load_events(
        events_path,
        mapping=load_mapping(mapping),
        unknown_events=config.unknown_events,  # type: ignore[arg-type]
    )
    say(str(load_summary))
    if labels_path is not None:
        labels = load_labels(labels_path, taxonomy=taxonomy, as_of=as_of)
        label_source = f"label file {labels_path}"
    else:
        assert rulebook is not None  # checked above
        labels = rulebook_labels(events, parse_as_of(as_of), rulebook, definition)
        label_source = "rulebook (no label file given)"
        say(f"no label file: stage labels come from the rulebook at {as_of}")
    if rulebook is None:
        say(f"rulebook baseline {rulebook_note}")
    check_horizon(events, labels["as_of"], config.horizon_days)

    examples, dropped = build_examples(events, labels, taxonomy, definition, config)
    if dropped:
        say(
            f"warning: {dropped:,} labelled snapshot(s) have no events before their as_of "
            "and are left out"
        )
    # the gate of `lifecycle check`: refuse, before fitting, data below the minimums
    require_trainable(
        TrainingCounts.of(
            examples.keys[CUSTOMER_ID].astype(str),
            np.asarray(taxonomy.stages, dtype=object)[examples.stage],
            examples.churn,
            stages=taxonomy.stages,
        )
    )
    latent: LatentStateFeatures | None = None
    if config.latent_states:
        examples, latent = add_latent_states(events, examples, labels, config, say=say)
    fit_ex, valid_ex, split_kind = split_examples(examples, config)
    n_folds = config.folds_for(len(fit_ex.stage))
    folds = models.customer_folds(fit_ex.keys[CUSTOMER_ID], n_folds, config.seed)
    fold_text = "one held-out fold" if n_folds == 1 else f"{n_folds} customer folds"
    say(
        f"examples: {len(fit_ex.stage):,} fit ({fold_text}), {len(valid_ex.stage):,} "
        f"validation ({split_kind} split); the registered model is refitted on all "
        f"{len(examples.stage):,}"
    )

    X_fit = fit_ex.X.to_numpy()
    history = churn_history(events, examples, latent, definition, config)
    churn = ChurnRows.of(fit_ex, X_fit, folds, examples, history)
    # the final fits' matrix: every labelled row, then the earlier snapshots (churn only)
    X_all = examples.X.to_numpy() if history is None else np.vstack([examples.X, history.X])
    if history is not None:
        say(
            f"churn history: {len(history.churn):,} earlier snapshot(s) of the labelled "
            f"customers ({config.churn_history_for(len(examples.stage))} per customer, "
            f"{config.churn_history_step()} days apart) join the churn head's rows"
        )
    in_worker = use_worker(config.refit_worker, len(examples.stage))
    seeds = config.final_seeds_for(len(fit_ex.stage), len(examples.stage))
    names = final_names("stage", seeds) + final_names("churn", seeds)
    with FinalFits(X_all, names, parallel=in_worker) as final:
        if final.parallel:
            say("final fits on every row: started in a worker process beside the folds")
        stage_folds = models.cross_fit_stage(
            X_fit,
            fit_ex.stage,
            folds,
            examples.stage,
            final,
            n_classes=len(taxonomy.stages),
            seed=config.seed,
            max_rounds=config.max_rounds,
            params=config.lgb_params,
            final_seeds=seeds,
            min_delta=models.RULEBOOK_MIN_DELTA if labels_path is None else 0.0,
        )
        churn_folds = models.cross_fit_churn(
            churn.X_fit,
            churn.y_fit,
            churn.folds,
            churn.y_all,
            final,
            calibration_rows=len(fit_ex.churn),
            seed=config.seed,
            feature_names=list(examples.X.columns),
            max_rounds=config.max_rounds,
            params=config.lgb_params,
            final_seeds=seeds,
        )
        stage_head = stage_folds.head(final.averaged("stage", seeds))
        churn_head = churn_folds.head(final.averaged("churn", seeds))
        if final.fallback:
            say(f"warning: {final.fallback}; the final fits ran here instead")
    training = {
        "folds": n_folds,
        "rounds_stage": stage_head.rounds,
        "rounds_churn": churn_head.rounds,
        "final_seeds": seeds,
        "fold_best_iterations_stage": stage_head.cross.best_iterations,
        "fold_best_iterations_churn": churn_head.cross.best_iterations,
        "fit_rows": int(len(fit_ex.stage)),
        "validation_rows": int(len(valid_ex.stage)),
        "final_fit_rows": int(len(examples.stage)),
        "churn_history_rows": 0 if history is None else int(len(history.churn)),
        "latest_as_of": max(examples.keys["as_of"]).isoformat(),
        "validation_model": VALIDATION_MODEL,
    }
    latest_as_of = max(examples.keys["as_of"])
    value_fit: value_model.ValueFit | None = None
    if config.value:
        started = time.perf_counter()
        value_fit = value_model.fit_value(
            events,
            latest_as_of,
            definition=definition,
            horizon_days=config.value_horizon_days,
            shares=config.value_tiers,
            seed=config.seed,
            max_rounds=config.max_rounds,
            lgb_params=config.lgb_params,
            say=say,
        )
        say(f"value: fitted and evaluated in {time.perf_counter() - started:.1f} s")
    bundle = ModelBundle(
        definition=definition,
        stages=taxonomy.stages,
        stage_booster=stage_head.booster,
        churn_booster=churn_head.booster,
        stage_temperature=stage_head.temperature,
        stage_weights=tuple(float(w) for w in stage_head.weights),
        churn_platt=churn_head.platt,
        horizon_days=config.horizon_days,
        risk_thresholds=config.risk_thresholds,
        latent=None if latent is None else latent.params_,
        stage_forecast=(
            None
            if latent is None
            else stage_forecast_matrix(fit_ex, latent.params_.n_states, len(taxonomy.stages))
        ),
        metadata={
            "label_source": label_source,
            "qualifying": config.qualifying,
            "taxonomy": taxonomy.to_dict(),
            "training": training,
            **({} if value_fit is None else {"value": value_fit.summary}),
        },
        value=None if value_fit is None else value_fit.model,
        value_purchases_booster=None if value_fit is None else value_fit.boosters.get("purchases"),
        value_spend_booster=None if value_fit is None else value_fit.boosters.get("spend"),
    )
    say(
        f"validation metrics are of the fold models ({fold_text}), fitted without the "
        f"validation customers; the registered model saw all {len(examples.stage):,} rows "
        f"({stage_head.rounds} stage rounds, {churn_head.rounds} churn rounds)"
    )
    # the model the validation metrics, plots and promotion judge: it never saw them
    held_out_model = models.FoldEnsemble(
        stage_head, churn_head, tuple(taxonomy.stages), bundle.feature_names
    )

    scores = evaluate_bundle(held_out_model, valid_ex, taxonomy)
    baseline_scores = baselines(fit_ex, valid_ex, taxonomy, rulebook, config)
    all_metrics = {**_prefixed("valid", scores.metrics), **baseline_scores.metrics}
    if value_fit is not None:
        all_metrics.update(value_fit.metrics)
    if oracle_predictions is not None:
        all_metrics.update(oracle_metrics(oracle_predictions, valid_ex, taxonomy, say=say))
        if "oracle_stage_macro_f1" in all_metrics:
            all_metrics["ratio_stage_macro_f1_to_oracle"] = (
                all_metrics["valid_stage_macro_f1"] / all_metrics["oracle_stage_macro_f1"]
            )
        if "oracle_churn_roc_auc" in all_metrics:
            all_metrics["gap_churn_roc_auc_to_oracle"] = (
                all_metrics["oracle_churn_roc_auc"] - all_metrics["valid_churn_roc_auc"]
            )

    summary = {
        "events": load_summary.to_dict(),
        "label_source": label_source,
        "snapshots": int(len(examples.stage)),
        "dropped_snapshots_without_events": int(dropped),
        "as_of": sorted({t.isoformat() for t in examples.keys["as_of"]}),
        "split": split_kind,
        **training,
        "stage_counts": {
            s: int((examples.stage == k).sum()) for k, s in enumerate(taxonomy.stages)
        },
        "churn_rate": float(examples.churn.mean()),
        "rulebook_baseline": rulebook_note,
        **({} if value_fit is None else {"value": value_fit.summary}),
    }

    tracking.configure(experiment)
    latest = max(examples.keys["as_of"]).date().isoformat()
    with mlflow.start_run(run_name=f"train-{latest}") as run:
        params = {
            **tracking.flatten("config", asdict(config)),
            "label_source": label_source,
            "events_path": str(events_path),
            "split": split_kind,
            **{k: training[k] for k in LOGGED_TRAINING_PARAMS},
            "taxonomy": ",".join(taxonomy.stages),
            "rulebook_baseline": rulebook_note,
            **({"value_heads": "none"} if value_fit is None else value_fit.params),
        }
        mlflow.log_params(params)
        mlflow.set_tag("rulebook_baseline", "skipped" if rulebook is None else "run")
        mlflow.log_dict(definition.to_dict(), "config/feature_definition.json")
        mlflow.log_dict(taxonomy.to_dict(), "config/taxonomy.json")
        if rulebook is not None:
            mlflow.log_dict(rulebook.to_dict(), "config/rulebook.json")
        mlflow.log_dict(summary, "data_summary.json")
        mlflow.log_metrics(mlflow_metrics(all_metrics))
        _log_plots(bundle, valid_ex, taxonomy, scores, baseline_scores)
        if value_fit is not None:
            for path, fig in value_fit.figures.items():
                mlflow.log_figure(fig, path)
        bundle.metadata["run_id"] = run.info.run_id
        info = _log_model(bundle, valid_ex, register)
        version = getattr(info, "registered_model_version", None)
        model_uri = f"models:/{register}/{version}" if register and version else info.model_uri

    promoted = False
    if register and version and promote_if_better:
        promoted = _promote_if_better(
            register, str(version), held_out_model, valid_ex, taxonomy, say, events=events
        )
    return TrainResult(
        run.info.run_id,
        model_uri,
        str(version) if version else None,
        promoted,
        all_metrics,
        summary,
    )


def _check_rulebook_labels(
    as_of: object, rulebook: Rulebook | None, note: str, taxonomy: Taxonomy
) -> None:
    """Refuse, before any work, a run that needs rulebook labels it cannot have."""
    if rulebook is None:
        reason = note.removeprefix("skipped: ").split(";")[0]
        raise ValueError(
            "a label file (--labels) or a rulebook for the stages "
            f"{', '.join(taxonomy.stages)} (--rulebook) is needed: {reason}"
        )
    if as_of is None:
        raise ValueError("without --labels, --as-of is needed for the rulebook's labels")


# MLflow metric names take letters, digits and _ - . space (and / :, which read as paths).
_METRIC_UNSAFE = re.compile(r"[^\w.\- ]")


def mlflow_metrics(values: dict[str, float]) -> dict[str, float]:
    """Finite metrics under names MLflow accepts (a stage's name is part of some).

    Characters MLflow refuses become ``_``; should two stages then give one name, the
    first keeps it (the returned metrics of :func:`train` keep the stages' own names).
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        if np.isfinite(value):
            out.setdefault(_METRIC_UNSAFE.sub("_", key), float(value))
    return out


# -- examples and split -----------------------------------------------------------------


def rulebook_labels(
    events: pd.DataFrame, as_of: pd.Timestamp, rulebook: Rulebook, definition: FeatureDefinition
) -> pd.DataFrame:
    """Rulebook stage for every customer with an event before ``as_of``."""
    feats = build_features(events, as_of=as_of, definition=definition)
    return pd.DataFrame(
        {
            CUSTOMER_ID: feats.index.astype(str),
            "stage": rulebook.apply(feats),
            "as_of": pd.Series(as_of, index=range(len(feats))).astype("datetime64[ns, UTC]"),
        }
    )


def build_examples(
    events: pd.DataFrame,
    labels: pd.DataFrame,
    taxonomy: Taxonomy,
    definition: FeatureDefinition,
    config: TrainConfig,
    *,
    latent: LatentFilter | None = None,
) -> tuple[Examples, int]:
    """Features at each label's as_of (events strictly before it) and both targets.

    With ``latent`` (a fitted model's filter), its latent-state columns follow the
    definition's. Snapshots whose customer has no event before ``as_of`` carry no
    information and are left out; their number is returned.
    """
    keys = labels[[CUSTOMER_ID, "as_of"]].reset_index(drop=True)
    X = model_features(events, definition=definition, latent=latent, snapshots=keys)
    known = X["count_all_all"].to_numpy() > 0
    if not known.any():
        example = labels[CUSTOMER_ID].iloc[0]
        raise ValueError(
            f"no labelled customer has events before its as_of (e.g. {example!r}): "
            "do the label file's customer ids match the event log's?"
        )
    churn = churn_targets(events, keys, config, definition)
    stage = np.array([taxonomy.stages.index(s) for s in labels["stage"]], dtype=np.int64)
    ex = Examples(keys, X, stage, churn)
    return ex.take(known), int((~known).sum())


def add_latent_states(
    events: pd.DataFrame,
    examples: Examples,
    labels: pd.DataFrame,
    config: TrainConfig,
    *,
    say: Say = print,
) -> tuple[Examples, LatentStateFeatures]:
    """Fit the latent-stage HMM and append its filtered state features to ``examples``.

    EM runs on every labelled customer's event sequence up to its latest snapshot;
    labels initialise the states (one active and one quiet per stage) and anchor them,
    each an observation of the customer's state on its day (``anchor_labels``). Only the
    labels of customers outside the validation part are used for that, so validation
    stays unseen; the split is recomputed with the same seed and gives the same parts.
    """
    _, valid_ex, _ = split_examples(examples, config)
    held_out = set(valid_ex.keys[CUSTOMER_ID])
    init = labels[~labels[CUSTOMER_ID].isin(held_out)]
    started = time.perf_counter()
    latent = LatentStateFeatures(horizon_days=config.horizon_days, seed=config.seed)
    latent.fit(events, snapshots=examples.keys, labels=init)
    columns = latent.transform(events, snapshots=examples.keys)
    say(
        f"latent states: {latent.params_.n_states} fitted by EM in "
        f"{time.perf_counter() - started:.0f} s ({latent.n_iter_} iterations)"
    )
    X = examples.X.copy()
    for name in columns.columns:
        X[name] = columns[name].to_numpy()
    return Examples(examples.keys, X, examples.stage, examples.churn), latent


def churn_targets(
    events: pd.DataFrame, keys: pd.DataFrame, config: TrainConfig, definition: FeatureDefinition
) -> np.ndarray:
    """:func:`~customer_lifecycle.training.labels.churn_labels` with the run's horizon
    and qualifying activity."""
    return churn_labels(
        events,
        keys,
        horizon_days=config.horizon_days,
        qualifying=config.qualifying,
        definition=definition,
    )


def churn_history(
    events: pd.DataFrame,
    examples: Examples,
    latent: LatentStateFeatures | None,
    definition: FeatureDefinition,
    config: TrainConfig,
) -> Examples | None:
    """Earlier snapshots of the labelled customers, with features and churn targets.

    :func:`~customer_lifecycle.training.labels.earlier_snapshots`, one churn horizon
    apart, as many per customer as :meth:`TrainConfig.churn_history_for` says. Churn
    labels need no CRM: each earlier snapshot asks the churn head's question at an
    earlier time, and its window closes by the customer's first labelled snapshot.
    Features see only events before each snapshot, as always. Snapshots before a
    customer's first event are left out. Their ``stage`` is -1 (no label). ``None``
    when there are none.
    """
    count = config.churn_history_for(len(examples.stage))
    if count == 0:
        return None
    keys = earlier_snapshots(examples.keys, count=count, step_days=config.churn_history_step())
    X = model_features(events, definition=definition, latent=None, snapshots=keys)
    if latent is not None:
        columns = latent.transform(events, snapshots=keys)
        for name in columns.columns:
            X[name] = columns[name].to_numpy()
    if list(X.columns) != list(examples.X.columns):
        raise RuntimeError("earlier snapshots' features differ from the labelled ones'")
    known = X["count_all_all"].to_numpy() > 0
    if not known.any():
        return None
    churn = churn_targets(events, keys, config, definition)
    stage = np.full(len(keys), -1, dtype=np.int64)
    return Examples(keys, X, stage, churn).take(known)


@dataclass(frozen=True)
class ChurnRows:
    """The churn head's rows: the labelled snapshots, then earlier ones of the same
    customers (:func:`churn_history`), which follow their customer's fold."""

    X_fit: np.ndarray
    y_fit: np.ndarray
    folds: np.ndarray
    y_all: np.ndarray  # every labelled row's target, then every earlier snapshot's

    @classmethod
    def of(
        cls,
        fit_ex: Examples,
        X_fit: np.ndarray,
        folds: np.ndarray,
        examples: Examples,
        history: Examples | None,
    ) -> ChurnRows:
        """``history``'s snapshots of fit customers join the fit rows (``X_fit``, the
        fit set's matrix, shared with the stage head rather than copied) in their fold;
        those of validation customers only ``y_all`` (the final fit)."""
        if history is None:
            return cls(X_fit, fit_ex.churn, folds, examples.churn)
        fold_of = dict(zip(fit_ex.keys[CUSTOMER_ID].astype(str), folds, strict=True))
        ids = history.keys[CUSTOMER_ID].astype(str)
        in_fit = ids.isin(fold_of).to_numpy()
        hist_fit = history.take(in_fit)
        return cls(
            np.vstack([X_fit, hist_fit.X.to_numpy()]),
            np.concatenate([fit_ex.churn, hist_fit.churn]),
            np.concatenate([folds, ids[in_fit].map(fold_of).to_numpy(np.int64)]),
            np.concatenate([examples.churn, history.churn]),
        )


def stage_forecast_matrix(
    ex: Examples, n_states: int, n_stages: int
) -> tuple[tuple[float, ...], ...]:
    """``P(stage | latent state)``: each state's labelled stage mix, from its posteriors.

    Row ``k`` weighs every example's stage by its filtered probability of state ``k``,
    with one pseudo-example spread over the stages as in the data, so a state no example
    visits gets the overall stage mix.
    """
    gamma = ex.X[[f"latent_state_{k}" for k in range(n_states)]].to_numpy(dtype=np.float64)
    gamma = np.nan_to_num(gamma, nan=0.0)
    onehot = np.eye(n_stages)[ex.stage]
    prior = models.class_frequencies(ex.stage, n_stages)
    counts = gamma.T @ onehot + prior[None, :]
    rows = counts / counts.sum(axis=1, keepdims=True)
    return tuple(tuple(float(v) for v in row) for row in rows)


def split_examples(ex: Examples, config: TrainConfig) -> tuple[Examples, Examples, str]:
    """The fit set and the validation part, disjoint by customer and respecting time.

    Validation holds a random ``validation_fraction`` of customers at the latest
    snapshot time. The fit set holds the other customers; when there are earlier
    snapshots, only those whose churn window closes by the validation time are used
    (``time+customer`` split), otherwise the same snapshot time (``customer``). The
    fit set is cross-fitted by customer folds (:func:`models.customer_folds`); the
    registered model is fitted on every example, validation included.
    """
    rng = np.random.default_rng(config.seed)
    customers = np.array(ex.keys[CUSTOMER_ID].unique(), dtype=object)
    rng.shuffle(customers)
    n_valid = max(1, round(len(customers) * config.validation_fraction))
    valid_ids = set(customers[:n_valid])
    if len(customers) - n_valid < 2:
        raise ValueError("too few labelled customers to split into a fit set and validation")

    ids = ex.keys[CUSTOMER_ID]
    when = ex.keys["as_of"]
    latest = when.max()
    in_valid = ids.isin(valid_ids).to_numpy()
    closed = (when + pd.Timedelta(days=config.horizon_days) <= latest).to_numpy()
    if closed.any():
        fit_time, kind = closed, "time+customer"
    else:
        fit_time, kind = np.ones(len(ids), dtype=bool), "customer"
    valid = ex.take(in_valid & (when == latest).to_numpy())
    fit = ex.take(~in_valid & fit_time)
    for name, part in (("fit", fit), ("validation", valid)):
        if len(np.unique(part.stage)) < 2:
            raise ValueError(f"the {name} split has fewer than two stages: label more customers")
    return fit, valid, kind


# -- evaluation -------------------------------------------------------------------------


@dataclass
class Scores:
    metrics: dict[str, float]
    stage_pred: np.ndarray | None = None
    stage_proba: np.ndarray | None = None
    churn: dict[str, np.ndarray] = field(default_factory=dict)


class Predictor(Protocol):
    """What evaluation reads of a model: a ``ModelBundle`` or a ``models.FoldEnsemble``."""

    @property
    def feature_names(self) -> list[str]: ...

    def predict_matrix(self, X: np.ndarray) -> dict[str, np.ndarray]: ...


def evaluate_bundle(bundle: Predictor, ex: Examples, taxonomy: Taxonomy) -> Scores:
    """The model's metrics on examples: stage per class, churn overall and for the active."""
    out = bundle.predict_matrix(ex.X[bundle.feature_names].to_numpy())
    classes = list(taxonomy.stages)
    y_names = np.asarray(classes, dtype=object)[ex.stage]
    m = _prefixed(
        "stage",
        metrics.stage_metrics(y_names, out["stage_proba"], classes, y_pred=out["stage"]),
    )
    m["stage_ece"] = metrics.multiclass_ece(y_names, out["stage_proba"], classes)
    m.update(_prefixed("churn", metrics.churn_metrics(ex.churn, out["churn_probability"])))
    active = ex.X["recency_all_days"].to_numpy() <= 30
    if active.any():
        m.update(
            _prefixed(
                "churn_active30",
                metrics.churn_metrics(ex.churn[active], out["churn_probability"][active]),
            )
        )
    return Scores(m, out["stage"], out["stage_proba"], {"model": out["churn_probability"]})


def baselines(
    train_ex: Examples,
    valid_ex: Examples,
    taxonomy: Taxonomy,
    rulebook: Rulebook | None,
    config: TrainConfig,
) -> Scores:
    """Majority and rulebook for stage; recency, RFM logistic and BG/NBD for churn.

    ``rulebook`` is ``None`` when no rulebook fits the taxonomy: no rulebook scores.
    """
    classes = list(taxonomy.stages)
    y_names = np.asarray(classes, dtype=object)[valid_ex.stage]
    k = len(classes)
    out: dict[str, float] = {}

    freq = models.class_frequencies(train_ex.stage, k)
    majority = np.tile(freq, (len(valid_ex.stage), 1))
    out.update(
        _prefixed("baseline_majority_stage", metrics.stage_metrics(y_names, majority, classes))
    )
    if rulebook is not None:
        rule_pred = rulebook.apply(valid_ex.X)
        rule_proba = np.stack([(rule_pred == s).astype(float) for s in classes], axis=1)
        out.update(
            _prefixed(
                "baseline_rulebook_stage",
                metrics.stage_metrics(y_names, rule_proba, classes, y_pred=rule_pred),
            )
        )

    churn_scores: dict[str, np.ndarray] = {}
    rec_tr = models.rfm_matrix(train_ex.X)[:, :1]
    rec_va = models.rfm_matrix(valid_ex.X)[:, :1]
    churn_scores["recency"] = _logistic_proba(rec_tr, train_ex.churn, rec_va, config.seed)
    churn_scores["rfm_logistic"] = _logistic_proba(
        models.rfm_matrix(train_ex.X), train_ex.churn, models.rfm_matrix(valid_ex.X), config.seed
    )
    churn_scores["bgnbd"] = bgnbd_churn(train_ex, valid_ex, config)
    for name, p in churn_scores.items():
        out.update(_prefixed(f"baseline_{name}_churn", metrics.churn_metrics(valid_ex.churn, p)))
    return Scores(out, churn=churn_scores)


def bgnbd_churn(train_ex: Examples, valid_ex: Examples, config: TrainConfig) -> np.ndarray:
    """BG/NBD's probability of no purchase in the horizon, fitted on the training buyers.

    Customers who never bought get the training churn rate of non-buyers.
    """

    def rfm(ex: Examples) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        x = ex.X["btyd_frequency"].to_numpy()
        t_x = ex.X["btyd_recency_days"].to_numpy()
        T = ex.X["btyd_age_days"].to_numpy()
        return x, t_x, T, ~np.isnan(T)

    x, t_x, T, buyer = rfm(train_ex)
    p = np.full(len(valid_ex.churn), np.nan)
    non_buyer_rate = (
        float(train_ex.churn[~buyer].mean()) if (~buyer).any() else float(train_ex.churn.mean())
    )
    vx, vt, vT, vbuyer = rfm(valid_ex)
    p[~vbuyer] = non_buyer_rate
    if buyer.sum() >= 20 and vbuyer.any():
        model = btyd.fit_bgnbd(x[buyer], t_x[buyer], T[buyer])
        p[vbuyer] = model.p_no_purchase(config.horizon_days, vx[vbuyer], vt[vbuyer], vT[vbuyer])
    else:
        p[vbuyer] = float(train_ex.churn.mean())
    return p


def oracle_metrics(
    predictions: pd.DataFrame,
    valid_ex: Examples,
    taxonomy: Taxonomy,
    *,
    say: Say = print,
) -> dict[str, float]:
    """Scores of reference predictions on the validation examples, prefixed ``oracle_``.

    ``predictions`` holds ``customer_id``, ``as_of`` and ``p_<stage>`` for every stage
    of the taxonomy (scored as ``oracle_stage_*``) and/or ``churn_probability`` (scored
    as ``oracle_churn_*``). Only validation examples with a prediction for every used
    column are scored; their share is ``oracle_coverage``.

    Raises
    ------
    ValueError
        When a key column is missing, a key repeats, or there is neither a complete set
        of stage columns nor ``churn_probability``.
    """
    missing = [c for c in (CUSTOMER_ID, "as_of") if c not in predictions.columns]
    if missing:
        raise ValueError(f"oracle predictions have no {missing[0]!r} column")
    classes = list(taxonomy.stages)
    stage_cols = [f"p_{s}" for s in classes]
    has_stage = all(c in predictions.columns for c in stage_cols)
    has_churn = "churn_probability" in predictions.columns
    if not (has_stage or has_churn):
        raise ValueError(
            f"oracle predictions need p_<stage> for every stage ({', '.join(stage_cols)}) "
            "or churn_probability"
        )
    if not has_stage and any(str(c).startswith("p_") for c in predictions.columns):
        say("oracle predictions do not cover the taxonomy's stages: no oracle stage scores")
    used = (stage_cols if has_stage else []) + (["churn_probability"] if has_churn else [])
    # Both sides' keys as str and datetime64[ns, UTC], so equal keys merge.
    pred = predictions[[CUSTOMER_ID, "as_of", *used]].copy()
    pred[CUSTOMER_ID] = pred[CUSTOMER_ID].astype(str)
    pred["as_of"] = parse_timestamps(pred["as_of"])
    if pred.duplicated([CUSTOMER_ID, "as_of"]).any():
        raise ValueError("oracle predictions repeat a (customer_id, as_of) pair")
    keys = valid_ex.keys[[CUSTOMER_ID, "as_of"]].copy()
    keys[CUSTOMER_ID] = keys[CUSTOMER_ID].astype(str)
    keys["as_of"] = parse_timestamps(keys["as_of"])
    joined = keys.merge(pred, on=[CUSTOMER_ID, "as_of"], how="left")
    ok = joined[used].notna().all(axis=1).to_numpy()
    out = {"oracle_coverage": float(ok.mean())}
    if not ok.any():
        say("oracle predictions cover no validation example: no oracle scores")
        return out
    if has_stage:
        y_names = np.asarray(classes, dtype=object)[valid_ex.stage[ok]]
        proba = joined[stage_cols].to_numpy(dtype=float)[ok]
        out.update(_prefixed("oracle_stage", metrics.stage_metrics(y_names, proba, classes)))
    if has_churn:
        p = joined["churn_probability"].to_numpy(dtype=float)[ok]
        out.update(_prefixed("oracle_churn", metrics.churn_metrics(valid_ex.churn[ok], p)))
    return out


# -- MLflow -----------------------------------------------------------------------------


def _log_plots(
    bundle: ModelBundle, ex: Examples, taxonomy: Taxonomy, scores: Scores, base: Scores
) -> None:
    classes = list(taxonomy.stages)
    y_names = np.asarray(classes, dtype=object)[ex.stage]
    assert scores.stage_pred is not None and scores.stage_proba is not None
    figures = {
        "plots/stage_confusion_matrix.png": plots.confusion_matrix_figure(
            y_names, scores.stage_pred, classes
        ),
        "plots/stage_calibration.png": plots.multiclass_calibration_figure(
            y_names, scores.stage_proba, classes
        ),
        "plots/churn_calibration.png": plots.calibration_figure(
            ex.churn, scores.churn["model"], title="churn head (validation)"
        ),
        "plots/churn_roc_pr.png": plots.roc_pr_figure(ex.churn, {**scores.churn, **base.churn}),
        "plots/stage_feature_importance.png": plots.feature_importance_figure(
            bundle.feature_names,
            bundle.stage_booster.feature_importance("gain"),
            title="stage head: gain",
        ),
        "plots/churn_feature_importance.png": plots.feature_importance_figure(
            bundle.feature_names,
            bundle.churn_booster.feature_importance("gain"),
            title="churn head: gain",
        ),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)


def _log_model(bundle: ModelBundle, valid_ex: Examples, register: str | None) -> Any:
    example = valid_ex.X[bundle.feature_names].head(5).reset_index()
    example = example[[CUSTOMER_ID, *bundle.feature_names]]
    example[CUSTOMER_ID] = example[CUSTOMER_ID].astype(str)
    signature = infer_signature(example, bundle.predict_features(example), params={AS_OF_PARAM: ""})
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = bundle.save(Path(tmp) / BUNDLE_ARTIFACT)
        # the model carries this package's wheel and names it in its requirements, so an
        # environment built from the model's files alone can load it
        env = model_environment(Path(tmp) / "env")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={BUNDLE_ARTIFACT: str(bundle_dir), **env.artifacts},
            signature=signature,
            input_example=example,
            registered_model_name=register,
            pip_requirements=env.pip_requirements,
        )


def _promote_if_better(
    name: str,
    version: str,
    model: Predictor,
    ex: Examples,
    taxonomy: Taxonomy,
    say: Say,
    *,
    events: pd.DataFrame,
) -> bool:
    """Promote when there is no champion, or the new model scores higher on ``ex``.

    The score is stage macro-F1 + churn ROC-AUC, both on this run's validation examples,
    so the champion is judged on exactly the same data as the new version. ``model`` is
    the run's held-out model (its fold models), which never saw ``ex``; a champion
    trained on labels at or after ``ex``'s snapshot may have, which favours it.
    """
    current = tracking.champion_version(name)
    new = evaluate_bundle(model, ex, taxonomy).metrics
    new_score = new["stage_macro_f1"] + new["churn_roc_auc"]
    if current is not None:
        try:
            champ = load_bundle(f"models:/{name}@{tracking.CHAMPION}")
        except ValueError as exc:  # a refused champion is replaced, not compared
            say(f"champion {current} cannot be loaded ({exc}); the new version replaces it")
            champ = None
        old_score = -np.inf
        if champ is not None and tuple(champ.stages) != tuple(taxonomy.stages):
            say(
                f"champion {current} has other stages ({', '.join(champ.stages)}); "
                "the new version replaces it"
            )
            champ = None
        if champ is not None:
            _warn_if_champion_saw(champ, current, ex, say)
            # the champion's own features: its definition and its own latent model
            champ_X = champ.build_features(events, snapshots=ex.keys)
            champ_ex = Examples(ex.keys, champ_X, ex.stage, ex.churn)
            old = evaluate_bundle(champ, champ_ex, taxonomy).metrics
            old_score = old["stage_macro_f1"] + old["churn_roc_auc"]
        if not new_score > old_score:
            say(
                f"not promoted: version {version} scores {new_score:.4f} "
                f"(stage macro-F1 + churn ROC-AUC), champion {current} scores {old_score:.4f}"
            )
            return False
        if champ is not None:
            say(f"version {version} ({new_score:.4f}) beats champion {current} ({old_score:.4f})")
    tracking.promote(name, version)
    say(f"promoted {name} version {version} to @{tracking.CHAMPION}")
    return True


def _warn_if_champion_saw(champ: ModelBundle, current: str, ex: Examples, say: Say) -> None:
    """Say so when the champion's training labels reach the validation snapshot time."""
    training = champ.metadata.get("training")
    latest = training.get("latest_as_of") if isinstance(training, dict) else None
    if latest is None:
        return
    if pd.Timestamp(latest) >= max(ex.keys["as_of"]):
        say(
            f"champion {current} was fitted on labels up to {latest}, which may include "
            "this run's validation customers: the comparison favours it"
        )


def _logistic_proba(X: np.ndarray, y: np.ndarray, X_valid: np.ndarray, seed: int) -> np.ndarray:
    if len(np.unique(y)) < 2:
        return np.full(len(X_valid), float(y.mean()))
    return models.fit_logistic(X, y, seed=seed).predict_proba(X_valid)[:, 1]


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) for k, v in values.items()}


def model_taxonomy(bundle: ModelBundle, taxonomy_path: str | Path | None = None) -> Taxonomy:
    """The taxonomy a model was trained with: its stages and the synonyms it stores.

    With ``taxonomy_path`` (a shipped name or a file), that taxonomy's synonyms are used
    instead; its stages must be the model's, in the same order. A model trained before
    models stored synonyms gets its stage names alone.
    """
    if taxonomy_path is not None:
        taxonomy = load_taxonomy(taxonomy_path)
        if tuple(taxonomy.stages) != tuple(bundle.stages):
            raise ValueError(
                f"the model's stages {list(bundle.stages)} differ from the taxonomy's "
                f"{list(taxonomy.stages)}"
            )
        return taxonomy
    stored = bundle.metadata.get("taxonomy")
    if not isinstance(stored, dict):
        return Taxonomy(stages=tuple(bundle.stages))
    taxonomy = Taxonomy.from_dict(stored, source="the model's taxonomy")
    if tuple(taxonomy.stages) != tuple(bundle.stages):
        raise ValueError("the model's taxonomy does not list the model's stages")
    return taxonomy


def evaluate_model(
    events_path: str | Path,
    *,
    model: str,
    labels_path: str | Path | None = None,
    as_of: object = None,
    horizon_days: int | None = None,
    mapping: str | None = None,
    taxonomy_path: str | Path | None = None,
    rulebook_path: str | Path | None = None,
    say: Say = print,
) -> dict[str, float]:
    """A model's metrics on labelled snapshots of a log (every snapshot, no split).

    Stage labels are read through the model's own taxonomy (:func:`model_taxonomy`), so
    the synonyms it was trained with work; ``taxonomy_path`` replaces them. Without a
    label file, the rulebook labels every customer seen before ``as_of`` when it fits
    the model's stages (:func:`~customer_lifecycle.training.labels.rulebook_for`).
    """
    bundle = load_bundle(model)
    taxonomy = model_taxonomy(bundle, taxonomy_path)
    config = TrainConfig(
        horizon_days=horizon_days or bundle.horizon_days,
        qualifying=str(bundle.metadata.get("qualifying", "any")),
    )
    rulebook = None
    if labels_path is None:
        rulebook, note = rulebook_for(
            rulebook_path, taxonomy=taxonomy, definition=bundle.definition
        )
        _check_rulebook_labels(as_of, rulebook, note, taxonomy)
    events, summary = load_events(events_path, mapping=load_mapping(mapping))
    say(str(summary))
    if labels_path is not None:
        labels = load_labels(labels_path, taxonomy=taxonomy, as_of=as_of)
    else:
        assert rulebook is not None  # checked above
        labels = rulebook_labels(events, parse_as_of(as_of), rulebook, bundle.definition)
    check_horizon(events, labels["as_of"], config.horizon_days)
    ex, dropped = build_examples(
        events, labels, taxonomy, bundle.definition, config, latent=bundle.latent_filter
    )
    if dropped:
        say(f"warning: {dropped:,} labelled snapshot(s) have no events before their as_of")
    return evaluate_bundle(bundle, ex, taxonomy).metrics
