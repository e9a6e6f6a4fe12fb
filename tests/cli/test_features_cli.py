"""`lifecycle features`: files in, a feature table out, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from customer_lifecycle.features.engine import build_features
from typer.testing import CliRunner

from customer_lifecycle.cli import app

runner = CliRunner()

EVENTS = """customer_id,timestamp,event_type,amount
007,2024-01-01T10:00:00Z,page_view,
007,2024-01-03T10:00:00+02:00,purchase,20.5
b,2024-01-02T09:00:00,add_to_cart,
b,not a time,purchase,3
b,2024-02-01T00:00:00Z,purchase,9
c,2024-01-05T00:00:00Z,teleport,
"""


@pytest.fixture
def events_csv(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS)
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])  # both output formats
def test_features_writes_one_row_per_customer(
    events_csv: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"features{suffix}"
    result = runner.invoke(
        app, ["features", "--events", str(events_csv), "--as-of", "2024-02-01", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    table = (
        pd.read_parquet(out)
        if suffix == ".parquet"
        else pd.read_csv(out, dtype={"customer_id": str})
    )
    # 'c' has only an unknown event type (quarantined under the strict policy);
    # b's purchase exactly at as_of is excluded
    assert list(table["customer_id"]) == ["007", "b"]
    expected = build_features(
        pd.read_csv(events_csv, dtype=str).drop(index=[3, 5]), as_of="2024-02-01"
    )
    pd.testing.assert_frame_equal(
        table.set_index("customer_id"), expected, check_names=False, check_dtype=False
    )
    quarantine = pd.read_csv(events_csv.with_name("events.quarantine.csv"))
    assert sorted(quarantine["reason"]) == ["unknown_event_type", "unparseable_timestamp"]
    assert "quarantined 2" in result.output


def test_lenient_policy_keeps_unknown_events(events_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.parquet"
    args = ["features", "--events", str(events_csv), "--as-of", "2024-03-01", "--out", str(out)]
    result = runner.invoke(app, [*args, "--unknown-events", "lenient"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out).set_index("customer_id")
    assert table.loc["c", "count_all_all"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # a bad as_of is refused before any work
        (["--as-of", "someday"], "not an ISO 8601 time"),
        # an output name without a known format
        (["--out", "features.xlsx"], "use a .parquet or .csv"),
        # a policy that does not exist
        (["--unknown-events", "maybe"], "strict or lenient"),
        # a mapping preset that does not exist
        (["--mapping", "ga5"], "does not exist"),
    ],
)
def test_bad_options_are_one_line_errors(
    events_csv: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = {
        "--events": str(events_csv),
        "--as-of": "2024-02-01",
        "--out": str(tmp_path / "f.parquet"),
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = runner.invoke(app, ["features", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "f.parquet").exists()


def test_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("customer_id,when,event_type\na,2024-01-01,page_view\n")
    result = runner.invoke(
        app,
        [
            "features",
            "--events",
            str(path),
            "--as-of",
            "2024-02-01",
            "--out",
            str(tmp_path / "f.csv"),
        ],
    )
    assert result.exit_code == 2
    assert "'timestamp'" in result.output


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["features", "--help"])
    assert result.exit_code == 0
    for option in ("--events", "--as-of", "--out", "--mapping", "--unknown-events", "--definition"):
        assert option in result.output
