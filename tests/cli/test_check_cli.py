"""`lifecycle check` and the gate of `lifecycle train`: exit status, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.training.eligibility_logs import SIZES, edge_cases, simulated

runner = CliRunner()


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("check-cli")
    return {n: simulated(root, n) for n in SIZES}


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory, sims: dict[int, Path]) -> dict[str, Path]:
    return edge_cases(tmp_path_factory.mktemp("check-cli-edges"), sims[600])


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the default experiment's artifacts land here
    return tmp_path


def _files(folder: Path) -> list[str]:
    return ["--events", str(folder / "events.parquet"), "--labels", str(folder / "labels.csv")]


def _assert_one_line_error(result: Result, starts: str) -> None:
    """Exit 2, no traceback, and the error is the last line of stderr, on its own."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert result.stderr.splitlines()[-1] == errors[0]
    assert errors[0].startswith(starts), errors[0]


def test_check_exits_0_when_eligible(sims: dict[int, Path]) -> None:
    result = runner.invoke(app, ["check", *_files(sims[600])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"events: {sims[600] / 'events.parquet'}"
    assert "  customers: 600" in lines
    assert lines[-1].startswith("verdict: eligible to train (at least 200 customers")


def test_check_exits_1_with_the_reasons_when_not_eligible(sims: dict[int, Path]) -> None:
    result = runner.invoke(app, ["check", *_files(sims[100])])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1].startswith(
        "verdict: not eligible to train: 100 customers with events before their snapshot"
    )
    assert result.stderr == ""


def test_check_json_is_one_object_for_scripts(sims: dict[int, Path]) -> None:
    result = runner.invoke(app, ["check", *_files(sims[100]), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["eligible"] is False
    assert report["reasons"][0].startswith("100 customers")
    assert report["labels"]["training"]["customers"] == 100
    assert report["minimums"] == {"customers": 200, "stage_examples": 20, "churn_examples": 20}
    assert sum(report["events"]["event_types"].values()) == report["events"]["rows_kept"]


def test_check_follows_the_minimum_settings(
    sims: dict[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFECYCLE_MIN_CUSTOMERS", "2000")
    result = runner.invoke(app, ["check", *_files(sims[600])])
    assert result.exit_code == 1
    assert "600 customers with events before their snapshot (at least 2,000 needed)" in (
        result.stdout
    )
    monkeypatch.setenv("LIFECYCLE_MIN_CUSTOMERS", "lots")
    _assert_one_line_error(
        runner.invoke(app, ["check", *_files(sims[600])]), "error: LIFECYCLE_MIN_CUSTOMERS"
    )


@pytest.mark.parametrize(
    ("args", "starts"),
    [
        # no such events file
        (["--events", "nowhere.csv"], "error: events file nowhere.csv does not exist"),
        # a label file that does not exist
        (["--labels", "nowhere.csv"], "error: label file nowhere.csv does not exist"),
        # a time that is not a time
        (["--as-of", "yesterday"], "error: as_of 'yesterday' is not an ISO 8601 time"),
        # an option value outside its choices
        (["--qualifying", "visits"], "error: --qualifying must be any or purchases"),
    ],
)
def test_check_exits_2_on_unreadable_input(
    sims: dict[int, Path], args: list[str], starts: str
) -> None:
    base = ["--events", str(sims[600] / "events.parquet")]
    result = runner.invoke(app, ["check", *base, *args])
    _assert_one_line_error(result, starts)
    assert result.stdout == ""


@pytest.mark.parametrize("case", ["no-stage", "late-as-of", "all-churned"])  # each refused
def test_check_and_train_refuse_the_edge_cases_alike(
    edges: dict[str, Path], store: Path, case: str
) -> None:
    checked = runner.invoke(app, ["check", *_files(edges[case])])
    assert checked.exit_code == 1, checked.output
    reason = checked.stdout.splitlines()[-1].removeprefix("verdict: not eligible to train: ")
    trained = runner.invoke(app, ["train", *_files(edges[case])])
    _assert_one_line_error(trained, "error: ")
    assert reason in trained.stderr


@pytest.mark.parametrize("size", [100, 300])  # too few customers; too few of some stages
def test_train_refuses_a_few_hundred_customers_in_one_line(
    sims: dict[int, Path], store: Path, size: int
) -> None:
    result = runner.invoke(app, ["train", *_files(sims[size])])
    _assert_one_line_error(result, "error: not enough data to train: ")
    assert "(at least 20 needed)" in result.stderr
    assert not (store / "mlflow.db").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "which",
    [
        "600",  # a simulated shop of 600 customers, above every minimum
        "no-purchases",  # visits and logins only: trains, and check warns
    ],
)
def test_train_trains_what_check_accepts(
    sims: dict[int, Path], edges: dict[str, Path], store: Path, which: str
) -> None:
    folder = sims[600] if which == "600" else edges[which]
    checked = runner.invoke(app, ["check", *_files(folder)])
    assert checked.exit_code == 0, checked.output
    result = runner.invoke(app, ["train", *_files(folder), "--experiment", "check-cli"])
    assert result.exit_code == 0, result.output
    assert "model URI: " in result.stdout
    if which == "no-purchases":
        assert "warning: no purchase events" in checked.stdout
