"""The oracle's predictions for a written dataset: read back or computed, the same."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from customer_lifecycle.simulator import dataset_oracle, posterior, write_dataset

AS_OF = ["2024-06-01", "2024-09-01"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same simulation twice: with ``oracle.csv`` and without."""
    root = tmp_path_factory.mktemp("datasets")
    write_dataset(root / "with", customers=600, seed=5, as_of=AS_OF, oracle=True)
    write_dataset(root / "without", customers=600, seed=5, as_of=AS_OF)
    return root / "with", root / "without"


def test_saved_and_computed_predictions_agree(written: tuple[Path, Path]) -> None:
    saved = dataset_oracle(written[0] / "events.parquet")
    computed = dataset_oracle(written[1])  # the folder works too
    assert saved is not None and computed is not None
    assert sorted(saved["as_of"].unique()) == [pd.Timestamp(t, tz="UTC") for t in AS_OF]
    assert str(saved["as_of"].dtype) == "datetime64[ns, UTC]"
    pd.testing.assert_frame_equal(saved, computed, rtol=1e-9)


def test_oracle_csv_is_reused_only_for_its_own_events_and_horizon(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "copy"
    folder.mkdir()
    for path in written[0].iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    marked = pd.read_csv(folder / "oracle.csv").assign(churn_probability=0.123)
    marked.to_csv(folder / "oracle.csv", index=False)
    reused = dataset_oracle(folder / "events.parquet")
    assert reused is not None and (reused["churn_probability"] == 0.123).all()
    # another horizon, or another events file beside the metadata: computed afresh
    other_horizon = dataset_oracle(folder, horizon_days=30)
    assert other_horizon is not None and (other_horizon["churn_probability"] != 0.123).all()
    events = pd.read_parquet(folder / "events.parquet")
    events[events["event_type"] == "purchase"].to_parquet(folder / "purchases.parquet")
    filtered = dataset_oracle(folder / "purchases.parquet")
    assert filtered is not None and (filtered["churn_probability"] != 0.123).all()


def test_extra_snapshot_times_are_computed(written: tuple[Path, Path]) -> None:
    # a time inside a day is skipped: the oracle runs in whole days
    got = dataset_oracle(written[0], as_of=["2024-07-15", "2024-07-15T06:00:00Z", AS_OF[0]])
    assert got is not None
    times = [pd.Timestamp(t, tz="UTC") for t in (AS_OF[0], "2024-07-15", AS_OF[1])]
    assert sorted(got["as_of"].unique()) == times
    events = pd.read_parquet(written[0] / "events.parquet")
    scenario = json.loads((written[0] / "metadata.json").read_text())["parameters"]
    from customer_lifecycle.simulator.config import scenario_from_dict

    direct = posterior(events, scenario_from_dict(scenario), "2024-07-15")
    mid = got[got["as_of"] == times[1]].reset_index(drop=True)
    pd.testing.assert_frame_equal(mid, direct.astype({"as_of": mid["as_of"].dtype}), rtol=1e-12)


def test_a_log_that_was_not_simulated_has_no_oracle(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    events = tmp_path / "events.parquet"
    events.write_bytes((written[0] / "events.parquet").read_bytes())
    assert dataset_oracle(events) is None  # no metadata beside it
    (tmp_path / "metadata.json").write_text(json.dumps({"generator": "crm-export"}))
    assert dataset_oracle(events) is None  # metadata of something else
