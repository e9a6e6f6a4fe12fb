"""Run the API under uvicorn, in one process or several, with a drain period on SIGTERM.

On SIGTERM the app reports not-ready at once (``/readyz`` 503) and keeps serving for
``shutdown_delay_seconds``, so a load balancer stops routing to it; then uvicorn's
graceful shutdown closes the listener and waits for in-flight requests to finish.

With ``workers > 1``, uvicorn's own supervisor (:class:`uvicorn.supervisors.Multiprocess`,
what ``uvicorn --workers`` runs) binds the socket in this process, spawns the workers,
restarts one that dies and, on SIGINT or SIGTERM, sends SIGTERM to each and waits for
them. Each worker builds its own app, and so loads its own model, from the settings
resolved here: they reach it pickled through multiprocessing's pipe, never on a command
line or in a log.

The workers write their Prometheus metrics to files in a private temporary directory that
the supervisor makes (and removes when it exits), so that ``/metrics`` of any worker
reports all of them (see :mod:`serving.metrics`).

Exit status, in one process as with workers: 0 once a SIGTERM or SIGINT has stopped the
server (uvicorn's own single-process server would raise the signal again and die of
it); 3 when the workers cannot start. A model that cannot be loaded never stops the
server: it serves without one (503) until a valid version is promoted
(:mod:`serving.registry`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from customer_lifecycle.serving.logs import configure_logging
from customer_lifecycle.serving.metrics import MULTIPROC_DIR_ENV
from customer_lifecycle.serving.settings import Settings
from prometheus_client.multiprocess import mark_process_dead
from uvicorn.config import STARTUP_FAILURE
from uvicorn.server import HANDLED_SIGNALS
from uvicorn.supervisors import Multiprocess

if TYPE_CHECKING:
    from customer_lifecycle.serving.routes.deps import ServerState
    from fastapi import FastAPI

# serving.app (FastAPI, the scoring code) is imported where it is used: a worker unpickles
# this module before it answers the supervisor's first health check (within 5 s of its
# start), and importing the app takes seconds on a busy machine.

log = logging.getLogger(__name__)

_UVICORN: dict[str, Any] = {
    "access_log": False,  # the app logs each request itself, as JSON with its id
    "log_config": None,
    "timeout_graceful_shutdown": 30,
    "lifespan": "on",
}

SignalHandler = Callable[[int, FrameType | None], Any]


class _Drain:
    """A SIGINT/SIGTERM handler: not ready at once, ``stop`` after the delay on SIGTERM.

    ``stop`` is uvicorn's own exit handler; a second SIGTERM, or SIGINT, calls it at once.
    """

    def __init__(self, state: ServerState, stop: SignalHandler) -> None:
        self._state = state
        self._stop = stop
        self._timer: threading.Timer | None = None

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True  # readiness turns 503 before anything else
        delay = self._state.settings.shutdown_delay_seconds
        if sig == signal.SIGTERM and delay > 0 and self._timer is None:
            self._timer = threading.Timer(delay, self._stop, (sig, frame))
            self._timer.daemon = True
            self._timer.start()
            return
        self._stop(sig, frame)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._drain = _Drain(state, super().handle_exit)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._drain(sig, frame)

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's, except that the signal is not raised again once the server stopped.

        uvicorn restores the previous handlers, then raises the signal that stopped it
        once more, so that the process ends as the signal's default action would: killed
        by SIGTERM (status 143 in a shell), or KeyboardInterrupt on SIGINT. Here the
        signal asked for a graceful stop and got one: the process exits 0, as the
        supervisor of several workers does.
        """
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled on the main thread
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class _Supervisor(Multiprocess):
    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], metrics_dir: str
    ) -> None:
        super().__init__(config, sockets)
        self._metrics_dir = metrics_dir

    # uvicorn replaces a worker in these two (one that died; all on SIGHUP, one fewer on
    # SIGTTOU) and has no hook for it: compare the workers before and after instead.
    def keep_subprocess_alive(self) -> None:
        with self._forget_replaced_workers():
            super().keep_subprocess_alive()

    def handle_signals(self) -> None:
        with self._forget_replaced_workers():
            super().handle_signals()

    @contextmanager
    def _forget_replaced_workers(self) -> Iterator[None]:
        before = {p.pid for p in self.processes}
        try:
            yield
        finally:
            for pid in before - {p.pid for p in self.processes}:
                if pid is not None:  # drop its `live` gauges; its counters still count
                    mark_process_dead(pid, self._metrics_dir)

    def terminate_all(self) -> None:
        # Let go of the listening socket before the workers drain: the port then closes
        # when the last worker stops listening, instead of queueing connections nobody
        # will accept until this process exits. The workers hold their own copies.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def run(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve until SIGINT or SIGTERM (blocking).

    Parameters
    ----------
    workers
        Server processes. With 1 the server runs in this process; with more, this
        process supervises that many workers, each with its own copy of the model.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    configure_logging(settings.log_level)
    if workers > 1:
        _run_workers(settings, host=host, port=port, workers=workers)
        return
    from customer_lifecycle.serving.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=host, port=port, **_UVICORN)
    _DrainingServer(config, app.state.server).run()


def _run_workers(settings: Settings, *, host: str, port: int, workers: int) -> None:
    # As uvicorn.main.run does for workers > 1, with an app factory in place of an import
    # string: a picklable partial carries the settings to each spawned worker.
    config = uvicorn.Config(
        partial(_worker_app, settings),
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **_UVICORN,
    )
    sock = config.bind_socket()
    try:
        with _metrics_dir() as metrics_dir:
            supervisor = _Supervisor(config, [sock], metrics_dir)
            supervisor.run()
    finally:
        sock.close()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        # the supervisor stops when a worker fails to start; say so, as one process would
        sys.exit(STARTUP_FAILURE)


@contextmanager
def _metrics_dir() -> Iterator[str]:
    """A new private directory (mode 0700) for the workers' metric files, removed on exit.

    It reaches the workers in their environment, which they inherit when spawned: it
    must be there before prometheus_client is imported (see :mod:`serving.metrics`).
    """
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="lifecycle-metrics-") as path:
        os.environ[MULTIPROC_DIR_ENV] = path
        try:
            yield path
        finally:
            if previous is None:
                del os.environ[MULTIPROC_DIR_ENV]
            else:
                os.environ[MULTIPROC_DIR_ENV] = previous


def _worker_app(settings: Settings) -> FastAPI:
    """The app of one worker process: uvicorn calls this factory in the worker.

    uvicorn's supervisor runs a plain :class:`uvicorn.Server` in each worker (it has no
    hook for a subclass such as :class:`_DrainingServer`) and calls the factory inside
    ``Server.serve``, once the server has installed its SIGINT/SIGTERM handler: the
    drain is put in front of that handler here. Any error exits with uvicorn's
    startup-failure status, which stops the supervisor, rather than an ordinary crash,
    after which it would respawn a worker failing the same way, forever.
    """
    configure_logging(settings.log_level)
    # uvicorn turned its access log off in this process before this ran (access_log=False):
    # keep it off, as configure_logging has just let it propagate to our handler again.
    logging.getLogger("uvicorn.access").propagate = False
    try:
        from customer_lifecycle.serving.app import create_app

        app = create_app(settings)
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop) or not isinstance(getattr(stop, "__self__", None), uvicorn.Server):
            raise RuntimeError(f"SIGTERM is not handled by uvicorn's server ({stop!r})")
        drain = _Drain(app.state.server, stop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, drain)
    except Exception as exc:
        expected = isinstance(exc, ValueError | OSError)
        log.error("worker failed to start: %s", exc, exc_info=not expected)
        sys.exit(STARTUP_FAILURE)
    return app
