"""A small model with a latent-stage model and a stage forecast, for the scoring and
serving tests: the HMM fitted by EM on a simulated log, small LightGBM heads on
``model_features`` with the simulator's stage labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import CUSTOMER_ID
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.latent import LatentStateFeatures, model_features
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.simulator import write_dataset

AS_OF = "2024-12-31"


@dataclass(frozen=True)
class LatentData:
    """A simulated log on disk and in memory, with its stage labels at ``AS_OF``."""

    path: Path  # events.parquet
    events: pd.DataFrame
    labels: pd.DataFrame  # customer_id, stage, as_of


def simulated(directory: Path, customers: int = 300, seed: int = 5) -> LatentData:
    write_dataset(directory, customers=customers, seed=seed, as_of=[AS_OF])
    events, _ = load_events(directory / "events.parquet")
    labels = pd.read_csv(directory / "labels.csv", dtype={CUSTOMER_ID: str})
    return LatentData(directory / "events.parquet", events, labels)


def stage_forecast(states: np.ndarray, stage_codes: np.ndarray, n_stages: int) -> np.ndarray:
    """``P(stage | latent state)`` from filtered posteriors and labels, smoothed."""
    keep = ~np.isnan(states).any(axis=1)
    counts = states[keep].T @ np.eye(n_stages)[stage_codes[keep]] + 1e-3
    return counts / counts.sum(axis=1, keepdims=True)


def latent_bundle(
    data: LatentData, *, forecast: bool = True, horizon_days: int = 90, rounds: int = 6
) -> ModelBundle:
    """Heads on the definition's and the latent columns; a forecast from the labels."""
    definition = load_definition()
    est = LatentStateFeatures(max_iter=8, max_customers=300, horizon_days=horizon_days)
    est.fit(data.events, as_of=AS_OF)
    feats = model_features(data.events, definition=definition, latent=est.filter_, as_of=AS_OF)
    stage_of = data.labels.set_index(CUSTOMER_ID)["stage"]
    stages = tuple(sorted(set(stage_of)))
    y = pd.Categorical(stage_of.reindex(feats.index), categories=stages).codes
    keep = y >= 0
    X, y = feats.to_numpy()[keep], y[keep]
    params = {"verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5, "num_threads": 1}
    stage = lgb.train(
        {**params, "objective": "multiclass", "num_class": len(stages)},
        lgb.Dataset(X, y),
        num_boost_round=rounds,
    )
    churn_y = np.random.default_rng(0).integers(0, 2, len(X))
    churn = lgb.train({**params, "objective": "binary"}, lgb.Dataset(X, churn_y), rounds)
    k = est.params_.n_states
    states = feats[[f"latent_state_{j}" for j in range(k)]].to_numpy()[keep]
    c = stage_forecast(states, y, len(stages)) if forecast else None
    return ModelBundle(
        definition,
        stages,
        stage,
        churn,
        horizon_days=horizon_days,
        latent=est.params_,
        stage_forecast=None if c is None else tuple(map(tuple, c.tolist())),
    )
