"""Which model is served: resolving a model URI to a version, loading it, hot swapping it.

:class:`ModelHolder` keeps one reference to the current :class:`ServedModel`. A reload
resolves the URI (``models:/NAME@champion`` -> a version), loads and warms the new
model completely in a worker thread, and only then replaces the reference: one
assignment, atomic for every reader. Requests read the reference once, so each
response comes from exactly one model.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from customer_lifecycle.features.messages import one_line
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, ModelBundle
from customer_lifecycle.scoring.pyfunc import default_tracking_uri, load_bundle
from customer_lifecycle.serving.metrics import Metrics
from customer_lifecycle.serving.playbook import Playbook
from customer_lifecycle.serving.predict import ReasonsMethod, ServedModel
from customer_lifecycle.serving.schemas import CustomerEvents, Event

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelRef:
    """A concrete model to load: what to pass to the loader, and how to call it."""

    load_uri: str
    name: str
    version: str | None  # None: unknown until loaded (a directory or another URI form)


def resolve(uri: str) -> ModelRef:
    """Resolve ``uri`` to a concrete version, asking the registry for aliases.

    ``models:/NAME@ALIAS`` becomes ``models:/NAME/VERSION`` so that the version reported
    is exactly the one loaded, even if the alias moves meanwhile.
    """
    if (m := _ALIAS.match(uri)) is not None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        name, alias = m["name"], m["alias"]
        try:
            mv = MlflowClient(tracking_uri=default_tracking_uri()).get_model_version_by_alias(
                name, alias
            )
        except MlflowException as exc:
            raise ValueError(f"cannot resolve {uri}: {exc.message.splitlines()[0]}") from None
        return ModelRef(f"models:/{name}/{mv.version}", name, str(mv.version))
    if (m := _VERSION.match(uri)) is not None:
        return ModelRef(uri, m["name"], m["version"])
    path = Path(uri)
    if (path / BUNDLE_FILE).is_file():
        return ModelRef(uri, path.resolve().name, None)
    return ModelRef(uri, uri, None)


def load_served_model(
    uri: str,
    ref: ModelRef,
    *,
    playbook: Playbook,
    reasons: int,
    reasons_method: ReasonsMethod = "path",
) -> ServedModel:
    """Load, precompute and warm up the model ``ref`` points at (blocking)."""
    bundle: ModelBundle = load_bundle(ref.load_uri)
    version = ref.version or str(bundle.metadata.get("run_id") or "local")
    model = ServedModel.build(
        bundle,
        name=ref.name,
        version=version,
        uri=uri,
        playbook=playbook,
        reasons=reasons,
        reasons_method=reasons_method,
    )
    _warm_up(model)
    return model


def _warm_up(model: ServedModel) -> None:
    """Score a made-up customer once, so the first real request pays no first-call costs."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    events = [
        Event.model_construct(
            timestamp=t0 + timedelta(days=d), event_type=kind, amount=amount, channel=None
        )
        for d, kind, amount in [(0, "page_view", None), (3, "purchase", 10.0), (9, "login", None)]
    ]
    customer = CustomerEvents.model_construct(customer_id="warm-up", events=events)
    model.score_events([customer], t0 + timedelta(days=30))


Loader = Callable[[str, ModelRef], ServedModel]


@dataclass(frozen=True)
class ReloadOutcome:
    changed: bool
    previous_version: str | None
    version: str | None


class ModelHolder:
    """The current model and the logic to replace it.

    Parameters
    ----------
    uri
        What to serve; ``None`` serves nothing (every scoring request gets 503).
    loader
        ``loader(uri, ref) -> ServedModel``, blocking; run in a worker thread.
    metrics
        Updated on every swap and reload attempt.
    """

    def __init__(self, uri: str | None, loader: Loader, metrics: Metrics) -> None:
        self.uri = uri
        self.current: ServedModel | None = None
        self._loader = loader
        self._metrics = metrics
        self._lock = asyncio.Lock()

    async def reload(self) -> ReloadOutcome:
        """Load the model the URI points at now, if it differs from the current one.

        A URI whose version cannot be known without loading (a bundle directory) is
        always reloaded. Raises ``ValueError`` when resolving or loading fails; the
        current model then stays in place.
        """
        if self.uri is None:
            raise ValueError("no model URI is configured (LIFECYCLE_MODEL_URI)")
        uri = self.uri
        async with self._lock:
            previous = self.current
            before = None if previous is None else previous.version
            try:
                ref = await asyncio.to_thread(resolve, uri)
                if previous is not None and ref.version is not None and ref.version == before:
                    self._metrics.reloads.labels("unchanged").inc()
                    return ReloadOutcome(False, before, before)
                model = await asyncio.to_thread(self._loader, uri, ref)
            except Exception:
                self._metrics.reloads.labels("failed").inc()
                raise
            self.current = model  # the swap: one reference assignment
            self._metrics.set_model(model.name, model.version, model.loaded_at.timestamp())
            self._metrics.reloads.labels("swapped").inc()
            log.info(
                "model loaded",
                extra={"model_name": model.name, "model_version": model.version, "uri": uri},
            )
            return ReloadOutcome(model.version != before, before, model.version)

    async def try_reload(self) -> None:
        """:meth:`reload`, logging a failure instead of raising it."""
        try:
            await self.reload()
        except Exception as exc:  # keep serving the current model whatever went wrong
            log.error(
                "model reload failed",
                extra={"uri": self.uri, "error": one_line(exc), "error_type": type(exc).__name__},
            )

    async def poll(self, interval: float) -> None:
        """Reload every ``interval`` seconds, forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            await self.try_reload()
