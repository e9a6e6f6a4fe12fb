"""Check a model in a short-lived child process: ``python -m customer_lifecycle.scoring.check DIR``.

Why a child process
-------------------
:meth:`ModelBundle.load <customer_lifecycle.scoring.bundle.ModelBundle.load>` validates a
bundle in full and its strict text reader keeps every malformed tree file we know of
away from LightGBM's parser, which aborts the process on some. But LightGBM's parser and
predictor, and the compiled tree kernels, are native code: a fault there on an input
nobody foresaw ends the process that meets it, with no exception to catch. A server
that holds a healthy model must not be that process. :func:`check_in_subprocess` runs
this module on the model's files first: it loads the model exactly as the server will
and exercises every native path the server takes with it (LightGBM's raw and TreeSHAP
predictions, the tree kernels' scores and attributions, the feature engine with the
model's definition). Whatever happens there, only the child dies, and the caller gets
a :class:`ModelRefused` of one line.

``DIR`` is a bundle directory or an MLflow model directory (read as data, see
:func:`~customer_lifecycle.scoring.pyfunc.load_bundle`). Exit status 0: the model is
sound; 2: refused, with one line on stderr. Anything else (a signal, another status, no
answer within the timeout) is a crash, reported as such.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Literal

#: Why a model was refused (the values of the servers' ``reason`` metric label).
#: ``invalid``: the model's files are refused by validation; ``crashed``: checking them
#: killed the checking process; ``timeout``: the check did not finish in time;
#: ``unavailable``: the model's files could not be fetched; ``unresolvable``: the model
#: reference (an alias, say) names no model; ``error``: any other failure.
Reason = Literal["invalid", "crashed", "timeout", "unavailable", "unresolvable", "error"]

#: Seconds a check may take before it is stopped and the model refused.
CHECK_TIMEOUT_SECONDS = 120.0
_REFUSED = 2


class ModelRefused(ValueError):
    """A model that must not be served: ``reason`` (a :data:`Reason`) and one line."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason: Reason = reason


def check_in_subprocess(path: str | Path, *, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
    """Load and exercise the model at ``path`` in a child process (blocking).

    Costs a Python start and a model load (one to a few seconds), once per new model,
    never per request. Raises :class:`ModelRefused`: ``invalid`` with the child's own
    one-line reason, ``crashed`` naming the signal or status that ended it, or
    ``timeout``.
    """
    # -P: the working directory is not put on the child's import path.
    command = [sys.executable, "-P", "-m", __name__, str(path)]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ModelRefused(
            "timeout", f"checking the model at {path} took longer than {timeout:g} s"
        ) from None
    if done.returncode == 0:
        return
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1] if lines else ""
    if done.returncode == _REFUSED and last:
        raise ModelRefused("invalid", last)
    if done.returncode < 0:
        try:
            how = f"signal {signal.Signals(-done.returncode).name}"
        except ValueError:
            how = f"signal {-done.returncode}"
    else:
        how = f"exit status {done.returncode}"
    raise ModelRefused(
        "crashed",
        f"checking the model at {path} killed the checking process ({how})"
        + (f": {last[:300]}" if last else ""),
    )


def check(path: str | Path) -> None:
    """Load the model at ``path`` and run every native path a server runs on it.

    Raises ``ValueError`` (one line) when the model is refused.
    """
    import numpy as np
    import pandas as pd
    from customer_lifecycle.scoring.bundle import tree_probe
    from customer_lifecycle.scoring.pyfunc import load_bundle

    bundle = load_bundle(path)  # parse, shapes, finite parameters, LightGBM self-check
    probe = tree_probe(len(bundle.feature_names))
    for head, booster, trees in (
        ("stage", bundle.stage_booster, bundle.stage_trees),
        ("churn", bundle.churn_booster, bundle.churn_trees),
    ):
        contrib = np.asarray(booster.predict(probe, pred_contrib=True, num_threads=1))
        if not np.isfinite(contrib).all():
            raise ValueError(f"the {head} head's TreeSHAP contributions are not finite")
        scores, paths = trees.raw_scores_and_contributions(probe)
        if not (np.isfinite(scores).all() and np.isfinite(paths).all()):
            raise ValueError(f"the {head} head's tree scores are not finite")
    start = pd.Timestamp("2024-01-01", tz="UTC")
    events = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "b"],
            "timestamp": [start + pd.Timedelta(days=d) for d in (0, 3, 9, 1)],
            "event_type": ["page_view", "purchase", "login", "page_view"],
            "amount": [np.nan, 10.0, np.nan, np.nan],
            "channel": [None, "web", None, None],
        }
    )
    scored = bundle.predict_events(events, as_of=start + pd.Timedelta(days=30))
    if not np.isfinite(scored["churn_probability"].to_numpy(dtype=np.float64)).all():
        raise ValueError("the model's churn probabilities are not finite")


def main(argv: list[str] | None = None) -> int:
    """``python -m customer_lifecycle.scoring.check DIR``: 0 if sound, 2 and one line if not."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m customer_lifecycle.scoring.check DIR", file=sys.stderr)
        return _REFUSED
    try:
        check(args[0])
    except Exception as exc:  # whatever the model makes the loader raise refuses it
        text = str(exc).strip()
        line = text.splitlines()[0] if text else ""
        if not isinstance(exc, ValueError):
            line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
        print(line, file=sys.stderr)
        return _REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
