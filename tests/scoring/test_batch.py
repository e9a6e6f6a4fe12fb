"""Streaming batch scoring (issue 6): chunked equals all at once, failures leave no output.

The log is sorted by time, so every customer's events are spread through the whole
file; bad rows are planted at known rows. The reference is the in-memory path: load the
whole log with ``load_events``, build features, score.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.engine import build_features
from customer_lifecycle.features.events import load_events
from customer_lifecycle.scoring.batch import score_file
from customer_lifecycle.scoring.bundle import ModelBundle
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.features.support import AS_OF, BAD_ROWS, leftovers, raw_log, write_log

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return raw_log()


@pytest.fixture(scope="module")
def bundle(raw: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> ModelBundle:
    """Small heads trained on the log's own features with random labels (fast, offline)."""
    definition = load_definition()
    events, _ = load_events(write_log(raw, tmp_path_factory.mktemp("train") / "events.csv"))
    X = build_features(events, as_of=AS_OF, definition=definition).to_numpy()
    rng = np.random.default_rng(0)
    params = {"verbose": -1, "num_leaves": 7, "min_data_in_leaf": 5, "num_threads": 1}
    stage = lgb.train(
        {**params, "objective": "multiclass", "num_class": len(STAGES)},
        lgb.Dataset(X, rng.integers(0, len(STAGES), len(X))),
        num_boost_round=8,
    )
    churn = lgb.train(
        {**params, "objective": "binary"}, lgb.Dataset(X, rng.integers(0, 2, len(X))), 8
    )
    return ModelBundle(definition, STAGES, stage, churn, risk_thresholds=(0.4, 0.6))


def _reference(path: Path, bundle: ModelBundle) -> pd.DataFrame:
    events, _ = load_events(path)
    return bundle.predict_events(events, as_of=AS_OF)


def _sorted(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.sort_values("customer_id", ignore_index=True)


@pytest.mark.parametrize(
    ("chunk_customers", "partitions"),
    [
        (1, 7),  # every customer is a chunk of its own; 7 spill files
        (10, 3),  # chunks of a few spill files' customers
        (40, 1),  # one spill file holds every customer; one chunk
        (10**9, 16),  # one chunk gathered from 16 spill files
        (25, None),  # the default number of spill files for the log's size
    ],
)
def test_chunked_scores_equal_scoring_all_at_once(
    raw: pd.DataFrame,
    bundle: ModelBundle,
    tmp_path: Path,
    chunk_customers: int,
    partitions: int | None,
) -> None:
    events = write_log(raw, tmp_path / "events.csv")
    out = tmp_path / "scores.parquet"
    scores, summary = score_file(
        events,
        model=bundle,
        as_of=AS_OF,
        out=out,
        chunk_customers=chunk_customers,
        partitions=partitions,
    )
    expected = _reference(events, bundle)
    assert scores is not None
    # Every value is bit for bit the in-memory one: events keep their order per customer.
    pd.testing.assert_frame_equal(_sorted(scores), expected, check_exact=True)
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out)), expected, check_exact=True)
    assert summary.customers == len(expected)
    assert summary.risk_bands == expected["churn_risk"].value_counts().to_dict() | {
        b: 0 for b in ("low", "medium", "high") if b not in set(expected["churn_risk"])
    }
    assert leftovers(tmp_path) == []


def test_customers_are_spread_through_the_log(raw: pd.DataFrame) -> None:
    # the premise of the parity test: most customers appear in both halves of the file
    first, second = set(raw["customer_id"][:6_000]), set(raw["customer_id"][6_000:])
    assert len(first & second) > 100


@pytest.mark.parametrize(
    "suffix",
    [
        ".csv",  # text cells, read in blocks
        ".parquet",  # typed columns, read by row group
        ".jsonl",  # JSON lines, read in runs of lines
    ],
)
def test_bad_rows_are_quarantined_with_source_row_numbers(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path, suffix: str
) -> None:
    events = write_log(raw, tmp_path / f"events{suffix}")
    out = tmp_path / "scores.csv"
    _, summary = score_file(
        events, model=bundle, as_of=AS_OF, out=out, chunk_customers=20, partitions=5
    )
    quarantine = pd.read_csv(tmp_path / "events.quarantine.csv", dtype=str)
    assert quarantine["row_number"].astype(int).tolist() == [r + 1 for r in BAD_ROWS]
    assert quarantine["reason"].tolist() == [v[-1] for v in BAD_ROWS.values()]
    assert summary.load.quarantine_path == tmp_path / "events.quarantine.csv"
    # the same rows, numbers and counts as the in-memory loader
    _, loaded = load_events(events, quarantine_path=tmp_path / "reference.csv")
    reference = pd.read_csv(tmp_path / "reference.csv", dtype=str)
    pd.testing.assert_frame_equal(quarantine, reference[quarantine.columns])
    assert summary.rows_read == loaded.rows_read == len(raw)
    assert summary.rows_kept == loaded.rows_kept
    assert summary.load.quarantined == loaded.quarantined
    scores = pd.read_csv(out, dtype={"customer_id": str})
    expected = _reference(events, bundle)
    pd.testing.assert_frame_equal(_sorted(scores), expected, check_exact=False, rtol=1e-15)


def _interrupt_on(phase: str, after: int) -> Callable[[str, int, int], None]:
    calls = {"n": 0}

    def progress(current: str, done: int, total: int) -> None:
        if current == phase:
            calls["n"] += 1
            if calls["n"] > after:
                raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize(
    ("phase", "after"),
    [
        ("reading events", 0),  # stopped while partitioning, after the first batch
        ("scoring", 2),  # stopped after two spill files were scored and written
    ],
)
def test_interrupted_run_leaves_no_output_and_a_rerun_succeeds(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path, phase: str, after: int
) -> None:
    events = write_log(raw, tmp_path / "events.csv")
    out = tmp_path / "scores.parquet"
    with pytest.raises(KeyboardInterrupt):
        score_file(
            events,
            model=bundle,
            as_of=AS_OF,
            out=out,
            chunk_customers=5,
            partitions=6,
            progress=_interrupt_on(phase, after),
        )
    # no output, no quarantine, no temporary file or spill directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]
    scores, _ = score_file(events, model=bundle, as_of=AS_OF, out=out, partitions=6)
    assert scores is not None
    pd.testing.assert_frame_equal(_sorted(pd.read_parquet(out)), _reference(events, bundle))


def test_failure_keeps_an_earlier_output(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path
) -> None:
    events = write_log(raw, tmp_path / "events.csv")
    out = tmp_path / "scores.csv"
    out.write_text("an earlier run\n")

    def fail(phase: str, done: int, total: int) -> None:
        if phase == "scoring" and done == 1:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        score_file(events, model=bundle, as_of=AS_OF, out=out, partitions=3, progress=fail)
    assert out.read_text() == "an earlier run\n"
    assert leftovers(tmp_path) == []


SLOW_CLI = textwrap.dedent(
    """
    import sys, time
    import customer_lifecycle.features.spill as spill
    import customer_lifecycle.features.streaming as streaming

    real = streaming.validate_events
    calls = []

    def slow(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two chunks were checked and handed on to be scored
            print("checking the third chunk", flush=True)
            time.sleep(60)  # the test stops the process here
        return real(*args, **kwargs)

    streaming.validate_events = slow
    spill.ROWS_PER_PARTITION = 1_000  # a dozen spill files, so several chunks
    from customer_lifecycle.cli import app

    app(sys.argv[1:])
    """
)


@pytest.mark.parametrize(
    ("sig", "command"),
    [
        # Ctrl-C: cleaned up, one line, exit 130
        pytest.param(signal.SIGINT, "score", id="SIGINT"),
        # a service manager's stop: cleaned up as on Ctrl-C, one line, exit 143
        pytest.param(signal.SIGTERM, "score", id="SIGTERM"),
        # the terminal went away: the same, exit 129
        pytest.param(signal.SIGHUP, "score", id="SIGHUP"),
        # streamed features stop the same way
        pytest.param(signal.SIGTERM, "features", id="SIGTERM-features"),
        # killed outright: no chance to clean up, still no output
        pytest.param(signal.SIGKILL, "score", id="SIGKILL"),
    ],
)
def test_killed_cli_leaves_no_output_and_a_rerun_succeeds(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path, sig: signal.Signals, command: str
) -> None:
    # the log has bad rows: a quarantine file is in the making when the signal comes
    events = write_log(raw, tmp_path / "events.csv")
    model = bundle.save(tmp_path / "model")
    out = tmp_path / "out" / "scores.csv"
    args = [command, "--events", str(events), "--as-of", AS_OF]
    args += ["--model", str(model)] if command == "score" else []
    args += ["--out", str(out), "--chunk-customers", "10"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().strip() == "checking the third chunk"
    # the first chunk's scores are in the temporary output by now
    assert any(p.name.startswith(".scores.csv.") for p in out.parent.iterdir())
    proc.send_signal(sig)
    proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert not out.exists()
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted: no output was written" in stderr
        assert list(out.parent.iterdir()) == []
    elif sig != signal.SIGKILL:
        assert proc.returncode == 128 + sig
        assert stderr.strip().splitlines()[-1] == f"stopped by {sig.name}: no output was written"
        # no spill directory, no temporary output, no quarantine file
        assert list(out.parent.iterdir()) == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "model", "out"]
    else:
        assert proc.returncode == -signal.SIGKILL
        # whatever was left is hidden and never carries the output's name
        assert all(p.name.startswith(".") for p in out.parent.iterdir())
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    if command == "features":
        return
    scores = pd.read_csv(out, dtype={"customer_id": str})
    pd.testing.assert_frame_equal(_sorted(scores), _reference(events, bundle), rtol=1e-15)


def test_missing_column_is_refused_before_partitioning(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path
) -> None:
    events = write_log(raw.rename(columns={"timestamp": "when"}), tmp_path / "events.csv")
    with pytest.raises(ValueError, match="no required column 'timestamp'"):
        score_file(events, model=bundle, as_of=AS_OF, out=tmp_path / "s.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


def test_no_customer_before_as_of_writes_an_empty_table(
    raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path
) -> None:
    events = write_log(raw, tmp_path / "events.parquet")
    out = tmp_path / "scores.parquet"
    scores, summary = score_file(events, model=bundle, as_of="2000-01-01", out=out)
    assert summary.customers == 0
    assert list(pd.read_parquet(out).columns) == ["customer_id", *bundle.output_columns]


def test_score_command_streams(raw: pd.DataFrame, bundle: ModelBundle, tmp_path: Path) -> None:
    events = write_log(raw, tmp_path / "events.parquet")
    model = bundle.save(tmp_path / "model")
    out = tmp_path / "scores.parquet"
    args = ["score", "--events", str(events), "--model", str(model), "--as-of", AS_OF]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--chunk-customers", "50"])
    assert result.exit_code == 0, result.output
    assert "quarantined 5" in result.output and "scored " in result.output
    pd.testing.assert_frame_equal(
        _sorted(pd.read_parquet(out)), _reference(events, bundle), check_exact=True
    )
