"""Which model is served: resolving a model URI to a version, checking and loading it,
hot swapping it, and refusing a version that must not be served.

:class:`ModelHolder` keeps one reference to the current :class:`ServedModel`. A reload
resolves the URI (``models:/NAME@champion`` -> a version), fetches the version's files
once, checks them in a short-lived child process
(:func:`~customer_lifecycle.scoring.check.check_in_subprocess`), then loads, precomputes
and warms up the model completely in a worker thread, and only then replaces the
reference: one assignment, atomic for every reader. Requests read the reference once, so
each response comes from exactly one model.

A version that fails any step is refused: the current model keeps serving, one log line
says why (no traceback), ``lifecycle_model_reload_failures_total{reason}`` counts it, and
:attr:`ModelHolder.refused` keeps it for ``GET /v1/model``. The poller does not try a
refused version again (a version's files do not change); ``POST /v1/admin/reload`` does.
Failures to reach the registry or the files are retried at every poll, logged once
while they stay the same.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from customer_lifecycle.features.messages import one_line
from customer_lifecycle.scoring.bundle import BUNDLE_FILE, ModelBundle
from customer_lifecycle.scoring.check import (
    CHECK_TIMEOUT_SECONDS,
    ModelRefused,
    Reason,
    check_in_subprocess,
)
from customer_lifecycle.scoring.pyfunc import default_tracking_uri, load_bundle
from customer_lifecycle.serving.metrics import Metrics
from customer_lifecycle.serving.playbook import Playbook
from customer_lifecycle.serving.predict import ReasonsMethod, ServedModel
from customer_lifecycle.serving.schemas import CustomerEvents, Event

log = logging.getLogger(__name__)

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
#: Failures that may pass by themselves (the registry or the artifact store unreachable):
#: the poller tries again. Any other refusal is of the version's files, which do not change.
_TRANSIENT: frozenset[Reason] = frozenset({"unresolvable", "unavailable"})


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


@contextmanager
def fetched(load_uri: str) -> Iterator[Path]:
    """The model's files in a local directory, for as long as the context lasts.

    A directory is used in place; anything else is downloaded once into a private
    temporary directory (the artifact store is only read), so that the files checked
    are the files loaded. Raises :class:`ModelRefused` (``unavailable``).
    """
    path = Path(load_uri)
    if path.is_dir():
        yield path
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(default_tracking_uri())
    with tempfile.TemporaryDirectory(prefix="lifecycle-model-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=load_uri, dst_path=tmp)
        except MlflowException as exc:
            message = exc.message.strip().splitlines()[0] if exc.message.strip() else "failed"
            raise ModelRefused("unavailable", f"cannot fetch {load_uri}: {message}") from None
        except OSError as exc:
            raise ModelRefused("unavailable", f"cannot fetch {load_uri}: {exc}") from None
        yield Path(local)


def load_served_model(
    uri: str,
    ref: ModelRef,
    *,
    playbook: Playbook,
    reasons: int,
    reasons_method: ReasonsMethod = "path",
    check_timeout: float = CHECK_TIMEOUT_SECONDS,
) -> ServedModel:
    """Fetch, check (in a child process), load, precompute and warm up ``ref`` (blocking).

    Raises :class:`ModelRefused` or ``ValueError`` (one line) when the model is refused.
    """
    with fetched(ref.load_uri) as local:
        try:
            digest = _digest(local)
            if digest not in _SOUND:
                check_in_subprocess(local, timeout=check_timeout)
                _remember_sound(digest)
            bundle: ModelBundle = load_bundle(local)
        except ValueError as exc:  # name the model, not the temporary copy of its files
            text = one_line(exc).replace(str(local), ref.load_uri)
            if isinstance(exc, ModelRefused):
                raise ModelRefused(exc.reason, text) from None
            raise ValueError(text) from None
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


#: Digests of model files that passed the child check in this process. The verdict is a
#: function of the files' bytes, so the same files loaded again (a bundle directory at
#: every poll, a version promoted back, another app in the same process) are not checked
#: again. Only sound models are remembered, and only a few.
_SOUND: OrderedDict[str, None] = OrderedDict()
_SOUND_KEPT = 8


def _remember_sound(digest: str) -> None:
    _SOUND[digest] = None
    while len(_SOUND) > _SOUND_KEPT:
        _SOUND.popitem(last=False)


def _digest(directory: Path) -> str:
    """SHA-256 over the relative path and the SHA-256 of every file under ``directory``."""
    sha = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        with file.open("rb") as f:
            content = hashlib.file_digest(f, "sha256").digest()
        sha.update(str(file.relative_to(directory)).encode() + b"\0" + content)
    return sha.hexdigest()


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


@dataclass(frozen=True)
class Refusal:
    """A model the holder refused to serve, and why."""

    uri: str
    version: str | None  # None when the URI could not be resolved to a version
    reason: Reason
    error: str  # one line
    refused_at: datetime

    def same_failure(self, other: Refusal | None) -> bool:
        return other is not None and (self.uri, self.version, self.reason, self.error) == (
            other.uri,
            other.version,
            other.reason,
            other.error,
        )


class ReloadFailed(ValueError):
    """A reload that left the current model in place; ``refusal`` says why."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.error)
        self.refusal = refusal


class ModelHolder:
    """The current model and the logic to replace it.

    Parameters
    ----------
    uri
        What to serve; ``None`` serves nothing (every scoring request gets 503).
    loader
        ``loader(uri, ref) -> ServedModel``, blocking; run in a worker thread. Whatever
        it raises refuses the model.
    metrics
        Updated on every swap and reload attempt.
    """

    def __init__(self, uri: str | None, loader: Loader, metrics: Metrics) -> None:
        self.uri = uri
        self.current: ServedModel | None = None
        #: The last model refused (kept after a later success, for ``GET /v1/model``).
        self.refused: Refusal | None = None
        self._loader = loader
        self._metrics = metrics
        self._lock = asyncio.Lock()

    async def reload(self, *, retry_refused: bool = True) -> ReloadOutcome:
        """Load the model the URI points at now, if it differs from the current one.

        A URI whose version cannot be known without loading (a bundle directory) is
        always reloaded. With ``retry_refused=False`` (the poller), a version refused
        before for its files is left alone, silently. Raises :class:`ReloadFailed` when
        resolving, fetching, checking or loading fails, after logging it (once while the
        same failure repeats) and counting it; the current model then stays in place.
        """
        if self.uri is None:
            raise ValueError("no model URI is configured (LIFECYCLE_MODEL_URI)")
        uri = self.uri
        async with self._lock:
            previous = self.current
            before = None if previous is None else previous.version
            ref: ModelRef | None = None
            try:
                try:
                    ref = await asyncio.to_thread(resolve, uri)
                except ValueError as exc:
                    raise ModelRefused("unresolvable", one_line(exc)) from None
                if previous is not None and ref.version is not None and ref.version == before:
                    self._metrics.reloads.labels("unchanged").inc()
                    return ReloadOutcome(False, before, before)
                if not retry_refused and self._known_bad(uri, ref):
                    self._metrics.reloads.labels("unchanged").inc()
                    return ReloadOutcome(False, before, before)
                model = await asyncio.to_thread(self._loader, uri, ref)
            except (Exception, SystemExit) as exc:  # whatever a model makes the loader raise
                raise self._refuse(uri, ref, exc) from None
            self.current = model  # the swap: one reference assignment
            self._metrics.set_model(model.name, model.version, model.loaded_at.timestamp())
            self._metrics.reloads.labels("swapped").inc()
            log.info(
                "model loaded",
                extra={"model_name": model.name, "model_version": model.version, "uri": uri},
            )
            return ReloadOutcome(model.version != before, before, model.version)

    def _known_bad(self, uri: str, ref: ModelRef) -> bool:
        refused = self.refused
        return (
            refused is not None
            and ref.version is not None
            and (refused.uri, refused.version) == (uri, ref.version)
            and refused.reason not in _TRANSIENT
        )

    def _refuse(self, uri: str, ref: ModelRef | None, exc: BaseException) -> ReloadFailed:
        """Record, count and log (once while it repeats) a failed reload."""
        if isinstance(exc, ModelRefused):
            reason: Reason = exc.reason
        elif isinstance(exc, ValueError):
            reason = "invalid"
        else:
            reason = "error"
        error = one_line(exc)
        if reason == "error":
            error = f"{type(exc).__name__}: {error}"
        refusal = Refusal(
            uri=uri,
            version=None if ref is None else ref.version,
            reason=reason,
            error=error,
            refused_at=datetime.now(UTC),
        )
        repeated = refusal.same_failure(self.refused)
        self.refused = refusal
        self._metrics.reloads.labels("failed").inc()
        self._metrics.reload_failures.labels(reason).inc()
        if not repeated:
            serving = self.current
            log.error(
                "model refused",
                extra={
                    "uri": uri,
                    "refused_version": refusal.version,
                    "reason": reason,
                    "error": error,
                    "serving_version": None if serving is None else serving.version,
                },
            )
        return ReloadFailed(refusal)

    async def try_reload(self) -> None:
        """:meth:`reload` as the poller and the startup do it: a failure is not raised
        (it is logged and counted), and a version already refused is not tried again."""
        try:
            await self.reload(retry_refused=False)
        except ReloadFailed:
            pass  # logged once and counted by reload; the current model keeps serving
        except ValueError as exc:  # no URI configured
            log.error("model reload failed", extra={"uri": self.uri, "error": one_line(exc)})

    async def poll(self, interval: float) -> None:
        """Reload every ``interval`` seconds, forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(interval)
            await self.try_reload()
