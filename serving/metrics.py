"""Prometheus metrics of one app instance (its own registry: no process-wide state).

Under ``lifecycle serve --workers N`` (N > 1) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``
before it spawns the workers, so prometheus_client, imported after, keeps every value in
a file of that directory, one set of files per worker process. ``render`` then reads all
of them: each scrape reports the whole server, whichever worker answers. Counters and
histograms are summed over the workers (including those that have died and been
replaced, so totals never go back); each gauge says how it combines.
"""

from __future__ import annotations

import os
from typing import get_args

from customer_lifecycle.scoring.check import Reason
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The directory of the workers' metric files, as prometheus_client names it.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Latency buckets (seconds), dense around the 2 ms / 10 ms targets.
BUCKETS = (
    0.0005,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class Metrics:
    """Request counts, latency, in-flight requests, scored customers and the model version."""

    def __init__(self) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_ENV) or None
        if self.multiprocess_dir and not getattr(values.ValueClass, "_multiprocess", True):
            # prometheus_client picks where values live when it is first imported
            raise RuntimeError(f"prometheus_client was imported before {MULTIPROC_DIR_ENV} was set")
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "lifecycle_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lifecycle_http_request_duration_seconds",
            "Time from the request's arrival to the last byte of the response, by route.",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "lifecycle_http_requests_in_flight",
            "Scoring requests in progress.",
            multiprocess_mode="livesum",  # of the workers running now
            registry=self.registry,
        )
        self.customers = Counter(
            "lifecycle_customers_scored",
            "Customers scored, by endpoint.",
            ["endpoint"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "lifecycle_model_info",
            "The model being served (value 1), by name and version.",
            ["name", "version"],
            # Per worker (a `pid` label is added): the workers load and swap models on
            # their own, so during a promotion they may differ, and a sum, min or max
            # would hide which one lags. `live`: a dead worker's series go with it.
            multiprocess_mode="liveall",
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "lifecycle_model_loaded_timestamp_seconds",
            "When the served model was loaded (Unix time).",
            multiprocess_mode="liveall",  # per worker, as lifecycle_model_info
            registry=self.registry,
        )
        self.reloads = Counter(
            "lifecycle_model_reloads",
            "Model reload attempts by outcome (swapped, unchanged, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "lifecycle_model_reload_failures",
            "Reloads that left the served model in place, by reason: the version's files "
            "were refused (invalid), crashed or outran the check (crashed, timeout), could "
            "not be fetched (unavailable), the URI named no model (unresolvable), or any "
            "other error (error).",
            ["reason"],
            registry=self.registry,
        )
        for reason in get_args(Reason):  # every series from the start, at 0
            self.reload_failures.labels(reason)
        self._model: tuple[str, str] | None = None

    def set_model(self, name: str, version: str, loaded_at: float) -> None:
        """Point ``lifecycle_model_info`` at the new model."""
        if self._model is not None and self._model != (name, version):
            if self.multiprocess_dir is None:
                self.model_info.remove(*self._model)
            else:  # a worker's file keeps every series it has written: zero the old one
                self.model_info.labels(*self._model).set(0)
        self._model = (name, version)
        self.model_info.labels(name, version).set(1)
        self.model_loaded.set(loaded_at)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (of every worker, if several)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()  # read afresh from the files at every scrape
        MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)
