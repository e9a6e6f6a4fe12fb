"""No command writes over one of its inputs (issue 12): one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from customer_lifecycle.cli import app

EVENTS = """customer_id,timestamp,event_type,amount
a,2024-01-01T10:00:00Z,page_view,
a,not a time,purchase,3
"""


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # --out is the log (the observed bug: the log overwritten, exit 0)
        (["features", "--out", "{events}"], "--out {events}: it is --events"),
        (["features", "--out", "{events}", "--chunk-customers", "5"], "it is --events"),
        (["score", "--out", "{events}"], "--out {events}: it is --events"),
        # --quarantine is the log: the log would keep only its bad rows
        (["features", "--out", "{d}/f.csv", "--quarantine", "{events}"], "--quarantine"),
        (["score", "--out", "{d}/s.csv", "--quarantine", "{events}"], "--quarantine"),
        # --out is the quarantine file the summary names
        (["score", "--out", "{d}/events.quarantine.csv"], "also the quarantine file"),
        (["features", "--out", "{d}/q.csv", "--quarantine", "{d}/q.csv"], "also --quarantine"),
        # a symbolic link to the log
        (["score", "--out", "{d}/link.csv"], "--out {d}/link.csv: it is --events"),
        # the mapping file
        (["features", "--out", "{d}/m.csv", "--mapping", "{d}/m.csv"], "it is --mapping"),
    ],
)
def test_an_output_over_an_input_is_refused(tmp_path: Path, args: list[str], message: str) -> None:
    events = tmp_path / "events.csv"
    events.write_text(EVENTS)
    (tmp_path / "m.csv").write_text("columns: {}\n")
    (tmp_path / "link.csv").symlink_to(events)
    before = _files(tmp_path)
    command, *rest = [a.format(d=tmp_path, events=events) for a in args]
    common = ["--events", str(events), "--as-of", "2024-02-01"]
    if command == "score":
        common += ["--model", str(tmp_path / "model")]
    result = CliRunner().invoke(app, [command, *common, *rest])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to write")
    assert message.format(d=tmp_path, events=events) in lines[0]
    assert _files(tmp_path) == before  # nothing written, nothing left


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_never_quarantine_over_their_labels(
    tmp_path: Path, command: str
) -> None:
    # the quarantine file goes beside the log; labels stored under that name survive
    events = tmp_path / "events.csv"
    events.write_text(EVENTS)
    labels = tmp_path / "events.quarantine.csv"
    labels.write_text("customer_id,stage\na,awareness\n")
    args = [command, "--events", str(events), "--labels", str(labels), "--as-of", "2024-02-01"]
    if command == "evaluate":
        args += ["--model", str(tmp_path / "model")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "it is --labels" in result.output
    assert labels.read_text() == "customer_id,stage\na,awareness\n"


def test_simulate_never_writes_over_its_scenario(tmp_path: Path) -> None:
    scenario = tmp_path / "data" / "labels.csv"
    scenario.parent.mkdir()
    scenario.write_text("customers: 1\n")
    result = CliRunner().invoke(
        app,
        ["simulate", "--customers", "5", "--seed", "1", "--out", str(tmp_path / "data")]
        + ["--scenario", str(scenario)],
    )
    assert result.exit_code == 2
    assert "it is --scenario" in result.output
    assert scenario.read_text() == "customers: 1\n"
