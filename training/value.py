"""Customer value at training time: baselines, learned heads and a held-out-time evaluation.

:func:`fit_value` builds the :class:`~customer_lifecycle.features.btyd.ValueModel` a
bundle serves (docs/models.md):

* **Baselines.** BG/NBD for purchases and Gamma-Gamma for spend per purchase, fitted on
  every customer with a purchase before ``as_of`` (unsupervised: labels play no part,
  and only history before ``as_of`` is read). Without purchase amounts there is no
  Gamma-Gamma model: spend is NaN and the tiers rank expected purchases.
* **Held-out time.** The models are refitted at ``T_c = as_of - H_e`` on events before
  ``T_c`` and compared with what the customers did in ``[T_c, as_of)``
  (:func:`~customer_lifecycle.training.value_metrics.future_value`). ``H_e`` is the
  value horizon ``H`` when the log holds at least ``H / 2`` days of history before
  ``as_of - H`` (so the models are fitted on a real history); otherwise it is half the
  available history (at least :data:`MIN_EVAL_DAYS` days), and without that much the
  evaluation is skipped (:func:`eval_horizon`).
* **Never-buyers** (customers with events but no purchase) get a fill measured on the
  never-buyers at ``T_c``: their mean purchases and spend in the window, scaled from
  ``H_e`` to ``H`` days in proportion.
* **Tiers** are cut on the served spend (expected purchases without amounts) of every
  customer at ``as_of``. A block of equal predictions that straddles a cut (the
  never-buyers' fill, typically) stays below it, so no tier holds more than its share.
* **Learned heads.** LightGBM ``poisson`` (purchases) and ``tweedie`` (spend) on the
  definition's features at ``T_c``, trained on 80 % of the customers (early-stopped on a
  fifth of those) and compared with the baselines on the other 20 %. A head is kept only
  when it has both a lower RMSE and a lower MAE there (:func:`head_is_kept`), and only
  when ``H_e == H``: a head trained for another horizon cannot answer this one. A kept
  head is refitted on every customer at ``T_c`` for the rounds early stopping chose.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from customer_lifecycle.features.btyd import (
    BGNBD,
    VALUE_TIER_SHARES,
    GammaGamma,
    TierThresholds,
    ValueModel,
    tier_thresholds,
)
from customer_lifecycle.features.contract import (
    AMOUNT,
    EVENT_TYPE,
    TIMESTAMP,
    parse_as_of,
    to_canonical_frame,
)
from customer_lifecycle.features.definition import FeatureDefinition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.training import models
from customer_lifecycle.training.btyd import MIN_GAMMA_GAMMA_CUSTOMERS, fit_bgnbd, fit_gamma_gamma
from customer_lifecycle.training.value_metrics import future_value, value_metrics, value_plots
from matplotlib.figure import Figure

__all__ = [
    "MIN_EVAL_DAYS",
    "ValueEvaluation",
    "ValueFit",
    "eval_horizon",
    "evaluate_value",
    "fit_baselines",
    "fit_value",
    "head_is_kept",
]

Say = Callable[[str], None]

#: Fewest customers with a purchase BG/NBD is fitted on.
MIN_BUYERS = 20
#: Shortest held-out window of the evaluation, in days.
MIN_EVAL_DAYS = 30
#: Share of customers the learned heads are compared with the baselines on.
HELD_OUT_SHARE = 0.2
#: Share of the heads' training customers their early stopping watches.
STOP_SHARE = 0.2
#: Fewest customers the learned heads are tried on.
MIN_HEAD_CUSTOMERS = 200
_OBJECTIVES = {"purchases": "poisson", "spend": "tweedie"}
# Placeholder for predictions whose tier is not used (evaluation, threshold setting).
_NO_TIERS = TierThresholds(shares=(0.5,), thresholds=(0.0,))


@dataclass
class ValueEvaluation:
    """What the held-out-time evaluation found (see the module docstring)."""

    cutoff: pd.Timestamp
    eval_days: int
    customers: pd.Index
    held_out: np.ndarray  # bool per customer: among the 20 % the heads are judged on
    actual: pd.DataFrame  # future_value at cutoff over eval_days
    baseline: dict[str, np.ndarray]  # BG/NBD (+ Gamma-Gamma) + fill, every customer
    served: dict[str, np.ndarray]  # what the bundle will serve, every customer
    fill: tuple[float, float]  # never-buyers' mean purchases, spend over eval_days (all)
    heads: tuple[str, ...] = ()
    head_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    boosters: dict[str, lgb.Booster] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)


@dataclass
class ValueFit:
    """The value model of a run and everything to log about it."""

    model: ValueModel
    boosters: dict[str, lgb.Booster]
    metrics: dict[str, float]
    params: dict[str, str]
    figures: dict[str, Figure]
    summary: dict[str, Any]


def eval_horizon(history_days: float, horizon_days: int) -> int | None:
    """Length of the held-out window for a log with ``history_days`` before ``as_of``.

    ``horizon_days`` when at least half a horizon of history remains before
    ``as_of - horizon_days``; otherwise half the history, rounded down, when that is at
    least :data:`MIN_EVAL_DAYS`; otherwise ``None`` (no evaluation).
    """
    if history_days >= 1.5 * horizon_days:
        return int(horizon_days)
    half = int(history_days // 2)
    return half if half >= MIN_EVAL_DAYS else None


def head_is_kept(learned: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[bool, str]:
    """Whether a learned head replaces its baseline: lower RMSE *and* lower MAE.

    Both dicts hold ``mae`` and ``rmse`` on the same held-out customers. A tie or a
    NaN keeps the baseline (the simpler model wins unless beaten on both counts).

    Returns
    -------
    tuple of (bool, str)
        The decision and a short reason.
    """
    numbers = [learned["rmse"], learned["mae"], baseline["rmse"], baseline["mae"]]
    if not all(math.isfinite(v) for v in numbers):
        return False, "not comparable (a metric is undefined)"
    summary = (
        f"RMSE {learned['rmse']:.4g} vs {baseline['rmse']:.4g}, "
        f"MAE {learned['mae']:.4g} vs {baseline['mae']:.4g}"
    )
    kept = learned["rmse"] < baseline["rmse"] and learned["mae"] < baseline["mae"]
    return kept, summary


def _btyd(features: pd.DataFrame) -> tuple[np.ndarray, ...]:
    return tuple(
        features[c].to_numpy(dtype=np.float64)
        for c in ("btyd_frequency", "btyd_recency_days", "btyd_age_days", "btyd_mean_spend")
    )


def fit_baselines(features: pd.DataFrame, *, amounts: bool) -> tuple[BGNBD, GammaGamma | None, str]:
    """BG/NBD on every buyer of ``features`` and, with ``amounts``, Gamma-Gamma.

    Gamma-Gamma uses the repeat buyers whose repeat purchases carry an amount; with
    fewer than ``MIN_GAMMA_GAMMA_CUSTOMERS`` of them it is not fitted.

    Returns
    -------
    tuple
        BG/NBD, Gamma-Gamma or None, and a one-line note of what was fitted.

    Raises
    ------
    ValueError
        With fewer than :data:`MIN_BUYERS` customers who purchased.
    """
    x, t_x, age, m = _btyd(features)
    buyer = ~np.isnan(age)
    if buyer.sum() < MIN_BUYERS:
        raise ValueError(f"{int(buyer.sum())} customers with a purchase (at least {MIN_BUYERS})")
    bgnbd = fit_bgnbd(x[buyer], t_x[buyer], age[buyer])
    note = f"BG/NBD on {int(buyer.sum()):,} buyers"
    if not amounts:
        return bgnbd, None, f"{note}; no purchase amounts: no spend, tiers by expected purchases"
    usable = buyer & (x >= 1) & np.isfinite(m) & (m > 0)
    if usable.sum() < MIN_GAMMA_GAMMA_CUSTOMERS:
        return (
            bgnbd,
            None,
            f"{note}; only {int(usable.sum())} repeat buyers with amounts (Gamma-Gamma needs "
            f"{MIN_GAMMA_GAMMA_CUSTOMERS}): no spend, tiers by expected purchases",
        )
    gamma_gamma = fit_gamma_gamma(x[usable], m[usable])
    return bgnbd, gamma_gamma, f"{note}, Gamma-Gamma on {int(usable.sum()):,} repeat buyers"


def _predict(
    bgnbd: BGNBD,
    gamma_gamma: GammaGamma | None,
    horizon_days: int,
    features: pd.DataFrame,
    fill: tuple[float, float],
    learned: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The served predictions (tier aside): the same code path as the bundle's."""
    learned = learned or {}
    model = ValueModel(
        bgnbd=bgnbd,
        gamma_gamma=gamma_gamma,
        horizon_days=horizon_days,
        tiers=_NO_TIERS,
        never_buyer_purchases=fill[0],
        never_buyer_spend=fill[1] if gamma_gamma is not None else math.nan,
        heads=tuple(learned),
    )
    out = model.predict(
        *_btyd(features),
        learned_purchases=learned.get("purchases"),
        learned_spend=learned.get("spend"),
    )
    out.pop("value_tier")
    return out


def _never_buyer_fill(
    features: pd.DataFrame, actual: pd.DataFrame, rows: np.ndarray
) -> tuple[tuple[float, float], str]:
    """Mean purchases and spend in the window of the never-buyers among ``rows``.

    A purchase-only log has no never-buyers; then the customers with a single purchase
    day stand in (the nearest to "has not bought yet"), and failing those everyone.
    """
    age = features["btyd_age_days"].to_numpy(dtype=np.float64)
    x = features["btyd_frequency"].to_numpy(dtype=np.float64)
    for who, mask in (
        ("never-buyers", rows & np.isnan(age)),
        ("single-purchase customers (no never-buyers)", rows & (x == 0)),
        ("all customers (no never-buyers)", rows),
    ):
        if mask.any():
            purchases = float(actual["purchases"].to_numpy()[mask].mean())
            spend = float(actual["spend"].to_numpy()[mask].mean())
            return (purchases, spend), f"{int(mask.sum()):,} {who}"
    return (0.0, 0.0), "nobody"  # unreachable with any customer: rows is never empty


def _held_out(customers: pd.Index, seed: int) -> np.ndarray:
    """A random ``HELD_OUT_SHARE`` of customers, by id order and seed (order-free)."""
    order = np.argsort(np.asarray(customers.astype(str)), kind="stable")
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(customers))[: max(1, round(HELD_OUT_SHARE * len(customers)))]
    held = np.zeros(len(customers), dtype=bool)
    held[order[pick]] = True
    return held


def _head_params(head: str, seed: int, params: Mapping[str, Any] | None) -> dict[str, Any]:
    p = {**models.DEFAULT_LGB_PARAMS, **(params or {})}
    p.update(objective=_OBJECTIVES[head], metric=_OBJECTIVES[head], seed=seed)
    return p


def evaluate_value(
    events: pd.DataFrame,
    as_of: object,
    *,
    horizon_days: int,
    eval_days: int,
    definition: FeatureDefinition,
    amounts: bool,
    seed: int = 0,
    learned_heads: bool = True,
    max_rounds: int = 2000,
    lgb_params: Mapping[str, Any] | None = None,
) -> ValueEvaluation:
    """Refit the baselines at ``T_c = as_of - eval_days`` and judge them on the window.

    Only events before ``T_c`` feed the baselines' predictions; the never-buyer fill of
    the evaluated predictions is measured on the customers outside the held-out 20 %,
    so nothing a held-out customer does after ``T_c`` reaches their predictions. The
    learned heads are tried when ``eval_days == horizon_days`` and ``learned_heads``.

    Raises
    ------
    ValueError
        When the baselines cannot be fitted at ``T_c`` (too few buyers).
    """
    cutoff = parse_as_of(as_of) - pd.Timedelta(days=eval_days)
    feats = build_features(events, as_of=cutoff, definition=definition)
    customers = pd.Index(feats.index.astype(str))
    actual = future_value(
        events, cutoff, float(eval_days), definition=definition, customers=customers
    )
    held = _held_out(customers, seed)
    bgnbd, gamma_gamma, _ = fit_baselines(feats, amounts=amounts)
    fill_fit, _ = _never_buyer_fill(feats, actual, ~held)
    baseline = _predict(bgnbd, gamma_gamma, eval_days, feats, fill_fit)
    fill_all, fill_note = _never_buyer_fill(feats, actual, np.ones(len(feats), dtype=bool))
    out = ValueEvaluation(
        cutoff=cutoff,
        eval_days=eval_days,
        customers=customers,
        held_out=held,
        actual=actual,
        baseline=baseline,
        served={k: v.copy() for k, v in baseline.items()},
        fill=fill_all,
    )
    out.decisions.append(f"never-buyer fill measured on {fill_note}")
    if not learned_heads:
        out.decisions.append("learned heads: not tried (disabled)")
        return out
    if eval_days != horizon_days:
        out.decisions.append(
            f"learned heads: not tried (evaluated at {eval_days} days, a head for another "
            f"horizon cannot answer {horizon_days})"
        )
        return out
    if (~held).sum() < MIN_HEAD_CUSTOMERS:
        out.decisions.append(
            f"learned heads: not tried ({int((~held).sum())} training customers, "
            f"at least {MIN_HEAD_CUSTOMERS})"
        )
        return out
    X = feats[definition.feature_names()].to_numpy(dtype=np.float64)
    train_rows = np.flatnonzero(~held)
    stop = np.zeros(len(feats), dtype=bool)
    rng = np.random.default_rng(seed + 1)
    stop[rng.permutation(train_rows)[: max(1, round(STOP_SHARE * train_rows.size))]] = True
    fit_rows = ~held & ~stop
    for head in ("purchases", "spend"):
        if head == "spend" and gamma_gamma is None:
            continue
        y = actual[head].to_numpy(dtype=np.float64)
        if y[fit_rows].sum() <= 0:
            out.decisions.append(f"learned {head}: not tried (nobody bought in the window)")
            continue
        params = _head_params(head, seed, lgb_params)
        booster = models._train(params, X[fit_rows], y[fit_rows], X[stop], y[stop], max_rounds)
        rounds = max(1, int(booster.best_iteration))
        learned = np.exp(np.asarray(booster.predict(X[held], raw_score=True), dtype=np.float64))
        mine = _mae_rmse(y[held], learned)
        base = _mae_rmse(y[held], baseline[f"expected_{head}"][held])
        kept, why = head_is_kept(mine, base)
        out.head_metrics[head] = {**mine, "rounds": float(rounds)}
        if kept:
            out.heads += (head,)
            out.boosters[head] = models.fit_rounds(params, X, y, rounds)
            out.served[f"expected_{head}"][held] = learned
        out.decisions.append(
            f"learned {head} head {'kept' if kept else 'not kept'} on the held-out 20 %: {why}"
            + ("" if kept else " (kept only when lower on both)")
        )
    return out


def _mae_rmse(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    ok = ~np.isnan(predicted)
    err = predicted[ok] - actual[ok]
    if not err.size:
        return {"mae": math.nan, "rmse": math.nan}
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err * err)))}


def fit_value(
    events: pd.DataFrame,
    as_of: object,
    *,
    definition: FeatureDefinition,
    horizon_days: int = 365,
    shares: tuple[float, ...] = VALUE_TIER_SHARES,
    seed: int = 0,
    learned_heads: bool = True,
    max_rounds: int = 2000,
    lgb_params: Mapping[str, Any] | None = None,
    say: Say = print,
) -> ValueFit | None:
    """The value model served at ``as_of``, its held-out evaluation and what to log.

    Parameters
    ----------
    events : pandas.DataFrame
        The event log (canonical columns). Only events before ``as_of`` are read.
    as_of : str or timestamp
        The run's latest snapshot time.
    definition : FeatureDefinition
        Its ``btyd_*`` features and purchase group are used; the learned heads read all
        of its feature columns.
    horizon_days : int, default 365
        Horizon of the expected purchases and spend.
    shares : tuple of float
        Top shares of the value tiers.
    seed, max_rounds, lgb_params
        As for the lifecycle heads.
    learned_heads : bool, default True
        Try the LightGBM heads (they are kept only when they beat the baselines).
    say : callable
        Receives one short line per decision.

    Returns
    -------
    ValueFit or None
        None when the log has no purchase before ``as_of`` or too few buyers (said).
    """
    if horizon_days < 1:
        raise ValueError("the value horizon must be at least 1 day")
    cutoff = parse_as_of(as_of)
    ev = to_canonical_frame(events)
    before = (ev[TIMESTAMP] < cutoff).to_numpy()
    purchase_types = list(definition.groups[definition.purchase_group])
    bought = before & ev[EVENT_TYPE].astype(str).isin(purchase_types).to_numpy()
    if not bought.any():
        say("value: no purchase events before as_of: no value model")
        return None
    amounts = AMOUNT in ev.columns and bool(ev[AMOUNT][bought].notna().any())
    now = build_features(ev, as_of=cutoff, definition=definition)
    try:
        bgnbd, gamma_gamma, note = fit_baselines(now, amounts=amounts)
    except ValueError as exc:
        say(f"value: no value model: {exc}")
        return None
    say(f"value: {note} (at {cutoff.date().isoformat()}, every customer, no labels)")

    history = (cutoff - ev[TIMESTAMP][before].min()) / pd.Timedelta(days=1)
    eval_days = eval_horizon(history, horizon_days)
    evaluation: ValueEvaluation | None = None
    if eval_days is None:
        say(
            f"value: {history:.0f} days of history before as_of: no held-out evaluation "
            f"(needs {2 * MIN_EVAL_DAYS})"
        )
    else:
        if eval_days != horizon_days:
            say(
                f"value: only {history:.0f} days of history: evaluated at {eval_days} days, "
                f"not the {horizon_days}-day horizon (half a horizon of history must "
                "precede the window)"
            )
        try:
            evaluation = evaluate_value(
                ev,
                cutoff,
                horizon_days=horizon_days,
                eval_days=eval_days,
                definition=definition,
                amounts=amounts,
                seed=seed,
                learned_heads=learned_heads,
                max_rounds=max_rounds,
                lgb_params=lgb_params,
            )
        except ValueError as exc:
            say(f"value: no held-out evaluation at {eval_days} days: {exc}")
        else:
            for line in evaluation.decisions:
                say(f"value: {line}")

    if evaluation is not None:
        scale = horizon_days / evaluation.eval_days
        fill = (evaluation.fill[0] * scale, evaluation.fill[1] * scale)
        fill_note = f"measured at {evaluation.cutoff.date().isoformat()}"
    else:
        fill, fill_note = _fill_without_evaluation(ev, cutoff, history, horizon_days, definition)
    if gamma_gamma is None:
        fill = (fill[0], math.nan)
    heads = () if evaluation is None else evaluation.heads
    boosters = {} if evaluation is None else evaluation.boosters
    X_now = now[definition.feature_names()].to_numpy(dtype=np.float64)
    learned = {
        h: np.exp(np.asarray(boosters[h].predict(X_now, raw_score=True), dtype=np.float64))
        for h in heads
    }
    served = _predict(bgnbd, gamma_gamma, horizon_days, now, fill, learned)
    ranked = served["expected_spend"] if gamma_gamma is not None else served["expected_purchases"]
    model = ValueModel(
        bgnbd=bgnbd,
        gamma_gamma=gamma_gamma,
        horizon_days=horizon_days,
        # never-buyers share one prediction (the fill): a block that must not lift a
        # tier past its share
        tiers=tier_thresholds(ranked, shares, ties="lower"),
        never_buyer_purchases=fill[0],
        never_buyer_spend=fill[1],
        heads=heads,
    )
    say(
        f"value: serving {_heads_param(heads)} over {horizon_days} days; tiers by "
        f"{model.tier_by} on {len(now):,} customers; never-buyer fill {fill[0]:.3g} "
        f"purchases ({fill_note})"
    )
    metrics, figures = _evaluation_logs(evaluation)
    params = {
        "value_horizon_days": str(horizon_days),
        "value_eval_horizon_days": "skipped" if evaluation is None else str(eval_days),
        "value_heads": _heads_param(heads),
        "value_tier_by": model.tier_by,
    }
    metrics["value_never_buyer_purchases"] = fill[0]
    if not math.isnan(fill[1]):
        metrics["value_never_buyer_spend"] = fill[1]
    summary = {
        **params,
        "value_eval_cutoff": None if evaluation is None else evaluation.cutoff.isoformat(),
        "value_decisions": [] if evaluation is None else list(evaluation.decisions),
    }
    return ValueFit(model, boosters, metrics, params, figures, summary)


def _heads_param(heads: tuple[str, ...]) -> str:
    return "learned:" + ",".join(heads) if heads else "baseline"


def _fill_without_evaluation(
    ev: pd.DataFrame,
    cutoff: pd.Timestamp,
    history: float,
    horizon_days: int,
    definition: FeatureDefinition,
) -> tuple[tuple[float, float], str]:
    """The never-buyer fill from the last half of a history too short to evaluate on."""
    window = max(1, int(history // 2))
    start = cutoff - pd.Timedelta(days=window)
    feats = build_features(ev, as_of=start, definition=definition)
    if feats.empty:
        return (0.0, 0.0), "no customer before the window: 0"
    actual = future_value(ev, start, float(window), definition=definition, customers=feats.index)
    fill, who = _never_buyer_fill(feats, actual, np.ones(len(feats), dtype=bool))
    scale = horizon_days / window
    return (fill[0] * scale, fill[1] * scale), f"{who} over the last {window} days, scaled"


def _evaluation_logs(
    evaluation: ValueEvaluation | None,
) -> tuple[dict[str, float], dict[str, Figure]]:
    """``value_bgnbd_*`` and ``value_model_*`` metrics and plots on the held-out 20 %."""
    if evaluation is None:
        return {}, {}
    held = evaluation.held_out
    actual = evaluation.actual
    ya = actual["purchases"].to_numpy(np.float64)[held]
    sa = actual["spend"].to_numpy(np.float64)[held]
    da = actual["days_to_next_purchase"].to_numpy(np.float64)[held]
    metrics: dict[str, float] = {"value_eval_customers": float(held.sum())}
    figures: dict[str, Figure] = {}
    for who, pred in (("bgnbd", evaluation.baseline), ("model", evaluation.served)):
        yp = pred["expected_purchases"][held]
        sp = pred["expected_spend"][held]
        m = value_metrics(ya, sa, yp, sp, pred["days_to_next_purchase"][held], da)
        metrics.update({f"value_{who}_{k}": v for k, v in m.items()})
        for name, fig in value_plots(ya, sa, yp, sp).items():
            figures[f"plots/value/{who}_{name.removeprefix('value_')}.png"] = fig
    for head, values in evaluation.head_metrics.items():
        metrics.update({f"value_learned_{head}_{k}": v for k, v in values.items()})
    return metrics, figures
