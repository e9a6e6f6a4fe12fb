"""The final fits in a worker process: the same boosters as fitted here, and nothing lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import lightgbm as lgb
import numpy as np
import pytest
from customer_lifecycle.training import models
from customer_lifecycle.training.refit import (
    AUTO_MIN_ROWS,
    FinalFits,
    final_names,
    fit_rounds,
    use_worker,
)
from customer_lifecycle.training.train import TrainConfig

PARAMS = {**models.DEFAULT_LGB_PARAMS, "num_threads": 1, "seed": 3}


def _problem(n: int = 3000, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.7, size=n) > 0).astype(int)
    if classes > 2:
        y = y + (X[:, 2] > 0.8).astype(int)
    return X, y


def _same(a: lgb.Booster, b: lgb.Booster, X: np.ndarray) -> bool:
    return a.num_trees() == b.num_trees() and np.array_equal(
        a.predict(X, raw_score=True), b.predict(X, raw_score=True)
    )


@pytest.mark.parametrize(
    "told_after",
    [
        0.0,  # told the rounds at once: the worker stops at them
        2.0,  # told late: the worker has run past them (or to max_rounds) and keeps the first R
    ],
)
def test_worker_boosters_are_the_ones_fitted_here(told_after: float) -> None:
    X, y3 = _problem()
    y2 = (y3 > 0).astype(int)
    multi = {**PARAMS, "objective": "multiclass", "num_class": 3}
    binary = {**PARAMS, "objective": "binary", "bagging_fraction": 0.7}
    with FinalFits(X, ("stage", "churn"), parallel=True) as final:
        assert final.parallel
        final.submit("stage", multi, y3, 300)
        final.submit("churn", binary, y2, 300)
        time.sleep(told_after)
        final.stop_at("stage", 37)
        final.stop_at("churn", 120)
        stage, churn = final.booster("stage"), final.booster("churn")
    assert final.fallback is None
    assert _same(stage, fit_rounds(multi, X, y3, 37), X)
    assert _same(churn, fit_rounds(binary, X, y2, 120), X)
    assert stage.num_trees() == 37 * 3


def test_a_worker_that_fails_is_replaced_by_a_fit_here() -> None:
    X, y = _problem(classes=2)
    bad = {**PARAMS, "objective": "binary", "num_leaves": 1}  # LightGBM refuses 1 leaf
    with FinalFits(X, ("churn",), parallel=True) as final:
        final.submit("churn", bad, y, 10)
        final.stop_at("churn", 5)
        # the fit here meets the same refusal, so the error is LightGBM's own
        with pytest.raises(lgb.basic.LightGBMError, match="num_leaves"):
            final.booster("churn")
    assert final.fallback is not None and "num_leaves" in final.fallback


def test_a_killed_worker_loses_nothing() -> None:
    X, y = _problem(classes=2)
    params = {**PARAMS, "objective": "binary"}
    with FinalFits(X, ("churn",), parallel=True) as final:
        final.submit("churn", params, y, 100_000)  # far more than it will be given time for
        os.kill(final._process.pid, 9)
        final.stop_at("churn", 50)
        booster = final.booster("churn")
    assert final.fallback is not None and "exit code -9" in final.fallback
    assert _same(booster, fit_rounds(params, X, y, 50), X)


def test_the_worker_ends_with_the_run_that_started_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a run killed mid-fit must not leave its worker fitting on
    script = textwrap.dedent(
        """
        import os, sys, time
        import numpy as np
        from customer_lifecycle.training.refit import FinalFits
        X = np.random.default_rng(0).normal(size=(20000, 8))
        y = (X[:, 0] > 0).astype(int)
        final = FinalFits(X, ("churn",), parallel=True)
        final.submit("churn", {"objective": "binary", "num_threads": 1, "verbosity": -1}, y, 10**6)
        print(final._process.pid, flush=True)
        time.sleep(1)
        os._exit(9)
        """
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert run.returncode == 9, run.stderr
    worker = int(run.stdout.split()[0])
    for _ in range(600):  # polls: the worker checks its parent once per round
        if not _alive(worker):
            break
        time.sleep(0.1)
    assert not _alive(worker)
    # the features file the worker read is gone with it, although nobody closed the run
    assert not list(tmp_path.glob("lifecycle-final-fit-*"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_sequential_fits_start_no_process() -> None:
    X, y = _problem(classes=2)
    params = {**PARAMS, "objective": "binary"}
    with FinalFits(X, ("churn",), parallel=False) as final:
        final.submit("churn", params, y, 100)
        final.stop_at("churn", 12)
        assert not final.parallel
        assert _same(final.booster("churn"), fit_rounds(params, X, y, 12), X)


def test_misuse_is_refused_in_one_line() -> None:
    X, y = _problem(classes=2)
    with FinalFits(X, ("churn",), parallel=False) as final:
        with pytest.raises(ValueError, match="unexpected or repeated"):
            final.submit("stage", PARAMS, y, 10)
        with pytest.raises(ValueError, match="was not submitted"):
            final.stop_at("churn", 3)
        final.submit("churn", PARAMS, y, 10)
        with pytest.raises(ValueError, match="no number of rounds"):
            final.booster("churn")


def test_worker_mode() -> None:
    assert not use_worker("never", 10**7)
    assert use_worker("always", 10)
    assert not use_worker("auto", AUTO_MIN_ROWS - 1)
    assert use_worker("auto", AUTO_MIN_ROWS) == (len(os.sched_getaffinity(0)) >= 2)
    with pytest.raises(ValueError, match="refit worker must be one of auto, always, never"):
        use_worker("sometimes", 10)
    with pytest.raises(ValueError, match="refit worker"):
        TrainConfig(refit_worker="yes")


def test_averaged_final_fits_are_the_mean_of_their_seeds() -> None:
    # three seeds of one head in the worker: one booster whose raw score is their mean
    X, y = _problem(classes=2)
    params = {**PARAMS, "objective": "binary"}
    names = final_names("churn", 3)
    seeds = [{**params, "seed": 3 + i} for i in range(3)]
    with FinalFits(X, names, parallel=True) as final:
        for name, p in zip(names, seeds, strict=True):
            final.submit(name, p, y, 200)
            final.stop_at(name, 25)
        merged = final.averaged("churn", 3)
    here = [fit_rounds(p, X, y, 25) for p in seeds]
    mean = np.mean([b.predict(X, raw_score=True) for b in here], axis=0)
    np.testing.assert_allclose(merged.predict(X, raw_score=True), mean, rtol=0, atol=1e-12)
    assert not np.allclose(here[0].predict(X), here[1].predict(X))  # the seeds differ


def test_final_seeds_setting() -> None:
    assert TrainConfig().final_seeds_for(7_200, 9_000) == 3
    assert TrainConfig().final_seeds_for(25_000, 31_000) == 3
    assert TrainConfig().final_seeds_for(25_001, 31_000) == 1  # fewer than 5 folds
    assert TrainConfig().final_seeds_for(3_900, 4_900) == 1  # no worker starts
    assert TrainConfig(final_seeds=5).final_seeds_for(10**6, 10**6) == 5
    for bad in (0, 11, "3", True):
        with pytest.raises(ValueError, match="final_seeds must be 'auto' or a whole number"):
            TrainConfig(final_seeds=bad)


def test_large_jobs_submitted_before_any_rounds_do_not_block() -> None:
    # three seeds of a head are submitted before the folds choose their rounds; targets
    # far larger than a pipe's buffer once made the second submission wait for the
    # worker, which waited for rounds this process could no longer set
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60_000, 3))
    y = (X[:, 0] > 0).astype(np.int64)  # 480 KB of targets per job
    params = {**PARAMS, "objective": "binary", "num_leaves": 4}
    names = final_names("churn", 3)
    submitted = threading.Event()
    with FinalFits(X, names, parallel=True) as final:

        def submit_all() -> None:
            for i, name in enumerate(names):
                final.submit(name, {**params, "seed": i}, y, 10_000)
            submitted.set()

        worker = threading.Thread(target=submit_all, daemon=True)
        worker.start()
        # a deadlock detector, not a speed limit: the submissions only write files
        assert submitted.wait(timeout=120), "submitting the final fits blocked"
        for name in names:
            final.stop_at(name, 3)
        merged = final.averaged("churn", 3)
    assert final.fallback is None
    assert merged.num_trees() == 9


def test_finished_fits_never_wait_to_be_asked_for() -> None:
    # models far larger than a pipe's buffer: each must reach this process as soon as
    # it is done, or the worker would sit on its first result until asked and fit the
    # others only then, after the folds instead of beside them
    X, y = _problem(n=20_000, classes=2)
    params = {**PARAMS, "objective": "binary", "num_leaves": 31, "min_data_in_leaf": 5}
    names = final_names("churn", 3)
    with FinalFits(X, names, parallel=True) as final:
        for i, name in enumerate(names):
            final.submit(name, {**params, "seed": i}, y, 300)
            final.stop_at(name, 300)
        for _ in range(1200):  # a deadlock detector, not a speed limit
            with final._arrived:
                if len(final._inbox) == 3:
                    break
            time.sleep(0.1)
        sizes = [len(text or "") for text, _ in final._inbox.values()]
        assert len(sizes) == 3 and min(sizes) > 300_000, sizes
        merged = final.averaged("churn", 3)
    assert final.fallback is None and merged.num_trees() == 900


def test_ctrl_c_is_left_to_the_training_process() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the worker must not die of
    # it with a traceback of its own: the training process decides (and ends it)
    X, y = _problem(classes=2)
    binary = {**PARAMS, "objective": "binary"}
    with FinalFits(X, ("churn",), parallel=True) as final:
        final.submit("churn", binary, y, 2000)
        time.sleep(0.2)
        os.kill(final._process.pid, signal.SIGINT)
        final.stop_at("churn", 50)
        booster = final.booster("churn")
    assert final.fallback is None  # the worker lived on and sent its booster
    assert _same(booster, fit_rounds(binary, X, y, 50), X)


def test_fits_with_fewer_targets_use_the_first_rows() -> None:
    # the churn head may have more rows than the stage head (earlier snapshots follow
    # the labelled rows): each fit uses the first len(y) rows of X
    X, y3 = _problem(n=4000)
    y2 = (y3 > 0).astype(int)
    multi = {**PARAMS, "objective": "multiclass", "num_class": 3}
    binary = {**PARAMS, "objective": "binary"}
    for parallel in (True, False):
        with FinalFits(X, ("stage", "churn"), parallel=parallel) as final:
            final.submit("stage", multi, y3[:2500], 300)
            final.submit("churn", binary, y2, 300)
            final.stop_at("stage", 20)
            final.stop_at("churn", 30)
            stage, churn = final.booster("stage"), final.booster("churn")
            with pytest.raises(ValueError, match="more targets than rows"):
                FinalFits(X[:10], ("x",), parallel=False).submit("x", binary, y2, 5)
        assert final.fallback is None
        assert _same(stage, fit_rounds(multi, X[:2500], y3[:2500], 20), X)
        assert _same(churn, fit_rounds(binary, X, y2, 30), X)
