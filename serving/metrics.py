"""Prometheus metrics of one app instance (its own registry: no process-wide state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
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
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "lifecycle_model_loaded_timestamp_seconds",
            "When the served model was loaded (Unix time).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "lifecycle_model_reloads",
            "Model reload attempts by outcome (swapped, unchanged, failed).",
            ["outcome"],
            registry=self.registry,
        )
        self._model: tuple[str, str] | None = None

    def set_model(self, name: str, version: str, loaded_at: float) -> None:
        """Point ``lifecycle_model_info`` at the new model."""
        if self._model is not None:
            self.model_info.remove(*self._model)
        self._model = (name, version)
        self.model_info.labels(name, version).set(1)
        self.model_loaded.set(loaded_at)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
