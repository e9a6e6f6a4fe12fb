"""Scoring inside the server: a loaded model with everything precomputed, and the hot path.

:class:`ServedModel` is built once per model load (feature names and descriptions,
stage weights, the playbook resolved to a lookup table, event-type codes) and never
changes afterwards, so a request that captured one keeps a consistent model even while
a newer one is swapped in.

Per request, events become NumPy arrays in one pass over the parsed body and the
feature engine's array entry point (:func:`features.engine.feature_matrix`, no pandas)
runs once for all customers, and so does the latent filter
(:meth:`features.latent.LatentFilter.matrix`) when the model has a latent model. Both
heads are then evaluated by :class:`scoring.trees.TreeEnsemble`: the bundle's own flattened heads
(:attr:`scoring.bundle.ModelBundle.stage_trees` and ``churn_trees``, which
:meth:`~scoring.bundle.ModelBundle.load` has checked to reproduce LightGBM's raw scores),
arrays walked by compiled kernels: every stage's
raw score, then the reasons of the predicted stage and of churn; the bundle turns raw
scores into calibrated probabilities (:meth:`scoring.bundle.ModelBundle.stage_proba_from_raw`
and ``churn_proba_from_margin``), the one place that does. Reasons are path
attributions by default (one walk per tree) or, with ``reasons_method="treeshap"``,
LightGBM's exact TreeSHAP, run only for the predicted stage on a booster holding that
stage's trees alone (:func:`serving.reasons.split_multiclass`). When the model has a
customer value model, :meth:`scoring.bundle.ModelBundle.value_outputs` runs once on the
whole matrix too (vectorised, like the batch path). Everything runs on one
thread: a request is small, and threads of concurrent requests would only compete.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from math import isfinite
from typing import Literal

import lightgbm as lgb
import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES
from customer_lifecycle.features.engine import feature_matrix
from customer_lifecycle.scoring.bundle import ModelBundle, tree_probe
from customer_lifecycle.scoring.trees import TreeEnsemble
from customer_lifecycle.serving.playbook import Playbook
from customer_lifecycle.serving.reasons import split_multiclass, top_contributions
from customer_lifecycle.serving.schemas import (
    CustomerEvents,
    CustomerFeatures,
    CustomerValue,
    NextBestAction,
    Reason,
    Reasons,
    Score,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EVENT_TYPES = tuple(sorted(CANONICAL_EVENT_TYPES))
_EVENT_CODE = {name: code for code, name in enumerate(_EVENT_TYPES)}

#: How reasons are attributed: path attributions (fast) or exact TreeSHAP.
ReasonsMethod = Literal["path", "treeshap"]


class MissingFeatures(ValueError):
    """A feature vector lacks features the model needs: ``missing`` lists (customer, name)."""

    def __init__(self, missing: list[tuple[int, str]]) -> None:
        super().__init__(f"{len(missing)} feature(s) missing")
        self.missing = missing


@dataclass(frozen=True)
class ServedModel:
    """A model bundle ready to serve, with its identity and every per-model constant.

    Build with :meth:`build`; immutable afterwards.
    """

    bundle: ModelBundle
    name: str
    version: str
    uri: str
    loaded_at: datetime
    reasons: int
    feature_names: tuple[str, ...]
    descriptions: tuple[str, ...]
    actions: dict[tuple[str, str], NextBestAction]
    _feature_set: frozenset[str] = field(repr=False)
    _stage_names: np.ndarray = field(repr=False)
    _stage_weights: np.ndarray = field(repr=False)
    _stage_trees: TreeEnsemble = field(repr=False)
    _churn_trees: TreeEnsemble = field(repr=False)
    reasons_method: ReasonsMethod = "path"
    _class_boosters: tuple[lgb.Booster, ...] = field(default=(), repr=False)

    @classmethod
    def build(
        cls,
        bundle: ModelBundle,
        *,
        name: str,
        version: str,
        uri: str,
        playbook: Playbook,
        reasons: int = 3,
        reasons_method: ReasonsMethod = "path",
    ) -> ServedModel:
        """Precompute everything a request needs.

        The heads are the bundle's flattened trees, as :meth:`ModelBundle.load` checked
        them (not flattened and probed again). Raises ``ValueError`` on a bad playbook,
        or when a head cannot be evaluated exactly by :class:`scoring.trees.TreeEnsemble`
        (a bundle built in memory, not loaded, is flattened here).
        """
        described = dict(bundle.definition.describe())
        if bundle.latent_filter is not None:
            described.update(bundle.latent_filter.describe())
        names = tuple(bundle.feature_names)
        table = playbook.resolve(bundle.stages)
        actions = {
            key: NextBestAction(action=a.action, description=a.description)
            for key, a in table.items()
        }
        return cls(
            bundle=bundle,
            name=name,
            version=version,
            uri=uri,
            loaded_at=datetime.now(UTC),
            reasons=reasons,
            feature_names=names,
            descriptions=tuple(described.get(n, n) for n in names),
            actions=actions,
            _feature_set=frozenset(names),
            _stage_names=np.asarray(bundle.stages, dtype=object),
            _stage_weights=np.asarray(bundle.stage_weights, dtype=np.float64),
            _stage_trees=_head(bundle, "stage"),
            _churn_trees=_head(bundle, "churn"),
            reasons_method=reasons_method,
            _class_boosters=_class_boosters(bundle) if reasons_method == "treeshap" else (),
        )

    @property
    def run_id(self) -> str | None:
        run = self.bundle.metadata.get("run_id")
        return None if run is None else str(run)

    # -- requests ------------------------------------------------------------------------
    def score_events(self, customers: Sequence[CustomerEvents], as_of: datetime) -> list[Score]:
        """Build features at ``as_of`` from each customer's events, then score them."""
        X = self.features_from_events(customers, as_of)
        return self.score_matrix([c.customer_id for c in customers], X, as_of)

    def score_features(self, customers: Sequence[CustomerFeatures]) -> list[Score]:
        """Score precomputed feature vectors; raises :class:`MissingFeatures`.

        The features carry no time, so the value's next purchase date is null.
        """
        names = self.feature_names
        X = np.empty((len(customers), len(names)), dtype=np.float64)
        missing: list[tuple[int, str]] = []
        for i, customer in enumerate(customers):
            values = customer.features
            if not self._feature_set <= values.keys():
                missing.extend((i, n) for n in names if n not in values)
                continue
            X[i] = np.array([values[n] for n in names], dtype=np.float64)  # None -> NaN
        if missing:
            raise MissingFeatures(missing)
        return self.score_matrix([c.customer_id for c in customers], X)

    def features_from_events(
        self, customers: Sequence[CustomerEvents], as_of: datetime
    ) -> np.ndarray:
        """Feature matrix, one row per customer entry in request order.

        Entries are keyed by position, not by id, so an id sent twice is scored twice,
        each time from its own events.
        """
        n = len(customers)
        counts = np.fromiter((len(c.events) for c in customers), dtype=np.int64, count=n)
        events = [e for c in customers for e in c.events]
        total = len(events)
        nanos = np.fromiter(
            ((e.timestamp - _EPOCH) // _MICROSECOND for e in events), dtype=np.int64, count=total
        )
        nanos *= 1000
        codes = np.fromiter((_EVENT_CODE[e.event_type] for e in events), np.int32, count=total)
        amount = np.fromiter(
            (np.nan if e.amount is None else e.amount for e in events), np.float64, count=total
        )
        # Refunds arrive as +x or -x depending on the source; the files keep the magnitude.
        refund = codes == _EVENT_CODE["refund"]
        if refund.any():
            amount[refund] = np.abs(amount[refund])
        # The engine's kernels are parallel; for a request's few customers, waking
        # threads costs more than it saves (the setting is per calling thread).
        numba.set_num_threads(1)
        # Rows are customer entries in request order, an entry without any event before
        # as_of included (the features of an empty history).
        entries = np.repeat(np.arange(n), counts)
        as_of_ns = (as_of - _EPOCH) // _MICROSECOND * 1000
        X = feature_matrix(
            entries,
            nanos,
            codes,
            amount,
            n_customers=n,
            type_names=_EVENT_TYPES,
            as_of_ns=as_of_ns,
            definition=self.bundle.definition,
        )
        latent = self.bundle.latent_filter
        if latent is None:
            return X
        states = latent.matrix(
            entries, nanos, codes, n_customers=n, type_names=_EVENT_TYPES, as_of_ns=as_of_ns
        )
        return np.concatenate([X, states], axis=1)

    def score_matrix(
        self, ids: Sequence[str], X: np.ndarray, as_of: datetime | None = None
    ) -> list[Score]:
        """Scores, reasons, actions and value for a feature matrix.

        Parameters
        ----------
        ids
            Customer ids, one per row of ``X``.
        X
            Feature matrix in :attr:`feature_names` order.
        as_of
            The time the features were built at: the value's next purchase date counts
            from it; ``None`` (features sent as such) leaves the date null.

        Returns
        -------
        list of Score
            One per row, in order; ``value`` is None when the model has no value model.
        """
        n, f = X.shape
        bundle = self.bundle
        proba = bundle.stage_proba_from_raw(self._stage_trees.raw_scores(X))
        pick = np.argmax(proba * self._stage_weights, axis=1)
        if self.reasons_method == "path":
            stage_c = self._stage_trees.path_contributions(X, pick)
            churn_c = self._churn_trees.path_contributions(X, 0)
        else:
            stage_c = np.empty((n, f + 1), dtype=np.float64)
            for k in np.unique(pick).tolist():
                rows = pick == k
                part = self._class_boosters[k].predict(X[rows], pred_contrib=True, num_threads=1)
                stage_c[rows] = np.asarray(part, dtype=np.float64).reshape(-1, f + 1)
            churn_c = np.asarray(
                bundle.churn_booster.predict(X, pred_contrib=True, num_threads=1),
                dtype=np.float64,
            ).reshape(n, f + 1)
        # The calibration is the bundle's. The churn contributions sum to the raw margin,
        # and the contributions of both heads are reported on the calibrated logit scale.
        churn = bundle.churn_proba_from_margin(churn_c.sum(axis=1))
        bands = bundle.risk_band(churn)
        stage_contrib = bundle.stage_logit_contributions(stage_c[:, :f])
        churn_contrib = bundle.churn_logit_contributions(churn_c[:, :f])
        top_stage = top_contributions(stage_contrib, self.reasons)
        top_churn = top_contributions(churn_contrib, self.reasons)

        stages = self._stage_names
        forecast = bundle.next_stage_proba(X)
        # A customer without history has NaN latent columns: no forecast (null).
        next_list: list[dict[str, float] | None] = (
            [None] * n
            if forecast is None
            else [
                None if row != row else dict(zip(bundle.stages, p, strict=True))
                for p, row in zip(forecast.tolist(), forecast.sum(axis=1).tolist(), strict=True)
            ]
        )
        values = self._values(X, as_of)
        proba_list = proba.tolist()
        churn_list = churn.tolist()
        scores: list[Score] = []
        for i in range(n):
            stage = str(stages[pick[i]])
            band = str(bands[i])
            scores.append(
                Score.model_construct(
                    customer_id=ids[i],
                    stage=stage,
                    stage_probabilities=dict(zip(bundle.stages, proba_list[i], strict=True)),
                    next_stage_probabilities=next_list[i],
                    churn_probability=churn_list[i],
                    churn_risk=band,
                    reasons=Reasons.model_construct(
                        stage=self._reasons(X[i], stage_contrib[i], top_stage[i]),
                        churn=self._reasons(X[i], churn_contrib[i], top_churn[i]),
                    ),
                    next_best_action=self.actions[stage, band],
                    model_name=self.name,
                    model_version=self.version,
                    value=values[i],
                )
            )
        return scores

    def _values(self, X: np.ndarray, as_of: datetime | None) -> list[CustomerValue | None]:
        """The value of every row, from one vectorised call of the bundle's value model.

        A row whose purchase-history features no history can have (sent so to
        ``/v1/scores/features``, or built from times centuries apart) gets no prediction
        (nulls, tier ``unknown``) rather than failing the request.
        """
        bundle = self.bundle
        if bundle.value is None:
            return [None] * len(X)
        horizon = bundle.value.horizon_days
        when = None if as_of is None else pd.Timestamp(as_of)
        try:
            out = bundle.value_outputs(X, when)
            accepted = None
        except ValueError:
            # Rare: find the refused rows one at a time (the model's rule stays its
            # own), then score the others in one call again.
            accepted = np.array([_accepts(bundle, X[i : i + 1], when) for i in range(len(X))])
            out = bundle.value_outputs(X[accepted], when)
        if out is None:
            return [None] * len(X)
        values: list[CustomerValue | None] = [
            CustomerValue.model_construct(
                # NaN (no amounts in the training log, no prediction) -> null; so is
                # the overflow of absurd feature vectors sent to /v1/scores/features
                expected_purchases=purchases if isfinite(purchases) else None,
                expected_spend=spend if isfinite(spend) else None,
                next_purchase_date=None if day is None else date.fromisoformat(day),
                value_tier=tier,
                horizon_days=horizon,
            )
            for purchases, spend, day, tier in zip(
                out["expected_purchases"].tolist(),
                out["expected_spend"].tolist(),
                out["next_purchase_date"].tolist(),
                out["value_tier"].tolist(),
                strict=True,
            )
        ]
        if accepted is None:
            return values
        scored = iter(values)
        unknown = CustomerValue.model_construct(
            expected_purchases=None,
            expected_spend=None,
            next_purchase_date=None,
            value_tier="unknown",
            horizon_days=horizon,
        )
        return [next(scored) if ok else unknown for ok in accepted.tolist()]

    def _reasons(self, x: np.ndarray, contrib: np.ndarray, top: np.ndarray) -> list[Reason]:
        out = []
        for j in top.tolist():
            value = float(x[j])
            out.append(
                Reason.model_construct(
                    feature=self.feature_names[j],
                    value=None if value != value else value,  # NaN -> null
                    contribution=float(contrib[j]),
                    description=self.descriptions[j],
                )
            )
        return out


def _accepts(bundle: ModelBundle, row: np.ndarray, as_of: pd.Timestamp | None) -> bool:
    """Whether the value model accepts a one-row feature matrix."""
    try:
        bundle.value_outputs(row, as_of)
    except ValueError:
        return False
    return True


def _head(bundle: ModelBundle, head: str) -> TreeEnsemble:
    """The bundle's flattened ``head`` (``stage`` or ``churn``), refused in one line if the
    tree kernels cannot evaluate it."""
    try:
        trees: TreeEnsemble = getattr(bundle, f"{head}_trees")
    except ValueError as exc:
        raise ValueError(f"the {head} head cannot be served: {exc}") from None
    return trees


def _class_boosters(bundle: ModelBundle) -> tuple[lgb.Booster, ...]:
    """Per-stage boosters for the reasons, checked to reproduce the stage head's scores."""
    parts = split_multiclass(bundle.stage_booster)
    probe = tree_probe(len(bundle.feature_names))
    raw = np.asarray(bundle.stage_booster.predict(probe, raw_score=True)).reshape(len(probe), -1)
    for k, part in enumerate(parts):
        if not np.allclose(part.predict(probe, raw_score=True), raw[:, k], rtol=0, atol=1e-9):
            raise ValueError(f"the stage head could not be split by class (class {k} differs)")
    return tuple(parts)
