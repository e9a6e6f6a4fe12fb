"""The registered boosters' final fit, overlapped with cross-fitting in a worker process.

Both heads end with a booster fitted on every labelled row for the number of rounds
their folds chose (:mod:`customer_lifecycle.training.models`). Done one after the
other, that final fit waits for the folds and doubles the training time. It need not
wait: a LightGBM booster's first ``R`` rounds do not depend on how many rounds follow
(the learning rate is constant, and bagging and feature sampling draw from the seed
round by round), so the final fit can start at once, run on in a second process while
the folds train here, stop when it is told ``R``, and keep its first ``R`` rounds. The
result is the booster that ``fit_rounds(params, X, y, R)`` gives, to the last bit
(tests/training/test_refit.py).

Why a process and not a thread: two ``lightgbm.Dataset`` constructions at the same time
in one process crash it (``LGBM_DatasetCreateFromMat``). Each process trains on one core,
as every booster here does (``num_threads=1``).

Nothing is lost if the worker cannot run or dies: the final fits are then done here,
after the folds, and :attr:`FinalFits.fallback` says why.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
from customer_lifecycle.training.averaging import average_boosters

# Below this many rows the final fits are short and starting a worker (a fresh
# interpreter importing LightGBM, about a second of the other core) costs about as much
# as it saves: "auto" fits them here.
AUTO_MIN_ROWS = 5_000
WORKER_MODES = ("auto", "always", "never")

# the worker's message telling it to stop
_STOP = None


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_worker(mode: str, rows: int) -> bool:
    """Whether ``mode`` (``auto``, ``always``, ``never``) fits ``rows`` rows in a worker.

    ``auto`` uses one with at least two cores and :data:`AUTO_MIN_ROWS` rows.

    Raises
    ------
    ValueError
        For an unknown mode.
    """
    if mode not in WORKER_MODES:
        raise ValueError(f"refit worker must be one of {', '.join(WORKER_MODES)}, not {mode!r}")
    if mode == "auto":
        return available_cores() >= 2 and rows >= AUTO_MIN_ROWS
    return mode == "always"


def final_names(head: str, seeds: int) -> tuple[str, ...]:
    """Names of a head's ``seeds`` final fits in :class:`FinalFits` (``stage/0``, ...)."""
    return tuple(f"{head}/{i}" for i in range(seeds))


def fit_rounds(params: dict[str, Any], X: np.ndarray, y: np.ndarray, rounds: int) -> lgb.Booster:
    """A booster on every given row for exactly ``rounds`` rounds (no early stopping).

    ``params`` are used as given (the caller sets ``num_threads``).
    """
    train = lgb.Dataset(X, label=y, free_raw_data=True)
    return lgb.train(params, train, num_boost_round=rounds)


class FinalFits:
    """Final boosters on every row of ``X``, in a worker process or here.

    Use as a context manager::

        with FinalFits(X_all, ("stage", "churn"), parallel=True) as final:
            final.submit("stage", params, y, max_rounds)   # starts at once in the worker
            ...cross-fit the stage head...
            final.stop_at("stage", rounds)                  # the worker keeps R rounds
            booster = final.booster("stage")                # waits for it

    Parameters
    ----------
    X
        Every labelled row: the final boosters' features. A fit whose targets are
        shorter than ``X`` uses its first ``len(y)`` rows (the churn head may have
        more rows than the stage head: earlier snapshots follow the labelled ones).
    names
        The fits to expect, in the order they are submitted (the worker fits them in
        that order, one at a time).
    parallel
        Fit in a worker process; ``False`` fits each booster here when
        :meth:`booster` asks for it, exactly as :func:`fit_rounds` does.
    """

    def __init__(self, X: np.ndarray, names: tuple[str, ...], *, parallel: bool) -> None:
        self._X = X
        self._names = names
        self._jobs: dict[str, tuple[dict[str, Any], np.ndarray, int]] = {}
        self._rounds: dict[str, int] = {}
        self._done: dict[str, str] = {}  # name -> model text from the worker
        # what the reader thread received: name -> (model text, error); it drains the
        # pipe at once, so a finished fit never waits for this process to ask for it
        self._inbox: dict[str, tuple[str | None, str | None]] = {}
        self._worker_gone = False
        self._arrived = threading.Condition()
        self._reader: threading.Thread | None = None
        self.fallback: str | None = None  # why the worker was given up, if it was
        self._process: Any = None
        self._conn: Connection | None = None
        self._stops: Any = None
        self._files: list[Path] = []  # arrays spilled for the worker
        if parallel:
            self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds OpenMP threads
        self._stops = ctx.Array("i", len(self._names), lock=False)
        parent, child = ctx.Pipe()
        try:
            # The features go through a temporary file the worker maps: pickled into its
            # arguments, they kept this process waiting about 5 s (100,000 rows) for the
            # new interpreter to start and read them. Not shared memory: /dev/shm is
            # often small (64 MB in a default container), and writing past it kills
            # the process with SIGBUS instead of raising.
            features = self._spill(self._X)
            process = ctx.Process(
                target=_serve,
                args=(child, str(features), self._stops, self._names, os.getpid()),
                name="lifecycle-final-fit",
                daemon=True,
            )
            with _sigint_ignored():  # inherited: the worker ignores Ctrl-C from its start
                process.start()
        except Exception as exc:  # no way to start one here: fit in this process
            self.fallback = f"the worker process did not start ({type(exc).__name__}: {exc})"
            self._release()
            return
        finally:
            child.close()
        self._process, self._conn = process, parent
        self._reader = threading.Thread(target=self._read, args=(parent,), daemon=True)
        self._reader.start()

    def _read(self, conn: Connection) -> None:
        """The reader thread: every message of the worker into the inbox, until EOF."""
        while True:
            try:
                name, text, error = conn.recv()
            except (EOFError, OSError):
                with self._arrived:
                    self._worker_gone = True
                    self._arrived.notify_all()
                return
            with self._arrived:
                self._inbox[name] = (text, error)
                self._arrived.notify_all()

    @property
    def parallel(self) -> bool:
        """Whether the fits run in a worker process (and it has not been given up)."""
        return self._conn is not None

    def submit(self, name: str, params: dict[str, Any], y: np.ndarray, max_rounds: int) -> None:
        """Start fitting ``name`` (in the worker: at once, up to ``max_rounds`` rounds)."""
        if name not in self._names or name in self._jobs:
            raise ValueError(f"unexpected or repeated final fit {name!r}")
        if len(y) > len(self._X):
            raise ValueError(f"final fit {name!r} has more targets than rows")
        self._jobs[name] = (params, y, max_rounds)
        if self._conn is not None:
            try:
                # Only a path goes through the pipe: a message larger than the pipe's
                # buffer (a socket pair's, 212 KB on Linux: the targets of about 26,000
                # rows) blocks until the worker reads it, and the worker reads the next
                # job only once the current one has its rounds, which this process sets
                # after submitting.
                targets = self._spill(y)
                self._conn.send((name, params, str(targets), max_rounds))
            except OSError as exc:
                self._give_up(f"the worker process went away ({exc})")

    def stop_at(self, name: str, rounds: int) -> None:
        """Tell the fit of ``name`` how many rounds to keep (at least 1)."""
        if name not in self._jobs:
            raise ValueError(f"final fit {name!r} was not submitted")
        rounds = max(1, int(rounds))
        self._rounds[name] = rounds
        if self._stops is not None:
            self._stops[self._names.index(name)] = rounds

    def booster(self, name: str) -> lgb.Booster:
        """The final booster of ``name``; waits for the worker, or fits it here."""
        if name not in self._rounds:
            raise ValueError(f"final fit {name!r} has no number of rounds yet (stop_at)")
        if self._conn is not None and name not in self._done:
            self._receive(name)
        if name in self._done:
            return lgb.Booster(model_str=self._done[name])
        params, y, _ = self._jobs[name]
        return fit_rounds(params, self._X[: len(y)], y, self._rounds[name])

    def averaged(self, head: str, seeds: int) -> lgb.Booster:
        """The mean of ``head``'s ``seeds`` final boosters, as one booster.

        See :func:`~customer_lifecycle.training.averaging.average_boosters`.
        """
        return average_boosters([self.booster(name) for name in final_names(head, seeds)])

    def _receive(self, name: str) -> None:
        """Wait for the worker's ``name``; give the worker up if it failed or ended."""
        with self._arrived:
            self._arrived.wait_for(lambda: name in self._inbox or self._worker_gone)
            text, error = self._inbox.get(name, (None, None))
        if text is not None:
            self._done[name] = text
        elif error is not None:
            self._give_up(f"the worker process failed: {error}")
        else:
            code = None
            if self._process is not None:
                self._process.join(timeout=5)
                code = self._process.exitcode
            self._give_up(f"the worker process ended (exit code {code})")

    def _give_up(self, why: str) -> None:
        self.fallback = why
        self.close()

    def close(self) -> None:
        """Stop the worker (at once if it is still fitting); idempotent."""
        conn, process, reader = self._conn, self._process, self._reader
        self._conn = self._process = self._reader = None
        if conn is not None:
            with contextlib.suppress(OSError):  # already gone
                conn.send(_STOP)
        if process is not None:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        if reader is not None:
            reader.join(timeout=5)  # the worker's end is closed: the reader sees EOF
        if conn is not None:
            conn.close()
        self._release()

    def _spill(self, array: np.ndarray) -> Path:
        """``array`` in a temporary ``.npy`` file for the worker (which unlinks it)."""
        handle, name = tempfile.mkstemp(prefix="lifecycle-final-fit-", suffix=".npy")
        os.close(handle)
        path = Path(name)
        self._files.append(path)
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        return path

    def _release(self) -> None:
        files, self._files = self._files, []
        for path in files:  # those the worker has not read (and unlinked)
            path.unlink(missing_ok=True)

    def __enter__(self) -> FinalFits:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None and self._process is not None:
            self._process.kill()  # the run failed: whatever it was fitting is not wanted
        self.close()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while a child process starts, so that it ignores it too.

    Ctrl-C reaches the whole process group; the training process handles it and ends
    the worker, whose own traceback would only confuse. Only the main thread may set
    handlers; elsewhere the worker installs the same on its own, a moment later.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_when_told(stops: Any, index: int, parent: int) -> Callable[[Any], None]:
    """A LightGBM callback ending training once ``stops[index]`` rounds are done."""

    def callback(env: Any) -> None:
        rounds = stops[index]
        if rounds and env.iteration + 1 >= rounds:
            raise lgb.callback.EarlyStopException(env.iteration, [])
        if os.getppid() != parent:  # orphaned: the run is gone
            raise SystemExit(0)

    return callback


def _serve(conn: Connection, path: str, stops: Any, names: tuple[str, ...], parent: int) -> None:
    """The worker: fit each submitted booster, keep the rounds it is told, send the text."""
    # see _sigint_ignored: when the worker was started from another thread
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _fit_jobs(conn, _load(path), stops, names, parent)


def _load(path: str) -> np.ndarray:
    """A spilled array, mapped; its file is unlinked at once."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    with contextlib.suppress(OSError):  # mapped, the data outlives its name: nothing leaks
        os.unlink(path)  # even if the training process is killed
    return array


def _fit_jobs(
    conn: Connection, X: np.ndarray, stops: Any, names: tuple[str, ...], parent: int
) -> None:
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is _STOP:
            return
        name, params, targets, max_rounds = job
        index = names.index(name)
        try:
            y = np.asarray(_load(targets))
            booster = lgb.train(
                params,
                lgb.Dataset(X[: len(y)], label=y, free_raw_data=True),
                num_boost_round=max_rounds,
                callbacks=[_stop_when_told(stops, index, parent)],
            )
            while not stops[index]:  # ran out of rounds before the folds chose
                if os.getppid() != parent:
                    return
                time.sleep(0.01)
            text = booster.model_to_string(num_iteration=int(stops[index]))
            conn.send((name, text, None))
        except Exception as exc:
            conn.send((name, None, f"{type(exc).__name__}: {exc}"))
