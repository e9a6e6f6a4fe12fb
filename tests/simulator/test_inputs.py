"""Bad input is refused with one clear line, from the API and from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from customer_lifecycle.simulator.config import load_scenario
from customer_lifecycle.simulator.generate import make_plan, write_dataset
from customer_lifecycle.simulator.oracle import posterior
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.simulator.tiny import tiny_parameters


def _scenario_file(tmp_path: Path, **changes: Any) -> Path:
    params = tiny_parameters()
    params.update(changes)
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _one_line_error(excinfo: pytest.ExceptionInfo[ValueError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_scenario_name() -> None:
    with pytest.raises(ValueError) as excinfo:
        load_scenario("retail")
    assert "unknown scenario 'retail'" in _one_line_error(excinfo)
    assert "default, subscription" in str(excinfo.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'"),  # unknown top-level key
        (
            {"activity": {"levels": [1.0], "probabilities": [1.0], "shape": 2}},
            "unknown key 'activity.shape'",
        ),  # unknown nested key
        (
            {"rates": {"awareness": {"teleport": 1.0}, "consideration": {}, "purchase": {}}},
            "unknown event type 'teleport'",
        ),  # event type outside the contract
        ({"initial": {"awareness": 0.5}}, "initial: probabilities add up to 0.5"),  # not 1
        (
            {"stages": ["awareness", "lurking"]},
            "stage 'lurking' is not in the taxonomy",
        ),  # stage names come from the taxonomy
    ],
)
def test_bad_scenario_file(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        load_scenario(_scenario_file(tmp_path, **changes))
    assert message in _one_line_error(excinfo)


def test_custom_scenario_file_loads(tmp_path: Path) -> None:
    sc = load_scenario(_scenario_file(tmp_path))
    assert sc.name == "tiny" and sc.stages == ["awareness", "consideration", "purchase"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"customers": -5}, "customers must be at least 1, got -5"),  # negative count
        ({"customers": 0}, "customers must be at least 1"),  # empty run
        ({"as_of": ["2024-06-01T12:00:00Z"]}, "is not at midnight UTC"),  # inside a day
        ({"as_of": ["2023-06-01"]}, "is not after the first arrival day"),  # before any data
        ({"as_of": ["next tuesday"]}, "is not an ISO 8601 time"),  # not a time
        ({"seed": -1}, "seed must be a non-negative whole number"),  # negative seed
        ({"horizon_days": 0}, "horizon_days must be at least 1"),  # empty churn window
    ],
)
def test_bad_run_settings(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"customers": 10, "seed": 1, **kwargs}
    with pytest.raises(ValueError) as excinfo:
        make_plan("default", **settings)
    assert message in _one_line_error(excinfo)


def test_bad_format_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as excinfo:
        write_dataset(tmp_path / "out", customers=10, seed=1, fmt="xlsx")
    assert "unknown format 'xlsx'" in _one_line_error(excinfo)
    assert not (tmp_path / "out").exists()


def test_oracle_refuses_as_of_inside_a_day_and_unknown_types() -> None:
    events = pd.DataFrame(
        {"customer_id": ["a"], "timestamp": ["2024-01-02T10:00:00Z"], "event_type": ["ad_click"]}
    )
    with pytest.raises(ValueError) as excinfo:
        posterior(events, "default", "2024-02-01T06:00:00Z")
    assert "not at midnight UTC" in _one_line_error(excinfo)
    with pytest.raises(ValueError) as excinfo:
        posterior(events.assign(event_type="teleport"), "default", "2024-02-01")
    assert "unknown event type 'teleport'" in _one_line_error(excinfo)
    with pytest.raises(ValueError) as excinfo:
        posterior(events.drop(columns="event_type"), "default", "2024-02-01")
    assert "event_type" in _one_line_error(excinfo)


def test_cli_simulate_writes_files_and_prints_oracle_scores(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--customers",
            "300",
            "--seed",
            "1",
            "--out",
            str(out),
            "--oracle",
            "--as-of",
            "2024-10-01",
            "--as-of",
            "2024-12-01",
            "--format",
            "csv",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "oracle: stage accuracy" in result.stdout
    assert {p.name for p in out.iterdir()} == {
        "events.csv",
        "labels.csv",
        "outcomes.csv",
        "oracle.csv",
        "metadata.json",
    }
    assert set(pd.read_csv(out / "labels.csv")["as_of"]) == {
        "2024-10-01T00:00:00+00:00",
        "2024-12-01T00:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "-5"], "customers must be at least 1"),  # negative count
        (["--customers", "5", "--scenario", "nope"], "unknown scenario 'nope'"),  # bad name
        (["--customers", "5", "--as-of", "2024-06-01T01:00"], "not at midnight UTC"),  # in a day
    ],
)
def test_cli_simulate_reports_bad_input_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = CliRunner().invoke(
        app, ["simulate", "--seed", "1", "--out", str(tmp_path / "o"), *args]
    )
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0]
