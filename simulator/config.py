"""Simulation scenarios: the parameters of the generative model, read from YAML.

A scenario is validated once by :func:`load_scenario` and then compiled to plain numpy
arrays (:class:`ScenarioArrays`) that the generator and the oracle share, so both read
the very same numbers. ``docs/simulator.md`` explains every parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from customer_lifecycle.features.contract import CANONICAL_EVENT_TYPES, MONETARY_EVENT_TYPES
from customer_lifecycle.features.messages import one_line
from customer_lifecycle.features.taxonomy import load_taxonomy
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

#: Scenarios shipped in ``simulator/scenarios``.
SHIPPED_SCENARIOS: tuple[str, ...] = ("default", "subscription")

_PROBABILITY_SLACK = 1e-9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Arrivals(_Strict):
    """When customers arrive (their first event, the acquisition touch)."""

    start: date = Field(description="first arrival day, midnight UTC")
    days: int = Field(gt=0, description="customers arrive over this many days")
    trend: float = Field(
        default=0.0,
        description="log growth of the daily arrival rate over the period (0 = flat)",
    )


class Activity(_Strict):
    """A customer's activity level, drawn once at arrival from a finite distribution."""

    levels: list[float] = Field(min_length=1)
    probabilities: list[float] = Field(min_length=1)


class Amount(_Strict):
    """Lognormal money amount of a monetary event type, by stage."""

    median: float | dict[str, float]
    sigma: float | dict[str, float]


class Channels(_Strict):
    """Channel mix of events: a default, overridden per event type."""

    default: dict[str, float] = Field(min_length=1)
    by_event_type: dict[str, dict[str, float]] = Field(default_factory=dict)


class Scenario(_Strict):
    """All parameters of one simulation scenario (see ``docs/simulator.md``)."""

    name: str
    description: str = ""
    arrivals: Arrivals
    stages: list[str] = Field(min_length=1)
    initial: dict[str, float]
    transitions: dict[str, dict[str, float]]
    dormancy: dict[str, float]
    activity: Activity
    arrival_events: dict[str, dict[str, float]]
    background_rate: float = Field(default=0.0, ge=0.0)
    rates: dict[str, dict[str, float]]
    amounts: dict[str, Amount] = Field(default_factory=dict)
    channels: Channels

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        # Compiling runs every cross-field check; a failure is one ValueError.
        compile_scenario(self)
        return self

    def arrays(self) -> ScenarioArrays:
        """Return the scenario compiled to numpy arrays."""
        return compile_scenario(self)


@dataclass(frozen=True, eq=False)
class ScenarioArrays:
    """A scenario as arrays; ``S`` stages, ``T`` event types, ``K`` activity levels.

    Attributes
    ----------
    stages, event_types, channels
        Names behind the integer codes used below.
    start
        First arrival day (``datetime64[D]``).
    arrival_weights
        ``(D,)`` probability of arriving on each day of the arrival period.
    initial
        ``(S,)`` stage on the arrival day.
    move
        ``(S, S)`` daily stage transition given the customer stays active (rows sum to 1).
    dormancy
        ``(S,)`` daily probability that an active customer goes dormant (for good).
    levels, level_probs
        ``(K,)`` activity multipliers and their probabilities.
    arrival_events
        ``(S, T)`` type of the acquisition event, given the arrival-day stage.
    rates
        ``(S, T)`` expected events per active day at activity 1.
    amount_types
        ``(M,)`` event-type codes that carry an amount.
    amount_log_median, amount_sigma
        ``(M, S)`` lognormal parameters of those amounts.
    channel_probs
        ``(T, C)`` channel of an event given its type.
    """

    stages: tuple[str, ...]
    event_types: tuple[str, ...]
    channels: tuple[str, ...]
    start: np.datetime64
    arrival_weights: np.ndarray
    initial: np.ndarray
    move: np.ndarray
    dormancy: np.ndarray
    levels: np.ndarray
    level_probs: np.ndarray
    arrival_events: np.ndarray
    rates: np.ndarray
    amount_types: np.ndarray
    amount_log_median: np.ndarray
    amount_sigma: np.ndarray
    channel_probs: np.ndarray

    @property
    def total_rates(self) -> np.ndarray:
        """``(S,)`` expected events per active day at activity 1, all types."""
        return np.asarray(self.rates.sum(axis=1))

    def extended_transition(self) -> np.ndarray:
        """``(2S, 2S)`` daily transition over states ``(stage, active)`` then ``(stage, dormant)``.

        Dormant states are absorbing and keep the stage the customer had when it went
        dormant.
        """
        n = len(self.stages)
        out = np.zeros((2 * n, 2 * n))
        out[:n, :n] = (1.0 - self.dormancy)[:, None] * self.move
        out[np.arange(n), n + np.arange(n)] = self.dormancy
        out[n:, n:] = np.eye(n)
        return out


def load_scenario(name_or_path: str | Path = "default") -> Scenario:
    """Load a shipped scenario by name, or a scenario YAML file by path.

    Raises ``ValueError`` with a one-line message on an unknown name, an unreadable
    file, an unknown key or an inconsistent parameter.
    """
    text, source = _read_source(str(name_or_path))
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"scenario {source} is not valid YAML: {one_line(exc)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"scenario {source} must be a YAML mapping of parameters")
    return scenario_from_dict(data, source=source)


def scenario_from_dict(data: dict[str, Any], *, source: str = "<mapping>") -> Scenario:
    """Validate a parameter mapping (as in a scenario YAML file) into a :class:`Scenario`."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"scenario {source}: {_describe(exc)}") from None


def _read_source(name_or_path: str) -> tuple[str, str]:
    looks_like_path = name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path
    if not looks_like_path:
        if name_or_path not in SHIPPED_SCENARIOS:
            raise ValueError(
                f"unknown scenario {name_or_path!r}; shipped scenarios are "
                f"{', '.join(SHIPPED_SCENARIOS)} (or give a path to a YAML file)"
            )
        path = resources.files("customer_lifecycle.simulator.scenarios").joinpath(
            f"{name_or_path}.yaml"
        )
        return path.read_text(), repr(name_or_path)
    try:
        return Path(name_or_path).read_text(), name_or_path
    except OSError as exc:
        raise ValueError(f"cannot read scenario file {name_or_path}: {exc.strerror}") from None


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key {where!r}"
    if err["type"] == "missing":
        return f"missing key {where!r}"
    message = err["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def compile_scenario(sc: Scenario) -> ScenarioArrays:
    """Check a scenario's cross-field consistency and turn it into arrays.

    Raises ``ValueError`` naming the first offending parameter.
    """
    taxonomy = load_taxonomy()
    stages = tuple(sc.stages)
    for stage in stages:
        if stage not in taxonomy.stages:
            raise ValueError(
                f"stage {stage!r} is not in the taxonomy ({', '.join(taxonomy.stages)})"
            )
    if len(set(stages)) != len(stages):
        raise ValueError(f"stages repeat: {list(stages)}")
    s_index = {s: i for i, s in enumerate(stages)}
    types = CANONICAL_EVENT_TYPES
    t_index = {t: i for i, t in enumerate(types)}
    n_s, n_t = len(stages), len(types)

    initial = _vector("initial", sc.initial, s_index, what="stage")
    _check_distribution("initial", initial)

    move = np.zeros((n_s, n_s))
    for stage, row in sc.transitions.items():
        i = _lookup(f"transitions.{stage}", stage, s_index, "stage")
        if stage in row:
            raise ValueError(
                f"transitions.{stage} lists {stage!r} itself; list only moves to other "
                "stages (staying is the remainder)"
            )
        move[i] = _vector(f"transitions.{stage}", row, s_index, what="stage")
        leave = move[i].sum()
        if leave > 1.0 + _PROBABILITY_SLACK:
            raise ValueError(f"transitions.{stage}: moves add up to {leave:g}, more than 1")
    move[np.arange(n_s), np.arange(n_s)] = np.clip(1.0 - move.sum(axis=1), 0.0, 1.0)

    dormancy = _vector("dormancy", sc.dormancy, s_index, what="stage", complete=True)
    if (dormancy > 1.0).any():
        raise ValueError("dormancy: a daily hazard must be at most 1")

    levels = np.asarray(sc.activity.levels, dtype=float)
    level_probs = np.asarray(sc.activity.probabilities, dtype=float)
    if levels.shape != level_probs.shape:
        raise ValueError("activity: levels and probabilities differ in length")
    if (levels <= 0).any() or not np.isfinite(levels).all():
        raise ValueError("activity.levels must be positive")
    _check_distribution("activity.probabilities", level_probs)

    arrival_events = np.zeros((n_s, n_t))
    for stage in stages:
        if stage not in sc.arrival_events:
            if initial[s_index[stage]] > 0:
                raise ValueError(f"arrival_events: missing stage {stage!r}")
            continue
        probs = _vector(f"arrival_events.{stage}", sc.arrival_events[stage], t_index, "event type")
        _check_distribution(f"arrival_events.{stage}", probs)
        arrival_events[s_index[stage]] = probs
    for stage in sc.arrival_events:
        _lookup("arrival_events", stage, s_index, "stage")
    for etype in MONETARY_EVENT_TYPES:
        if arrival_events[:, t_index[etype]].any():
            raise ValueError(f"arrival_events: {etype!r} carries an amount; use another type")

    rates = np.full((n_s, n_t), float(sc.background_rate))
    for stage in stages:
        if stage not in sc.rates:
            raise ValueError(f"rates: missing stage {stage!r}")
    for stage, row in sc.rates.items():
        i = _lookup("rates", stage, s_index, "stage")
        for etype, rate in row.items():
            j = _lookup(f"rates.{stage}", etype, t_index, "event type")
            if not (rate >= 0 and np.isfinite(rate)):
                raise ValueError(f"rates.{stage}.{etype} must be a non-negative number")
            rates[i, j] = rate

    amount_types = np.asarray([t_index[t] for t in MONETARY_EVENT_TYPES], dtype=np.int64)
    log_median = np.zeros((len(amount_types), n_s))
    sigma = np.ones((len(amount_types), n_s))
    for etype in sc.amounts:
        if etype not in MONETARY_EVENT_TYPES:
            raise ValueError(
                f"amounts: {etype!r} carries no amount; monetary types are "
                f"{', '.join(MONETARY_EVENT_TYPES)}"
            )
    for m, etype in enumerate(MONETARY_EVENT_TYPES):
        if etype not in sc.amounts:
            if rates[:, t_index[etype]].any():
                raise ValueError(f"amounts: missing {etype!r} (it has a positive rate)")
            continue
        spec = sc.amounts[etype]
        log_median[m] = np.log(_per_stage(f"amounts.{etype}.median", spec.median, s_index))
        sigma[m] = _per_stage(f"amounts.{etype}.sigma", spec.sigma, s_index)

    channels = tuple(
        dict.fromkeys(
            [*sc.channels.default, *(c for row in sc.channels.by_event_type.values() for c in row)]
        )
    )
    c_index = {c: i for i, c in enumerate(channels)}
    default_channels = _vector("channels.default", sc.channels.default, c_index, "channel")
    _check_distribution("channels.default", default_channels)
    channel_probs = np.tile(default_channels, (n_t, 1))
    for etype, mix in sc.channels.by_event_type.items():
        j = _lookup("channels.by_event_type", etype, t_index, "event type")
        channel_probs[j] = _vector(f"channels.by_event_type.{etype}", mix, c_index, "channel")
        _check_distribution(f"channels.by_event_type.{etype}", channel_probs[j])

    day = np.arange(sc.arrivals.days, dtype=float)
    weights = np.exp(sc.arrivals.trend * day / sc.arrivals.days)
    return ScenarioArrays(
        stages=stages,
        event_types=types,
        channels=channels,
        start=np.datetime64(sc.arrivals.start, "D"),
        arrival_weights=weights / weights.sum(),
        initial=initial / initial.sum(),
        move=move / move.sum(axis=1, keepdims=True),
        dormancy=dormancy,
        levels=levels,
        level_probs=level_probs / level_probs.sum(),
        arrival_events=_normalise_rows(arrival_events),
        rates=rates,
        amount_types=amount_types,
        amount_log_median=log_median,
        amount_sigma=sigma,
        channel_probs=_normalise_rows(channel_probs),
    )


def _lookup(where: str, key: str, index: dict[str, int], what: str) -> int:
    if key not in index:
        raise ValueError(f"{where}: unknown {what} {key!r}")
    return index[key]


def _vector(
    where: str, values: dict[str, float], index: dict[str, int], what: str, complete: bool = False
) -> np.ndarray:
    out = np.zeros(len(index))
    for key, value in values.items():
        i = _lookup(where, key, index, what)
        if not (value >= 0 and np.isfinite(value)):
            raise ValueError(f"{where}.{key} must be a non-negative number, got {value!r}")
        out[i] = value
    if complete:
        missing = [k for k in index if k not in values]
        if missing:
            raise ValueError(f"{where}: missing {what} {missing[0]!r}")
    return out


def _per_stage(where: str, value: float | dict[str, float], index: dict[str, int]) -> np.ndarray:
    if isinstance(value, dict):
        out = _vector(where, value, index, "stage", complete=True)
    else:
        out = np.full(len(index), float(value))
    if (out <= 0).any() or not np.isfinite(out).all():
        raise ValueError(f"{where} must be positive")
    return out


def _check_distribution(where: str, probs: np.ndarray) -> None:
    total = probs.sum()
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{where}: probabilities add up to {total:g}, not 1")


def _normalise_rows(a: np.ndarray) -> np.ndarray:
    totals = a.sum(axis=1, keepdims=True)
    return np.divide(a, totals, out=np.zeros_like(a), where=totals > 0)
