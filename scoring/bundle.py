"""The model artifact: the feature definition and both heads, in safe formats only.

A bundle is a directory:

``bundle.json``
    Everything but the trees: format version, feature definition, stage names,
    feature columns, calibration (a temperature for the stage head, Platt
    coefficients for the churn head), decision weights, risk thresholds, horizon,
    training metadata and, optionally, the latent-stage model
    (:class:`features.latent.LatentParams`, whose filtered state probabilities are
    features of both heads) with the stage forecast matrix (``P(stage | latent
    state)``, which turns the state distribution ``horizon_days`` ahead into
    ``p_next_<stage>``) and, optionally, the customer value model
    (:class:`features.btyd.ValueModel`). Plain JSON. Format 3; format 1 (no latent
    model) and format 2 (no value model) bundles are still read.
``stage_model.txt``, ``churn_model.txt``
    LightGBM boosters in LightGBM's own text format.
``value_purchases.txt``, ``value_spend.txt``
    The value model's learned heads, when it uses them (same format; their raw score
    is the log of the expected purchases / spend over the value horizon).

Loading reads JSON and text: nothing stored in the artifact is ever executed
(no pickle, no cloudpickle). ``training`` writes bundles; ``serving`` and the MLflow
pyfunc read them; neither of those imports ``training``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from customer_lifecycle.features.btyd import ValueModel
from customer_lifecycle.features.contract import CUSTOMER_ID, parse_as_of
from customer_lifecycle.features.definition import FeatureDefinition, definition_from_dict
from customer_lifecycle.features.latent import LatentFilter, LatentParams, model_features
from customer_lifecycle.scoring.trees import TreeEnsemble
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

FORMAT_VERSION = 3
#: Formats :meth:`ModelBundle.load` reads (format 1 has no latent model, 2 no value model).
READABLE_FORMATS = (1, 2, 3)
#: Prefix of the forecast columns ``p_next_<stage>``.
NEXT_PREFIX = "p_next_"
BUNDLE_FILE = "bundle.json"
STAGE_FILE = "stage_model.txt"
CHURN_FILE = "churn_model.txt"
#: Files of the value model's learned heads, by head.
VALUE_FILES = {"purchases": "value_purchases.txt", "spend": "value_spend.txt"}
#: Columns of the value model, last in the scores when a bundle has one.
VALUE_COLUMNS = ("expected_purchases", "expected_spend", "next_purchase_date", "value_tier")
#: Objectives of the learned value heads: both have a log link (prediction = exp(raw)).
VALUE_OBJECTIVES = ("poisson", "tweedie")
_BTYD_COLUMNS = ("btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_mean_spend")
RISK_BANDS = ("low", "medium", "high")


@dataclass
class ModelBundle:
    """Feature definition + stage head + churn head, ready to score.

    Parameters
    ----------
    definition
        The feature definition the heads were trained on.
    stages
        Stage names in funnel order; column ``k`` of the stage head is ``stages[k]``.
    stage_booster, churn_booster
        LightGBM boosters (multiclass softmax, binary logistic).
    stage_temperature
        Softmax temperature fitted on held-out data (calibration).
    stage_weights
        Per-stage multipliers of the calibrated probabilities used to pick the
        predicted stage (tuned for macro-F1); the probabilities themselves are
        reported unweighted.
    churn_platt
        ``(a, b)``: calibrated churn probability is ``sigmoid(a * margin + b)``.
    horizon_days
        The churn horizon the churn head was trained for.
    risk_thresholds
        ``(low_below, high_from)``: risk band low when p < low_below, high when
        p >= high_from, medium in between.
    metadata
        Free-form training facts (run id, data summary); JSON only.
    latent
        The fitted latent-stage model, or ``None``; its filter's columns
        (:attr:`features.latent.LatentFilter.feature_names`, horizon ``horizon_days``)
        follow the definition's among the heads' features.
    stage_forecast
        ``(n_states, len(stages))``: row ``k`` is ``P(stage | latent state k)``, rows sum
        to 1; with it, the scores carry ``p_next_<stage>``, the probability of each stage
        ``horizon_days`` ahead. Requires ``latent``.
    value
        The customer value model (:class:`features.btyd.ValueModel`), or ``None``; with
        it the scores end with :data:`VALUE_COLUMNS`.
    value_purchases_booster, value_spend_booster
        The value model's learned heads (log link, on the definition's feature columns),
        exactly those its ``heads`` name.
    """

    VALUE_COLUMNS = VALUE_COLUMNS

    definition: FeatureDefinition
    stages: tuple[str, ...]
    stage_booster: lgb.Booster
    churn_booster: lgb.Booster
    stage_temperature: float = 1.0
    stage_weights: tuple[float, ...] = ()
    churn_platt: tuple[float, float] = (1.0, 0.0)
    horizon_days: int = 90
    risk_thresholds: tuple[float, float] = (0.3, 0.6)
    metadata: dict[str, Any] = field(default_factory=dict)
    latent: LatentParams | None = None
    stage_forecast: tuple[tuple[float, ...], ...] | None = None
    value: ValueModel | None = None
    value_purchases_booster: lgb.Booster | None = None
    value_spend_booster: lgb.Booster | None = None

    def __post_init__(self) -> None:
        if not self.stage_weights:
            self.stage_weights = (1.0,) * len(self.stages)
        low, high = self.risk_thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError("risk thresholds must satisfy 0 <= low <= high <= 1")
        if self.latent is not None and not isinstance(self.latent, LatentParams):
            raise ValueError("latent must be LatentParams or None")
        if self.stage_forecast is not None:
            if self.latent is None:
                raise ValueError("a stage forecast needs the latent model it maps from")
            self.stage_forecast = _check_forecast(
                self.stage_forecast, self.latent.n_states, len(self.stages)
            )
        latent_names = [] if self.latent_filter is None else self.latent_filter.feature_names
        self._n_definition = len(self.definition.feature_names())
        self._features = [*self.definition.feature_names(), *latent_names]
        if len(set(self._features)) != len(self._features):
            raise ValueError("the latent columns clash with the definition's feature names")
        if self.value is not None and not isinstance(self.value, ValueModel):
            raise ValueError("value must be a ValueModel or None")
        heads = () if self.value is None else self.value.heads
        for head, booster in (
            ("purchases", self.value_purchases_booster),
            ("spend", self.value_spend_booster),
        ):
            if (head in heads) != (booster is not None):
                raise ValueError(
                    f"a learned value {head} booster is needed exactly when the value model "
                    f"uses the {head} head"
                )
        self._btyd_index: list[int] = []
        if self.value is not None:
            names = self.definition.feature_names()
            missing = [c for c in _BTYD_COLUMNS if c not in names]
            if missing:
                raise ValueError(f"the value model needs the feature {missing[0]!r}")
            self._btyd_index = [names.index(c) for c in _BTYD_COLUMNS]
        # p_next_<stage> must never read as the probability of a stage next_<stage>
        # (the score store tells stages from forecasts by that rule)
        clash = [s for s in self.stages if s.startswith("next_") and s[5:] in self.stages]
        if clash:
            raise ValueError(f"stage name {clash[0]!r} would clash with a forecast column")

    @functools.cached_property
    def stage_trees(self) -> TreeEnsemble:
        """The stage head flattened for the tree kernels (set by :meth:`load`, checked)."""
        return TreeEnsemble.from_booster(self.stage_booster)

    @functools.cached_property
    def churn_trees(self) -> TreeEnsemble:
        """The churn head flattened for the tree kernels (set by :meth:`load`, checked)."""
        return TreeEnsemble.from_booster(self.churn_booster)

    @functools.cached_property
    def value_purchases_trees(self) -> TreeEnsemble | None:
        """The learned purchases head flattened for the tree kernels, or None."""
        booster = self.value_purchases_booster
        return None if booster is None else TreeEnsemble.from_booster(booster)

    @functools.cached_property
    def value_spend_trees(self) -> TreeEnsemble | None:
        """The learned spend head flattened for the tree kernels, or None."""
        booster = self.value_spend_booster
        return None if booster is None else TreeEnsemble.from_booster(booster)

    @functools.cached_property
    def latent_filter(self) -> LatentFilter | None:
        """The forward filter of :attr:`latent` at horizon :attr:`horizon_days`, or None."""
        if self.latent is None:
            return None
        return LatentFilter(self.latent, horizon_days=self.horizon_days)

    @functools.cached_property
    def _state_to_stage(self) -> np.ndarray | None:
        """``A^horizon_days @ C``: filtered latent state to stage ``horizon_days`` ahead."""
        if self.stage_forecast is None or self.latent is None:
            return None
        a_h = np.linalg.matrix_power(self.latent.transitions, self.horizon_days)
        return np.ascontiguousarray(a_h @ np.asarray(self.stage_forecast, dtype=np.float64))

    @property
    def feature_names(self) -> list[str]:
        """Input columns of both heads, in order: the definition's, then the latent ones."""
        return list(self._features)

    @property
    def forecasts(self) -> bool:
        """Whether the scores carry ``p_next_<stage>`` (the bundle has a stage forecast)."""
        return self.stage_forecast is not None

    @property
    def output_columns(self) -> list[str]:
        """Columns of :meth:`predict_features` after ``customer_id``."""
        columns = ["stage", "churn_probability", "churn_risk", *[f"p_{s}" for s in self.stages]]
        if self.forecasts:
            columns += [f"{NEXT_PREFIX}{s}" for s in self.stages]
        if self.value is not None:
            columns += list(VALUE_COLUMNS)
        return columns

    def build_features(
        self, events: pd.DataFrame, *, as_of: object = None, snapshots: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """The heads' features from events: the definition's, then the latent columns.

        See :func:`features.latent.model_features`; columns are :attr:`feature_names`.
        """
        return model_features(
            events,
            definition=self.definition,
            latent=self.latent_filter,
            as_of=as_of,
            snapshots=snapshots,
        )

    # -- scoring -------------------------------------------------------------------------
    def stage_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated stage probabilities, shape ``(n, len(stages))``."""
        raw = self.stage_booster.predict(X, raw_score=True)
        return self.stage_proba_from_raw(np.asarray(raw).reshape(len(X), len(self.stages)))

    def churn_proba(self, X: np.ndarray) -> np.ndarray:
        """Calibrated probability of no qualifying activity within the horizon."""
        margin = np.asarray(self.churn_booster.predict(X, raw_score=True), dtype=np.float64)
        return self.churn_proba_from_margin(margin)

    # -- calibration: the one place that knows how raw scores become probabilities ---------
    def stage_proba_from_raw(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated stage probabilities from the stage head's raw scores ``(n, stages)``.

        Code that evaluates the trees itself (the HTTP server does) calibrates here.
        """
        return softmax(np.asarray(raw, dtype=np.float64) / self.stage_temperature)

    def churn_proba_from_margin(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated churn probabilities from the churn head's raw margins ``(n,)``."""
        a, b = self.churn_platt
        return sigmoid(a * np.asarray(margin, dtype=np.float64) + b)

    def stage_logit_contributions(self, contributions: np.ndarray) -> np.ndarray:
        """Feature contributions to raw stage scores, as contributions to calibrated logits.

        :meth:`stage_proba_from_raw` divides each logit by the temperature, so each
        additive part of it is divided too.
        """
        return np.asarray(contributions, dtype=np.float64) / self.stage_temperature

    def churn_logit_contributions(self, contributions: np.ndarray) -> np.ndarray:
        """Feature contributions to raw churn margins, as contributions to the calibrated
        logit of :meth:`churn_proba_from_margin`: scaled by the Platt slope (the intercept
        belongs to no feature)."""
        return np.asarray(contributions, dtype=np.float64) * self.churn_platt[0]

    def risk_band(self, p: np.ndarray) -> np.ndarray:
        """``low`` / ``medium`` / ``high`` for each churn probability."""
        low, high = self.risk_thresholds
        return np.asarray(RISK_BANDS, dtype=object)[(p >= low).astype(int) + (p >= high)]

    def next_stage_proba(self, X: np.ndarray) -> np.ndarray | None:
        """Probability of each stage ``horizon_days`` ahead, or None without a forecast.

        Parameters
        ----------
        X
            Feature matrix in :attr:`feature_names` order.

        Returns
        -------
        numpy.ndarray or None
            ``(n, len(stages))``: ``forecast_states(latent states, latent,
            horizon_days) @ stage_forecast``; NaN rows where the latent columns are NaN
            (no event before ``as_of``).
        """
        m = self._state_to_stage
        if m is None:
            return None
        X = self._checked_matrix(X)
        # the latent_state_<k> columns come first among the latent ones
        states = X[:, self._n_definition : self._n_definition + m.shape[0]]
        return states @ m

    def _checked_matrix(self, X: np.ndarray) -> np.ndarray:
        """``X`` as float64, refused in one line unless it is ``(n, len(feature_names))``."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self._features):
            raise ValueError(f"X must have shape (n, {len(self._features)})")
        return X

    def value_outputs(
        self, X: np.ndarray, as_of: pd.Timestamp | None = None
    ) -> dict[str, np.ndarray] | None:
        """The value model's outputs for a feature matrix, or None without a value model.

        Numpy and the tree kernels only (the HTTP API calls it once per request).

        Parameters
        ----------
        X
            Feature matrix in :attr:`feature_names` order.
        as_of
            Scoring time; the next purchase date is ``as_of`` plus the predicted days
            (UTC calendar date). ``None``: no dates.

        Returns
        -------
        dict of numpy.ndarray or None
            :data:`VALUE_COLUMNS`: ``expected_purchases`` and ``expected_spend``
            (float64, spend NaN when the training log had no amounts),
            ``next_purchase_date`` (object: ``"YYYY-MM-DD"`` or None) and
            ``value_tier`` (object: ``top_1`` ... ``rest``, ``unknown``).
        """
        value = self.value
        if value is None:
            return None
        X = self._checked_matrix(X)
        x, t_x, age, m = (X[:, i] for i in self._btyd_index)
        own = X[:, : self._n_definition]
        learned = {}
        for head, trees in (
            ("purchases", self.value_purchases_trees),
            ("spend", self.value_spend_trees),
        ):
            if trees is not None:
                learned[head] = np.exp(trees.raw_scores(own)[:, 0])
        out = value.predict(
            x,
            t_x,
            age,
            m,
            learned_purchases=learned.get("purchases"),
            learned_spend=learned.get("spend"),
        )
        dates = np.full(len(X), None, dtype=object)
        days = out["days_to_next_purchase"]
        if as_of is not None:
            start = _utc_nanoseconds(as_of)
            # a date past the last representable time (year 2262) is no date at all
            room = float(np.iinfo(np.int64).max) - float(start) - 1e9
            ahead = np.round(np.where(np.isnan(days), np.inf, days) * 86_400e9)
            dated = ahead <= room
            if dated.any():
                when = start + ahead[dated].astype(np.int64)
                dates[dated] = np.datetime_as_string(when.astype("datetime64[ns]"), unit="D")
        return {
            "expected_purchases": out["expected_purchases"],
            "expected_spend": out["expected_spend"],
            "next_purchase_date": dates,
            "value_tier": out["value_tier"].astype(object),
        }

    def predict_matrix(
        self, X: np.ndarray, *, as_of: pd.Timestamp | None = None
    ) -> dict[str, np.ndarray]:
        """Raw outputs for a feature matrix in :attr:`feature_names` order.

        Keys ``stage``, ``stage_proba``, ``churn_probability``, ``churn_risk``, when the
        bundle has a stage forecast ``next_stage_proba`` and, when it has a value model,
        :data:`VALUE_COLUMNS` (:meth:`value_outputs` at ``as_of``).
        """
        proba = self.stage_proba(X)
        pick = np.argmax(proba * np.asarray(self.stage_weights), axis=1)
        churn = self.churn_proba(X)
        out = {
            "stage": np.asarray(self.stages, dtype=object)[pick],
            "stage_proba": proba,
            "churn_probability": churn,
            "churn_risk": self.risk_band(churn),
        }
        forecast = self.next_stage_proba(X)
        if forecast is not None:
            out["next_stage_proba"] = forecast
        value = self.value_outputs(X, as_of)
        if value is not None:
            out.update(value)
        return out

    def predict_features(self, features: pd.DataFrame, *, as_of: object = None) -> pd.DataFrame:
        """Score precomputed features (one row per customer).

        ``features`` must hold every column of :attr:`feature_names`; extra columns are
        ignored. Customer ids come from a ``customer_id`` column or the index. Returns
        ``customer_id, stage, churn_probability, churn_risk, p_<stage>...``, when the
        bundle has a stage forecast ``p_next_<stage>...`` and, when it has a value
        model, :data:`VALUE_COLUMNS` (``next_purchase_date`` is None without
        ``as_of``, the time the features were built at).
        """
        missing = [c for c in self._features if c not in features.columns]
        if missing:
            raise ValueError(
                f"features are missing {len(missing)} column(s) the model needs, "
                f"first {missing[0]!r}"
            )
        X = features[self._features].to_numpy(dtype=np.float64)
        out = self.predict_matrix(X, as_of=None if as_of is None else parse_as_of(as_of))
        ids = (
            features[CUSTOMER_ID].astype(str).to_numpy()
            if CUSTOMER_ID in features.columns
            else np.asarray(features.index.get_level_values(0).astype(str))
        )
        frame = pd.DataFrame(
            {
                CUSTOMER_ID: ids,
                "stage": out["stage"],
                "churn_probability": out["churn_probability"],
                "churn_risk": out["churn_risk"],
            }
        )
        for k, stage in enumerate(self.stages):
            frame[f"p_{stage}"] = out["stage_proba"][:, k]
        if "next_stage_proba" in out:
            for k, stage in enumerate(self.stages):
                frame[f"{NEXT_PREFIX}{stage}"] = out["next_stage_proba"][:, k]
        if self.value is not None:
            for column in VALUE_COLUMNS:
                frame[column] = out[column]
        return frame

    def predict_events(self, events: pd.DataFrame, *, as_of: object) -> pd.DataFrame:
        """Build features at ``as_of`` (:meth:`build_features`), then score them."""
        return self.predict_features(self.build_features(events, as_of=as_of), as_of=as_of)

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the bundle to ``directory`` (created) and return it."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.stage_booster.save_model(str(path / STAGE_FILE))
        self.churn_booster.save_model(str(path / CHURN_FILE))
        for head, booster in (
            ("purchases", self.value_purchases_booster),
            ("spend", self.value_spend_booster),
        ):
            file = path / VALUE_FILES[head]
            if booster is not None:
                booster.save_model(str(file))
            elif file.exists():  # a stale head from an earlier save must not linger
                file.unlink()
        doc = {
            "format_version": FORMAT_VERSION,
            "definition": self.definition.to_dict(),
            "stages": list(self.stages),
            "feature_names": self._features,
            "stage_temperature": self.stage_temperature,
            "stage_weights": list(self.stage_weights),
            "churn_platt": list(self.churn_platt),
            "horizon_days": self.horizon_days,
            "risk_thresholds": list(self.risk_thresholds),
            "metadata": self.metadata,
            "latent": None if self.latent is None else self.latent.to_dict(),
            "stage_forecast": None
            if self.stage_forecast is None
            else [list(row) for row in self.stage_forecast],
            "value": None if self.value is None else self.value.to_dict(),
        }
        (path / BUNDLE_FILE).write_text(json.dumps(doc, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ModelBundle:
        """Read and validate a bundle written by :meth:`save`. Only JSON and text are read.

        Everything is checked before a booster is built: the JSON document against
        :class:`BundleDocument` (types, finite numbers, a positive temperature, one
        weight per stage, ordered thresholds), each tree file by the strict reader of
        :class:`~customer_lifecycle.scoring.trees.TreeEnsemble` (LightGBM's own parser
        aborts the process on some malformed files; it only sees text that passed),
        the latent model by :meth:`features.latent.LatentParams.from_dict` and the stage
        forecast (shape, finite, rows summing to 1), the feature columns (the
        definition's, then the latent filter's), the heads' shapes against the stages
        and feature columns, and finally a
        self-check: LightGBM and the flattened trees must give the same raw scores on
        a probe. Any failure is a ``ValueError`` of one line naming the bundle.
        """
        path = Path(directory)
        try:
            doc = _read_document(path)
            definition = definition_from_dict(doc.definition, source=str(path / BUNDLE_FILE))
            stages = tuple(doc.stages)
            latent = None if doc.latent is None else LatentParams.from_dict(doc.latent)
            forecast = None
            if doc.stage_forecast is not None:
                if latent is None:
                    raise ValueError("stage_forecast without a latent model")
                forecast = _check_forecast(doc.stage_forecast, latent.n_states, len(stages))
            features = definition.feature_names()
            if latent is not None:
                features += LatentFilter(latent, horizon_days=doc.horizon_days).feature_names
            if features != doc.feature_names:
                what = "definition and latent model" if latent is not None else "definition"
                raise ValueError(f"feature names do not match the stored {what}")
            value = None if doc.value is None else ValueModel.from_dict(doc.value)
            value_heads: dict[str, tuple[lgb.Booster, TreeEnsemble]] = {}
            for head in () if value is None else value.heads:
                file = path / VALUE_FILES[head]
                value_heads[head] = _read_head(file, f"value {head}", 1)
                _check_value_objective(file)
                n_own = len(definition.feature_names())
                if value_heads[head][1].num_features != n_own:
                    raise ValueError(
                        f"the value {head} head takes {value_heads[head][1].num_features} "
                        f"features, the definition has {n_own}"
                    )
            stage_booster, stage_trees = _read_head(path / STAGE_FILE, "stage", len(stages))
            churn_booster, churn_trees = _read_head(path / CHURN_FILE, "churn", 1)
            for head, trees in (("stage", stage_trees), ("churn", churn_trees)):
                if trees.num_features != len(features):
                    raise ValueError(
                        f"the {head} head takes {trees.num_features} features, "
                        f"the bundle has {len(features)}"
                    )
            bundle = cls(
                definition=definition,
                stages=stages,
                stage_booster=stage_booster,
                churn_booster=churn_booster,
                stage_temperature=doc.stage_temperature,
                stage_weights=tuple(doc.stage_weights),
                churn_platt=doc.churn_platt,
                horizon_days=doc.horizon_days,
                risk_thresholds=doc.risk_thresholds,
                metadata=doc.metadata,
                latent=latent,
                stage_forecast=forecast,
                value=value,
                value_purchases_booster=value_heads["purchases"][0]
                if "purchases" in value_heads
                else None,
                value_spend_booster=value_heads["spend"][0] if "spend" in value_heads else None,
            )
        except ValueError as exc:
            raise ValueError(f"model bundle {path} is refused: {exc}") from None
        bundle.stage_trees, bundle.churn_trees = stage_trees, churn_trees
        if "purchases" in value_heads:
            bundle.value_purchases_trees = value_heads["purchases"][1]
        if "spend" in value_heads:
            bundle.value_spend_trees = value_heads["spend"][1]
        return bundle


class BundleDocument(BaseModel):
    """The schema of ``bundle.json``: what :meth:`ModelBundle.load` accepts."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)

    format_version: int
    definition: dict[str, Any]
    stages: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        min_length=2, max_length=12
    )
    feature_names: list[str] = Field(min_length=1)
    stage_temperature: float = Field(gt=0)
    stage_weights: list[Annotated[float, Field(gt=0)]]
    churn_platt: tuple[float, float]
    horizon_days: int = Field(ge=1)
    risk_thresholds: tuple[float, float]
    metadata: dict[str, Any] = Field(default_factory=dict)
    latent: dict[str, Any] | None = None
    stage_forecast: list[list[float]] | None = Field(default=None, max_length=64)
    value: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BundleDocument:
        if self.format_version < 2 and (self.latent is not None or self.stage_forecast):
            raise ValueError("a format 1 bundle cannot hold a latent model")
        if self.format_version < 3 and self.value is not None:
            raise ValueError(f"a format {self.format_version} bundle cannot hold a value model")
        if len(set(self.stages)) != len(self.stages):
            raise ValueError("stage names must be unique")
        if len(self.stage_weights) != len(self.stages):
            raise ValueError(
                f"{len(self.stage_weights)} stage_weights for {len(self.stages)} stages"
            )
        low, high = self.risk_thresholds
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError("risk_thresholds must satisfy 0 <= low <= high <= 1")
        return self


def _read_document(path: Path) -> BundleDocument:
    try:
        raw = json.loads((path / BUNDLE_FILE).read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{BUNDLE_FILE} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{BUNDLE_FILE} is not JSON ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{BUNDLE_FILE} must hold a JSON object")
    version = raw.get("format_version")
    if isinstance(version, bool) or version not in READABLE_FORMATS:
        raise ValueError(
            f"format {version!r} is not supported "
            f"(this version reads formats {', '.join(map(str, READABLE_FORMATS))})"
        )
    try:
        return BundleDocument.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = ".".join(map(str, error["loc"]))
        where = f"{loc}: " if loc else ""
        message = error["msg"].removeprefix("Value error, ")
        raise ValueError(f"{BUNDLE_FILE}: {where}{message}") from None


def _read_head(file: Path, head: str, outputs: int) -> tuple[lgb.Booster, TreeEnsemble]:
    """A head's booster and flattened trees, refused unless both agree on a probe."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{file.name} is missing") from None
    except UnicodeDecodeError:
        raise ValueError(f"{file.name} is not a LightGBM text model (not UTF-8)") from None
    try:
        trees = TreeEnsemble.from_text(text)
    except ValueError as exc:
        raise ValueError(f"{file.name}: {exc}") from None
    if trees.num_outputs != outputs:
        raise ValueError(f"the {head} head has {trees.num_outputs} outputs, expected {outputs}")
    booster = lgb.Booster(model_str=text)  # only text the strict reader accepted
    probe = tree_probe(trees.num_features)
    expected = np.asarray(booster.predict(probe, raw_score=True), dtype=np.float64)
    if not np.allclose(trees.raw_scores(probe), expected.reshape(len(probe), -1), atol=1e-9):
        raise ValueError(f"the {head} head's trees do not reproduce LightGBM's scores")
    return booster, trees


def _check_value_objective(file: Path) -> None:
    """Refuse a value head whose objective is not a log link (exp(raw) would be wrong)."""
    head = file.read_text(encoding="utf-8").partition("\n\n")[0]
    objective = next((line[10:] for line in head.split("\n") if line.startswith("objective=")), "")
    if objective.split(" ")[0] not in VALUE_OBJECTIVES:
        raise ValueError(
            f"{file.name}: objective {objective[:40]!r} is not one of {', '.join(VALUE_OBJECTIVES)}"
        )


def _utc_nanoseconds(as_of: object) -> np.int64:
    """Nanoseconds since 1970 UTC of a scoring time (naive means UTC).

    ``Timestamp.value`` is UTC nanoseconds whatever the zone and unit, so a timestamp
    costs an attribute read (this runs once per API request).
    """
    ts = as_of if isinstance(as_of, pd.Timestamp) else parse_as_of(as_of)
    return np.int64(ts.value)


def _check_forecast(value: object, n_states: int, n_stages: int) -> tuple[tuple[float, ...], ...]:
    """The stage forecast as a tuple of rows, refused in one line unless it is a
    ``(n_states, n_stages)`` matrix of finite non-negative numbers, rows summing to 1."""
    try:
        c = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError("stage_forecast is not a matrix of numbers") from None
    if c.shape != (n_states, n_stages):
        raise ValueError(
            f"stage_forecast has shape {c.shape}, expected ({n_states}, {n_stages}) "
            "(latent states, stages)"
        )
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("stage_forecast must hold finite non-negative probabilities")
    if (np.abs(c.sum(axis=1) - 1.0) > 1e-6).any():
        raise ValueError("stage_forecast rows must sum to 1 (within 1e-6)")
    return tuple(tuple(float(x) for x in row) for row in c)


def tree_probe(features: int) -> np.ndarray:
    """Rows that reach many branches: spread values, zeros and missing values."""
    rng = np.random.default_rng(0)
    probe = rng.exponential(10.0, size=(64, features))
    probe[rng.random(probe.shape) < 0.2] = np.nan
    probe[0] = 0.0
    return probe


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in bundle.json")
