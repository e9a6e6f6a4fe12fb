"""A family of customer-journey simulators we did not tune on, and their exact oracle.

The product's own simulator (``customer_lifecycle.simulator``) is what the features were
developed on, so it cannot be the yardstick. This module is an independent generator
(it imports nothing of the simulator) with other structure:

* **semi-Markov dwell**: stage ``s`` lasts a negative-binomial number of days, ``r_s``
  Erlang phases each left with daily probability ``q_s``; when the last phase ends the
  next stage is drawn from a jump matrix (forward and backward moves). ``r_s = 1`` is
  the Markov case.
* **dormancy**: a stage-dependent daily hazard into a dormant state that keeps the stage
  (the stage label of a dormant customer is the stage it kept) and emits almost nothing;
  absorbing, or left with a small daily probability back into phase 0 of the kept stage.
* **heavy-tailed activity**: a per-customer multiplier of every rate, a lognormal
  discretised on a fixed grid of levels (Gauss-Hermite nodes), so the oracle stays exact.
* **seasonality**: rates times a known weekly and yearly multiplier.
* **vocabularies**: each scenario has its own subset of the canonical event types with
  its own per-stage Poisson rates; purchases carry a lognormal amount independent of the
  state.

Every customer arrives on a day with one mandatory acquisition event, then emits Poisson
counts from that day on. One day's hidden state (stage, phase, active/dormant) governs
that day's events; the state moves between days.

:func:`oracle` is the Bayes-optimal filter: a forward pass per customer over the
expanded state (stage, phase, active|dormant) x activity level from the arrival day to
the last day before ``as_of``, with the per-day Poisson likelihood of the counts of every
event type. It returns ``p_<stage>`` (the posterior of the stage on the last day before
``as_of``, the label) and ``churn_probability``, the exact probability of no event at all
in ``[as_of, as_of + horizon)``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numba
import numpy as np
import pandas as pd
from customer_lifecycle.features.contract import (
    AMOUNT,
    CANONICAL_EVENT_TYPES,
    CUSTOMER_ID,
    EVENT_TYPE,
    TIMESTAMP,
)

#: The product's default taxonomy, in funnel order.
DEFAULT_STAGES: tuple[str, ...] = (
    "awareness",
    "consideration",
    "purchase",
    "retention",
    "advocacy",
)
#: Day 0 of every simulation (a Monday, so ``day % 7`` is the weekday).
START = pd.Timestamp("2023-01-02", tz="UTC")
#: Protocol days: labelled snapshot, scoring snapshot, end of the simulation.
T1_DAY, T2_DAY, END_DAY = 550, 640, 730
HORIZON_DAYS = 90
#: Rate of an event type a stage does not list (every rate positive keeps logs finite).
RATE_FLOOR = 0.002


@dataclass(frozen=True)
class Scenario:
    """One journey model: stages, knobs and rates (daily, for activity level 1).

    Parameters
    ----------
    name
        Scenario name.
    stages
        Stage names in funnel order (3 to 6).
    default_taxonomy
        Whether ``stages`` is the product's default taxonomy; otherwise
        :func:`write_taxonomy` writes a YAML file for it.
    event_types
        The scenario's vocabulary, canonical event types.
    rates
        ``(K, E)`` daily Poisson rates of each event type per stage.
    phases
        ``(K,)`` Erlang phases ``r_s`` per stage.
    leave
        ``(K,)`` daily probability ``q_s`` of leaving a phase.
    jumps
        ``(K, K)`` next-stage probabilities when the last phase ends (zero diagonal).
    initial
        ``(K,)`` stage probabilities on the arrival day.
    dormancy
        ``(K,)`` daily hazard of going dormant.
    reactivation
        Daily probability of leaving dormancy (0: absorbing).
    dormant_factor
        Dormant rates are ``dormant_factor x`` the kept stage's rates.
    levels, level_weights
        Activity multipliers and their probabilities.
    weekly
        ``(7,)`` multiplier per weekday, Monday first.
    yearly_amplitude, yearly_peak
        Yearly multiplier ``1 + A cos(2 pi (day_of_year - peak) / 365.25)``.
    acquisition
        Event type of the mandatory arrival event.
    """

    name: str
    stages: tuple[str, ...]
    default_taxonomy: bool
    event_types: tuple[str, ...]
    rates: np.ndarray
    phases: np.ndarray
    leave: np.ndarray
    jumps: np.ndarray
    initial: np.ndarray
    dormancy: np.ndarray
    reactivation: float
    dormant_factor: float
    levels: np.ndarray
    level_weights: np.ndarray
    weekly: np.ndarray
    yearly_amplitude: float
    yearly_peak: int
    acquisition: str

    def __post_init__(self) -> None:
        k, e = len(self.stages), len(self.event_types)
        if not 2 <= k <= 12:
            raise ValueError(f"a scenario needs 2 to 12 stages, got {k}")
        unknown = [
            t for t in (*self.event_types, self.acquisition) if t not in CANONICAL_EVENT_TYPES
        ]
        if unknown:
            raise ValueError(f"scenario {self.name}: {unknown[0]!r} is not a canonical event type")
        if self.acquisition not in self.event_types:
            raise ValueError(
                f"scenario {self.name}: the acquisition type must be in the vocabulary"
            )
        if self.rates.shape != (k, e) or not (self.rates > 0).all():
            raise ValueError(f"scenario {self.name}: rates must be positive, shape {(k, e)}")
        if self.jumps.shape != (k, k) or not np.allclose(self.jumps.sum(1), 1.0):
            raise ValueError(f"scenario {self.name}: every jump row must sum to 1")
        if np.any(np.diag(self.jumps) != 0):
            raise ValueError(f"scenario {self.name}: a stage cannot jump to itself")
        if not np.isclose(self.initial.sum(), 1.0) or not np.isclose(self.level_weights.sum(), 1):
            raise ValueError(f"scenario {self.name}: initial and level weights must sum to 1")

    @property
    def n_states(self) -> int:
        """Size of the expanded hidden state: every (stage, phase) plus one dormant per stage."""
        return int(self.phases.sum()) + len(self.stages)


# -- the scenarios ---------------------------------------------------------------------


def lognormal_levels(sigma: float, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A lognormal with log-sd ``sigma`` and mean 1 on ``n`` Gauss-Hermite levels.

    Parameters
    ----------
    sigma
        Standard deviation of the log multiplier.
    n
        Number of levels.

    Returns
    -------
    levels, weights
        The multipliers and their probabilities (weights sum to 1, mean multiplier 1).
    """
    nodes, weights = np.polynomial.hermite_e.hermegauss(n)
    weights = weights / weights.sum()
    levels = np.exp(sigma * nodes)
    return levels / float(levels @ weights), weights


def _rate_table(stages, types, table, floor=RATE_FLOOR):  # type: ignore[no-untyped-def]
    rates = np.full((len(stages), len(types)), floor)
    for s, row in table.items():
        for t, v in row.items():
            rates[stages.index(s), types.index(t)] = v
    return rates


def _jump_table(stages, table):  # type: ignore[no-untyped-def]
    jumps = np.zeros((len(stages), len(stages)))
    for s, row in table.items():
        for t, v in row.items():
            jumps[stages.index(s), stages.index(t)] = v
    return jumps / jumps.sum(1, keepdims=True)


def _base(name: str) -> tuple[Scenario, np.ndarray]:
    """The un-jittered scenario ``name`` and its dwell means (days per stage)."""
    flat_week = np.ones(7)
    stages: tuple[str, ...]
    types: tuple[str, ...]
    if name == "markov3":
        stages = ("prospect", "customer", "lapsing")
        types = ("page_view", "product_view", "search", "add_to_cart", "purchase", "email_open")
        rates = _rate_table(
            stages,
            types,
            {
                "prospect": {"page_view": 0.35, "product_view": 0.2, "search": 0.1},
                "customer": {
                    "page_view": 0.25,
                    "product_view": 0.3,
                    "add_to_cart": 0.12,
                    "purchase": 0.06,
                    "email_open": 0.1,
                },
                "lapsing": {"page_view": 0.08, "email_open": 0.12, "product_view": 0.04},
            },
        )
        jumps = _jump_table(
            stages,
            {
                "prospect": {"customer": 0.7, "lapsing": 0.3},
                "customer": {"lapsing": 1.0},
                "lapsing": {"customer": 0.6, "prospect": 0.4},
            },
        )
        dwell = np.array([40.0, 90.0, 60.0])
        sc = Scenario(
            name, stages, False, types, rates, np.array([1, 1, 1]), 1 / dwell, jumps,
            np.array([1.0, 0.0, 0.0]), np.array([0.006, 0.002, 0.01]), 0.0, 0.01,
            *lognormal_levels(0.5), flat_week, 0.0, 0, "page_view",
        )  # fmt: skip
        return sc, dwell
    if name in ("semimarkov5", "seasonal_heavytail"):
        stages = DEFAULT_STAGES
        types = (
            "ad_click", "page_view", "product_view", "search", "wishlist_add", "add_to_cart",
            "checkout_start", "purchase", "email_open", "review", "referral", "social_share",
        )  # fmt: skip
        rates = _rate_table(
            stages,
            types,
            {
                "awareness": {"ad_click": 0.1, "page_view": 0.4, "product_view": 0.05},
                "consideration": {
                    "page_view": 0.3,
                    "product_view": 0.35,
                    "search": 0.2,
                    "wishlist_add": 0.05,
                    "add_to_cart": 0.04,
                },
                "purchase": {
                    "product_view": 0.3,
                    "add_to_cart": 0.15,
                    "checkout_start": 0.1,
                    "purchase": 0.08,
                },
                "retention": {
                    "page_view": 0.15,
                    "product_view": 0.1,
                    "purchase": 0.03,
                    "email_open": 0.1,
                },
                "advocacy": {
                    "page_view": 0.15,
                    "purchase": 0.04,
                    "review": 0.03,
                    "referral": 0.02,
                    "social_share": 0.03,
                    "email_open": 0.08,
                },
            },
        )
        jumps = _jump_table(
            stages,
            {
                "awareness": {"consideration": 0.85, "purchase": 0.15},
                "consideration": {"purchase": 0.6, "awareness": 0.4},
                "purchase": {"retention": 0.85, "consideration": 0.15},
                "retention": {"advocacy": 0.4, "purchase": 0.6},
                "advocacy": {"retention": 1.0},
            },
        )
        dwell = np.array([25.0, 35.0, 15.0, 120.0, 150.0])
        if name == "semimarkov5":
            sc = Scenario(
                name, stages, True, types, rates, np.array([3, 2, 4, 2, 3]), 1 / dwell, jumps,
                np.array([0.9, 0.1, 0.0, 0.0, 0.0]), np.array([0.01, 0.008, 0.003, 0.004, 0.002]),
                0.0, 0.01, *lognormal_levels(0.8), flat_week, 0.0, 0, "ad_click",
            )  # fmt: skip
        else:
            weekly = np.array([0.85, 0.85, 0.9, 0.95, 1.1, 1.3, 1.05])
            sc = Scenario(
                name, stages, True, types, rates, np.array([1, 2, 1, 3, 1]), 1 / dwell, jumps,
                np.array([1.0, 0.0, 0.0, 0.0, 0.0]), np.array([0.008, 0.006, 0.004, 0.003, 0.002]),
                0.0, 0.02, *lognormal_levels(1.2), weekly / weekly.mean(), 0.35, 340, "ad_click",
            )  # fmt: skip
        sc = replace(sc, leave=sc.phases / dwell)
        return sc, dwell
    if name == "saas_reactivating":
        stages = ("trial", "onboarded", "power_user", "declining")
        types = (
            "login", "onboarding_step", "support_ticket", "survey_response", "email_open",
            "purchase", "content_view",
        )  # fmt: skip
        rates = _rate_table(
            stages,
            types,
            {
                "trial": {"login": 0.4, "onboarding_step": 0.3, "content_view": 0.15},
                "onboarded": {
                    "login": 0.45,
                    "onboarding_step": 0.05,
                    "support_ticket": 0.04,
                    "purchase": 0.033,
                    "content_view": 0.15,
                },
                "power_user": {
                    "login": 0.9,
                    "support_ticket": 0.06,
                    "purchase": 0.033,
                    "survey_response": 0.02,
                    "content_view": 0.3,
                },
                "declining": {
                    "login": 0.12,
                    "support_ticket": 0.05,
                    "email_open": 0.1,
                    "purchase": 0.02,
                },
            },
        )
        jumps = _jump_table(
            stages,
            {
                "trial": {"onboarded": 0.7, "declining": 0.3},
                "onboarded": {"power_user": 0.5, "declining": 0.5},
                "power_user": {"declining": 0.7, "onboarded": 0.3},
                "declining": {"onboarded": 0.5, "trial": 0.5},
            },
        )
        dwell = np.array([14.0, 60.0, 120.0, 45.0])
        phases = np.array([2, 2, 1, 1])
        sc = Scenario(
            name, stages, False, types, rates, phases, phases / dwell, jumps,
            np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.01, 0.004, 0.002, 0.012]), 0.01, 0.02,
            *lognormal_levels(0.7), np.array([1.1, 1.1, 1.1, 1.1, 1.05, 0.8, 0.75]), 0.0, 0,
            "login",
        )  # fmt: skip
        return replace(sc, weekly=sc.weekly / sc.weekly.mean()), dwell
    if name == "b2b_slow":
        stages = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")
        types = (
            "email_open", "email_click", "content_view", "newsletter_signup", "demo_request",
            "appointment_booked", "page_view", "purchase",
        )  # fmt: skip
        rates = _rate_table(
            stages,
            types,
            {
                "subscriber": {"email_open": 0.08, "page_view": 0.03},
                "lead": {"email_open": 0.12, "email_click": 0.03, "content_view": 0.04},
                "mql": {
                    "email_open": 0.15,
                    "email_click": 0.06,
                    "content_view": 0.08,
                    "page_view": 0.06,
                },
                "sql": {"email_click": 0.06, "demo_request": 0.02, "page_view": 0.08},
                "opportunity": {"appointment_booked": 0.04, "page_view": 0.1, "email_open": 0.1},
                "customer": {"purchase": 0.02, "page_view": 0.05, "email_open": 0.05},
            },
            floor=0.001,
        )
        jumps = _jump_table(
            stages,
            {
                "subscriber": {"lead": 1.0},
                "lead": {"mql": 0.7, "subscriber": 0.3},
                "mql": {"sql": 0.6, "lead": 0.4},
                "sql": {"opportunity": 0.7, "mql": 0.3},
                "opportunity": {"customer": 0.5, "sql": 0.5},
                "customer": {"opportunity": 1.0},
            },
        )
        dwell = np.array([60.0, 80.0, 60.0, 50.0, 40.0, 200.0])
        phases = np.array([1, 2, 2, 2, 1, 1])
        sc = Scenario(
            name, stages, False, types, rates, phases, phases / dwell, jumps,
            np.array([0.7, 0.3, 0.0, 0.0, 0.0, 0.0]),
            np.array([0.003, 0.003, 0.002, 0.002, 0.002, 0.001]), 0.004, 0.02,
            *lognormal_levels(1.0), np.array([1.2, 1.2, 1.2, 1.2, 1.1, 0.55, 0.55]), 0.2, 30,
            "newsletter_signup",
        )  # fmt: skip
        return replace(sc, weekly=sc.weekly / sc.weekly.mean()), dwell
    if name == "purchase_heavy":
        stages = DEFAULT_STAGES
        types = ("page_view", "product_view", "add_to_cart", "purchase", "refund", "review")
        rates = _rate_table(
            stages,
            types,
            {
                "awareness": {"page_view": 0.3, "product_view": 0.05},
                "consideration": {"product_view": 0.3, "add_to_cart": 0.05, "page_view": 0.1},
                "purchase": {"purchase": 0.15, "add_to_cart": 0.1, "product_view": 0.1},
                "retention": {"purchase": 0.06, "refund": 0.005},
                "advocacy": {"purchase": 0.1, "review": 0.02},
            },
        )
        jumps = _jump_table(
            stages,
            {
                "awareness": {"consideration": 1.0},
                "consideration": {"purchase": 0.7, "awareness": 0.3},
                "purchase": {"retention": 1.0},
                "retention": {"advocacy": 0.3, "purchase": 0.7},
                "advocacy": {"retention": 1.0},
            },
        )
        dwell = np.array([20.0, 25.0, 20.0, 100.0, 150.0])
        phases = np.array([1, 2, 2, 3, 2])
        sc = Scenario(
            name, stages, True, types, rates, phases, phases / dwell, jumps,
            np.array([1.0, 0.0, 0.0, 0.0, 0.0]), np.array([0.008, 0.006, 0.003, 0.004, 0.002]),
            0.0, 0.01, *lognormal_levels(0.9), flat_week, 0.25, 350, "page_view",
        )  # fmt: skip
        return sc, dwell
    raise ValueError(f"unknown scenario {name!r}; known scenarios are {', '.join(SCENARIOS)}")


#: Scenario names, each of a different structure.
SCENARIOS: tuple[str, ...] = (
    "markov3",
    "semimarkov5",
    "saas_reactivating",
    "seasonal_heavytail",
    "b2b_slow",
    "purchase_heavy",
)


def _stream(seed: int, name: str, purpose: int) -> np.random.Generator:
    # crc32, not hash(): Python's string hash changes from process to process
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), purpose]))


def make_scenario(name: str, seed: int | None = None) -> Scenario:
    """Scenario ``name``, its rates, dwell means and hazards jittered by ``seed``.

    Parameters
    ----------
    name
        One of :data:`SCENARIOS`.
    seed
        Every rate, dwell mean, dormancy hazard, reactivation probability and jump weight
        is multiplied by an independent log-uniform factor in [1/2, 2]; ``None`` returns
        the base parameters.

    Returns
    -------
    Scenario
    """
    sc, dwell = _base(name)
    if seed is None:
        return sc
    rng = _stream(seed, name, 0)

    def jitter(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) * np.exp(
            rng.uniform(np.log(0.5), np.log(2.0), size=np.shape(x))
        )

    dwell = np.maximum(jitter(dwell), sc.phases + 1.0)
    jumps = jitter(sc.jumps)
    return replace(
        sc,
        name=f"{name}-{seed}",
        rates=jitter(sc.rates),
        leave=sc.phases / dwell,
        jumps=jumps / jumps.sum(1, keepdims=True),
        dormancy=np.minimum(jitter(sc.dormancy), 0.05),
        reactivation=float(np.minimum(jitter(np.array(sc.reactivation)), 0.05)),
    )


def write_taxonomy(scenario: Scenario, directory: str | Path) -> Path | None:
    """Write the scenario's taxonomy YAML into ``directory``; ``None`` for the default one."""
    if scenario.default_taxonomy:
        return None
    path = Path(directory) / f"taxonomy-{scenario.name}.yaml"
    path.write_text("stages:\n" + "".join(f"  - name: {s}\n" for s in scenario.stages))
    return path


def season(scenario: Scenario, days: int) -> np.ndarray:
    """Rate multiplier of each day ``0..days-1`` (weekly x yearly)."""
    d = np.arange(days)
    doy = np.asarray((START + pd.to_timedelta(d, unit="D")).day_of_year)
    yearly = 1.0 + scenario.yearly_amplitude * np.cos(
        2 * np.pi * (doy - scenario.yearly_peak) / 365.25
    )
    return scenario.weekly[d % 7] * yearly


# -- the generator ---------------------------------------------------------------------


@dataclass
class Simulation:
    """Simulated customers: hidden paths and events (day resolution, plus a time of day).

    ``events`` columns: ``customer`` (index), ``day``, ``second`` (of the day), ``type``
    (index into ``scenario.event_types``), ``amount`` (NaN but for purchases); sorted by
    customer, then time.
    """

    scenario: Scenario
    seed: int
    arrival: np.ndarray  # (n,) arrival day
    level: np.ndarray  # (n,) activity level index
    stage: np.ndarray  # (n, days) int8 stage label per day (-1 before arrival)
    dormant: np.ndarray  # (n, days) bool
    events: pd.DataFrame

    @property
    def n(self) -> int:
        return len(self.arrival)

    @property
    def ids(self) -> np.ndarray:
        return np.asarray([f"c{i:06d}" for i in range(self.n)], dtype=object)

    def labels_at(self, day: int) -> np.ndarray:
        """Stage index on the last day before ``day`` (-1: not arrived before ``day``).

        A dormant customer keeps its stage, so this is also the true stage ``h`` days
        after a snapshot at ``day - h`` (``day`` up to the simulation's length).
        """
        if not 1 <= day <= self.stage.shape[1]:
            raise ValueError(f"day must be 1 to {self.stage.shape[1]} (the simulated days)")
        return self.stage[:, day - 1].astype(np.int64)

    def churned(self, day: int, horizon: int = HORIZON_DAYS) -> np.ndarray:
        """Whether each customer has no event in days ``[day, day + horizon)``."""
        ev = self.events
        inside = (ev["day"].to_numpy() >= day) & (ev["day"].to_numpy() < day + horizon)
        active = np.zeros(self.n, dtype=bool)
        active[ev["customer"].to_numpy()[inside]] = True
        return ~active

    def event_frame(self, customers: np.ndarray | None = None) -> pd.DataFrame:
        """Canonical columns ``customer_id, timestamp, event_type, amount`` of ``customers``."""
        ev = self.events
        if customers is not None:
            keep = np.zeros(self.n, dtype=bool)
            keep[customers] = True
            ev = ev[keep[ev["customer"].to_numpy()]]
        ns = (ev["day"].to_numpy() * 86_400 + ev["second"].to_numpy()).astype("int64")
        stamp = START + pd.to_timedelta(ns, unit="s")
        return pd.DataFrame(
            {
                CUSTOMER_ID: self.ids[ev["customer"].to_numpy()],
                TIMESTAMP: stamp,
                EVENT_TYPE: np.asarray(self.scenario.event_types, dtype=object)[
                    ev["type"].to_numpy()
                ],
                AMOUNT: ev["amount"].to_numpy(),
            }
        )


def simulate(
    scenario: Scenario,
    customers: int,
    seed: int,
    *,
    days: int = END_DAY,
    arrivals_until: int = T2_DAY,
) -> Simulation:
    """Simulate ``customers`` customers for ``days`` days.

    Parameters
    ----------
    scenario
        The journey model.
    customers
        Number of customers; arrival days are uniform on ``[0, arrivals_until)``.
    seed
        Seed of every draw: the same seed gives the same simulation.
    days
        Length of the simulation in days.
    arrivals_until
        First day on which no customer arrives.

    Returns
    -------
    Simulation
    """
    if customers < 1 or not 0 < arrivals_until <= days:
        raise ValueError("need at least one customer and 0 < arrivals_until <= days")
    rng = _stream(seed, scenario.name, 1)
    n, k = customers, len(scenario.stages)
    arrival = rng.integers(0, arrivals_until, size=n)
    level_idx = rng.choice(len(scenario.levels), size=n, p=scenario.level_weights)
    level = scenario.levels[level_idx]
    mult = season(scenario, days)
    total = scenario.rates.sum(1)  # (K,)
    type_cdf = np.cumsum(scenario.rates / total[:, None], axis=1)
    jump_cdf = np.cumsum(scenario.jumps, axis=1)
    init_cdf = np.cumsum(scenario.initial)
    acq = scenario.event_types.index(scenario.acquisition)

    stage = np.full(n, -1, dtype=np.int64)
    phase = np.zeros(n, dtype=np.int64)
    dormant = np.zeros(n, dtype=bool)
    stage_path = np.full((n, days), -1, dtype=np.int8)
    dormant_path = np.zeros((n, days), dtype=bool)
    chunks: list[tuple[np.ndarray, ...]] = []
    for d in range(days):
        # move the customers already here from day d-1 to day d
        here = np.flatnonzero(stage >= 0)
        u = rng.random((3, len(here)))
        s, dm = stage[here], dormant[here]
        wake = dm & (u[0] < scenario.reactivation)
        sleep = ~dm & (u[0] < scenario.dormancy[s])
        step = ~dm & ~sleep & (u[1] < scenario.leave[s])
        last = step & (phase[here] == scenario.phases[s] - 1)
        nxt = np.minimum((u[2][:, None] > jump_cdf[s]).sum(1), k - 1)
        phase[here] = np.where(wake | last, 0, phase[here] + (step & ~last))
        stage[here] = np.where(last, nxt, s)
        dormant[here] = (dm & ~wake) | sleep
        # arrivals of day d
        new = np.flatnonzero(arrival == d)
        stage[new] = np.minimum((rng.random(len(new))[:, None] > init_cdf).sum(1), k - 1)
        phase[new] = 0
        dormant[new] = False
        # events of day d
        here = np.flatnonzero(stage >= 0)
        s = stage[here]
        lam = total[s] * level[here] * mult[d] * np.where(dormant[here], scenario.dormant_factor, 1)
        count = rng.poisson(lam)
        who = np.repeat(here, count)
        n_types = len(scenario.event_types)
        typ = np.minimum((rng.random(len(who))[:, None] > type_cdf[stage[who]]).sum(1), n_types - 1)
        who = np.concatenate([who, new])
        typ = np.concatenate([typ, np.full(len(new), acq)])
        chunks.append((who, np.full(len(who), d), typ))
        stage_path[here, d] = stage[here]
        dormant_path[here, d] = dormant[here]

    who = np.concatenate([c[0] for c in chunks])
    day = np.concatenate([c[1] for c in chunks])
    typ = np.concatenate([c[2] for c in chunks])
    second = rng.integers(0, 86_400, size=len(who))
    is_purchase = np.asarray(scenario.event_types, dtype=object)[typ] == "purchase"
    amount = np.where(
        is_purchase, np.round(rng.lognormal(np.log(40.0), 0.7, size=len(who)), 2), np.nan
    )
    order = np.lexsort((second, day, who))
    events = pd.DataFrame(
        {"customer": who, "day": day, "second": second, "type": typ, "amount": amount}
    ).iloc[order]
    return Simulation(
        scenario, seed, arrival, level_idx, stage_path, dormant_path, events.reset_index(drop=True)
    )


# -- the oracle ------------------------------------------------------------------------


def expanded_chain(scenario: Scenario) -> dict[str, np.ndarray]:
    """The hidden chain over (stage, phase) states then one dormant state per stage.

    Returns
    -------
    dict
        ``stage`` and ``row`` of every state (``row``: the emission row, the stage for an
        active state, ``K + stage`` for a dormant one), the sparse daily transition
        ``src, dst, prob``, and ``init`` (the state distribution on the arrival day).
    """
    k = len(scenario.stages)
    first = np.concatenate([[0], np.cumsum(scenario.phases)[:-1]]).astype(np.int64)
    n_active = int(scenario.phases.sum())
    stage_of = np.concatenate([np.repeat(np.arange(k), scenario.phases), np.arange(k)]).astype(
        np.int64
    )
    row = np.concatenate([stage_of[:n_active], k + np.arange(k)]).astype(np.int64)
    src: list[int] = []
    dst: list[int] = []
    prob: list[float] = []

    def add(a: int, b: int, p: float) -> None:
        if p > 0:
            src.append(a)
            dst.append(b)
            prob.append(p)

    for s in range(k):
        h, q = float(scenario.dormancy[s]), float(scenario.leave[s])
        for j in range(int(scenario.phases[s])):
            a = int(first[s] + j)
            add(a, n_active + s, h)
            add(a, a, (1 - h) * (1 - q))
            if j < scenario.phases[s] - 1:
                add(a, a + 1, (1 - h) * q)
            else:
                for t in range(k):
                    add(a, int(first[t]), (1 - h) * q * float(scenario.jumps[s, t]))
        add(n_active + s, n_active + s, 1 - scenario.reactivation)
        add(n_active + s, int(first[s]), scenario.reactivation)
    init = np.zeros(n_active + k)
    init[first] = scenario.initial
    return {
        "stage": stage_of,
        "row": row,
        "src": np.asarray(src, dtype=np.int64),
        "dst": np.asarray(dst, dtype=np.int64),
        "prob": np.asarray(prob, dtype=np.float64),
        "init": init,
    }


@numba.njit(cache=True)
def _step(alpha, src, dst, prob):  # type: ignore[no-untyped-def]
    out = np.zeros_like(alpha)
    for e in range(src.shape[0]):
        a, b, p = src[e], dst[e], prob[e]
        for lv in range(alpha.shape[1]):
            out[b, lv] += alpha[a, lv] * p
    return out


@numba.njit(cache=True)
def _forward(  # type: ignore[no-untyped-def]
    ptr, ev_day, ev_type, ev_count, arrival, as_of, horizon, acq, init, row, stage_of, k,
    src, dst, prob, loglam, total, levels, level_w, mult,
):  # fmt: skip
    n = arrival.shape[0]
    n_states, n_levels = init.shape[0], levels.shape[0]
    post = np.full((n, k), np.nan)
    silent = np.full(n, np.nan)
    loglev = np.log(levels)
    ll = np.empty((n_states, n_levels))
    for i in range(n):
        if arrival[i] >= as_of[i]:
            continue
        alpha = np.empty((n_states, n_levels))
        for x in range(n_states):
            for lv in range(n_levels):
                alpha[x, lv] = init[x] * level_w[lv]
        e = ptr[i]
        for d in range(arrival[i], as_of[i]):
            if d > arrival[i]:
                alpha = _step(alpha, src, dst, prob)
            m = mult[d]
            for x in range(n_states):
                for lv in range(n_levels):
                    ll[x, lv] = -levels[lv] * m * total[row[x]]
            while e < ptr[i + 1] and ev_day[e] == d:
                c = ev_count[e] - (1 if (d == arrival[i] and ev_type[e] == acq) else 0)
                if c > 0:
                    for x in range(n_states):
                        for lv in range(n_levels):
                            ll[x, lv] += c * (loglam[row[x], ev_type[e]] + loglev[lv] + np.log(m))
                e += 1
            top = -np.inf
            for x in range(n_states):
                for lv in range(n_levels):
                    if alpha[x, lv] > 0 and ll[x, lv] > top:
                        top = ll[x, lv]
            norm = 0.0
            for x in range(n_states):
                for lv in range(n_levels):
                    alpha[x, lv] *= np.exp(ll[x, lv] - top)
                    norm += alpha[x, lv]
            alpha /= norm
        for s in range(k):
            post[i, s] = 0.0
        for x in range(n_states):
            for lv in range(n_levels):
                post[i, stage_of[x]] += alpha[x, lv]
        beta = alpha
        for h in range(horizon):
            beta = _step(beta, src, dst, prob)
            m = mult[as_of[i] + h]
            for x in range(n_states):
                for lv in range(n_levels):
                    beta[x, lv] *= np.exp(-levels[lv] * m * total[row[x]])
        silent[i] = beta.sum()
    return post, silent


def oracle_arrays(
    scenario: Scenario,
    day: np.ndarray,
    typ: np.ndarray,
    customer: np.ndarray,
    arrival: np.ndarray,
    as_of: np.ndarray,
    *,
    horizon: int = HORIZON_DAYS,
    states: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The exact filter on day-resolution events.

    Parameters
    ----------
    scenario
        The journey model the events came from.
    day, typ, customer
        One entry per event: its day, type index and customer index (``0..n-1``).
    arrival
        ``(n,)`` arrival day of each customer (its first event's day).
    as_of
        ``(n,)`` snapshot day of each customer: events of days ``< as_of`` are used.
    horizon
        Churn horizon in days.
    states
        Return the posterior over the states of :func:`expanded_chain` (summed over
        activity levels) instead of over the stages.

    Returns
    -------
    posterior, silent
        ``(n, K)`` posterior of the stage on day ``as_of - 1`` (``(n, n_states)`` with
        ``states``) and ``(n,)`` probability of no event in days
        ``[as_of, as_of + horizon)``; NaN for customers not arrived before ``as_of``.
    """
    n = len(arrival)
    chain = expanded_chain(scenario)
    # the kernel sums the filtered state into the classes of stage_of: identity keeps states
    stage_of = np.arange(scenario.n_states) if states else chain["stage"]
    classes = scenario.n_states if states else len(scenario.stages)
    keys = pd.DataFrame({"c": customer, "d": day, "t": typ})
    keys = keys[keys["d"].to_numpy() < as_of[keys["c"].to_numpy()]]
    agg = keys.groupby(["c", "d", "t"], sort=True).size().reset_index(name="n")
    ptr = np.searchsorted(agg["c"].to_numpy(), np.arange(n + 1)).astype(np.int64)
    rates = np.vstack([scenario.rates, scenario.dormant_factor * scenario.rates])
    need = int(np.max(as_of, initial=0)) + horizon
    return _forward(  # type: ignore[no-any-return]
        ptr,
        agg["d"].to_numpy(np.int64),
        agg["t"].to_numpy(np.int64),
        agg["n"].to_numpy(np.int64),
        np.asarray(arrival, dtype=np.int64),
        np.asarray(as_of, dtype=np.int64),
        horizon,
        scenario.event_types.index(scenario.acquisition),
        chain["init"],
        chain["row"],
        stage_of,
        classes,
        chain["src"],
        chain["dst"],
        chain["prob"],
        np.log(rates),
        rates.sum(1),
        np.asarray(scenario.levels, dtype=np.float64),
        np.asarray(scenario.level_weights, dtype=np.float64),
        season(scenario, need),
    )


def oracle(
    sim: Simulation, customers: np.ndarray, as_of_day: int, *, horizon: int = HORIZON_DAYS
) -> pd.DataFrame:
    """Oracle predictions for ``customers`` of ``sim`` at the start of day ``as_of_day``.

    Returns
    -------
    pandas.DataFrame
        ``customer_id, as_of, p_<stage>..., churn_probability``: the layout
        ``train(oracle_predictions=...)`` reads.
    """
    ev = sim.events
    as_of = np.full(sim.n, as_of_day, dtype=np.int64)
    post, silent = oracle_arrays(
        sim.scenario,
        ev["day"].to_numpy(),
        ev["type"].to_numpy(),
        ev["customer"].to_numpy(),
        sim.arrival,
        as_of,
        horizon=horizon,
    )
    out = pd.DataFrame(
        {CUSTOMER_ID: sim.ids[customers], "as_of": START + pd.Timedelta(days=as_of_day)}
    )
    for s, name in enumerate(sim.scenario.stages):
        out[f"p_{name}"] = post[customers, s]
    out["churn_probability"] = silent[customers]
    return out


def oracle_forecast(
    sim: Simulation, customers: np.ndarray, as_of_day: int, *, ahead: int = HORIZON_DAYS
) -> np.ndarray:
    """The oracle's exact stage forecast ``ahead`` days after a snapshot.

    The filtered distribution over the expanded states on day ``as_of_day - 1`` (events
    of days before ``as_of_day``) is carried ``ahead`` days with the daily transition
    matrix and summed by stage. Moves do not depend on the activity level, so the level
    is summed out first.

    Parameters
    ----------
    sim
        The simulation.
    customers
        Customer indices (rows of the result, in this order).
    as_of_day
        Snapshot day: events of days before it are read.
    ahead
        Days ahead; the forecast is of ``sim.labels_at(as_of_day + ahead)``.

    Returns
    -------
    numpy.ndarray
        ``(len(customers), K)``: probability of each stage on day
        ``as_of_day + ahead - 1``; NaN rows for customers not arrived before ``as_of_day``.
    """
    if ahead < 0:
        raise ValueError("ahead must be at least 0 days")
    sc = sim.scenario
    ev = sim.events
    # customers not asked for get as_of 0, which the kernel skips (nobody arrives before it)
    as_of = np.zeros(sim.n, dtype=np.int64)
    as_of[customers] = as_of_day
    post, _ = oracle_arrays(
        sc,
        ev["day"].to_numpy(),
        ev["type"].to_numpy(),
        ev["customer"].to_numpy(),
        sim.arrival,
        as_of,
        horizon=0,
        states=True,
    )
    chain = expanded_chain(sc)
    step = np.zeros((sc.n_states, sc.n_states))
    np.add.at(step, (chain["src"], chain["dst"]), chain["prob"])
    to_stage = np.eye(len(sc.stages))[chain["stage"]]
    return np.asarray(post[customers] @ np.linalg.matrix_power(step, ahead) @ to_stage)
