"""Run the API under uvicorn, with a drain period on SIGTERM.

On SIGTERM the app reports not-ready at once (``/readyz`` 503) and keeps serving for
``shutdown_delay_seconds``, so a load balancer stops routing to it; then uvicorn's
graceful shutdown closes the listener and waits for in-flight requests to finish.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn

from serving.app import ServerState, create_app
from serving.logs import configure_logging
from serving.settings import Settings


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._draining_since: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._state.draining = True  # readiness turns 503 before anything else
        delay = self._state.settings.shutdown_delay_seconds
        if sig == signal.SIGTERM and delay > 0 and self._draining_since is None:
            timer = threading.Timer(delay, super().handle_exit, (sig, frame))
            timer.daemon = True
            self._draining_since = timer
            timer.start()
            return
        super().handle_exit(sig, frame)


def run(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGINT or SIGTERM (blocking)."""
    configure_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # the app logs each request itself, as JSON with its id
        log_config=None,
        timeout_graceful_shutdown=30,
        lifespan="on",
    )
    _DrainingServer(config, app.state.server).run()
