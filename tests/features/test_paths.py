"""No output of a run may overwrite, truncate or land inside one of its inputs (issue 12),
and outputs get the file mode a plain ``open()`` gives."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.paths import refuse_overlaps
from customer_lifecycle.features.streaming import features_file

from tests.features.event_files import ROWS, one_line, write_csv, write_parquet_dir

AS_OF = "2024-02-01"


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "events.csv", ROWS)


@pytest.mark.parametrize(
    ("make_output", "message"),
    [
        # the same name
        (lambda d, e: e, "it is the events file"),
        # the same file spelt another way
        (lambda d, e: d / "." / "sub" / ".." / e.name, "it is the events file"),
        # a symbolic link to the events file
        (lambda d, e: _symlink(d / "link.csv", e), "it is the events file"),
        # a hard link to the events file
        (lambda d, e: _hardlink(d / "hard.csv", e), "it is the events file"),
    ],
)
def test_an_output_that_is_the_input_is_refused(
    tmp_path: Path, events: Path, make_output: object, message: str
) -> None:
    (tmp_path / "sub").mkdir()
    out = make_output(tmp_path, events)  # type: ignore[operator]
    with pytest.raises(ValueError, match=message) as exc:
        refuse_overlaps([("the events file", events)], [("the output", out)])
    assert "nothing was written" in one_line(exc)


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _hardlink(link: Path, target: Path) -> Path:
    os.link(target, link)
    return link


def test_an_output_inside_an_input_directory_is_refused(tmp_path: Path) -> None:
    parts = write_parquet_dir(tmp_path / "events.parquet", ROWS)
    with pytest.raises(ValueError, match="inside the events file"):
        refuse_overlaps([("the events file", parts)], [("the output", parts / "f.parquet")])
    # a hard link, from outside, to one of the directory's files
    outside = tmp_path / "f.parquet"
    os.link(parts / "part-0.parquet", outside)
    with pytest.raises(ValueError, match="part-0.parquet, a file of the events file"):
        refuse_overlaps([("the events file", parts)], [("the output", outside)])
    # an output directory holding the input (Spark writes directories)
    with pytest.raises(ValueError, match="is inside it"):
        refuse_overlaps([("the events file", parts)], [("the output", tmp_path)])


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="it is also the quarantine file"):
        refuse_overlaps(
            [], [("the output", tmp_path / "q.csv"), ("the quarantine file", tmp_path / "q.csv")]
        )


def test_distinct_paths_pass(tmp_path: Path, events: Path) -> None:
    # beside the input, and a name that only starts like it
    refuse_overlaps(
        [("the events file", events), ("the mapping", None)],
        [("the output", tmp_path / "events.csv.out.csv"), ("q", tmp_path / "q.csv")],
    )


def test_load_events_never_writes_its_quarantine_over_the_log(events: Path) -> None:
    before = events.read_bytes()
    with pytest.raises(ValueError, match="refusing to write the quarantine file"):
        load_events(events, quarantine_path=events)
    assert events.read_bytes() == before


@pytest.mark.parametrize(
    "target",
    [
        "out",  # --out is the log
        "quarantine",  # --quarantine is the log: the log would hold only its bad rows
        "both",  # --out is the quarantine file: the summary would name a file overwritten
    ],
)
def test_streaming_refuses_before_writing_anything(
    tmp_path: Path, events: Path, target: str
) -> None:
    before = events.read_bytes()
    out = events if target == "out" else tmp_path / "f.csv"
    quarantine = {"out": None, "quarantine": events, "both": out}[target]
    with pytest.raises(ValueError, match="refusing to write") as exc:
        features_file(events, as_of=AS_OF, out=out, quarantine_path=quarantine)
    one_line(exc)
    assert events.read_bytes() == before
    # not even a spill directory or a temporary file was made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask")
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])  # both writers
def test_outputs_get_the_mode_of_a_plain_open(tmp_path: Path, suffix: str) -> None:
    rows = [*ROWS, {**ROWS[0], "timestamp": "not a time"}]
    events = write_csv(tmp_path / "events.csv", rows)
    out = tmp_path / f"f{suffix}"
    features_file(events, as_of=AS_OF, out=out, quarantine_path=tmp_path / f"q{suffix}")
    load_events(events, quarantine_path=tmp_path / f"q-memory{suffix}")
    # 0o666 less the umask 0o027, not mkstemp's owner-only 0o600
    for path in (out, tmp_path / f"q{suffix}", tmp_path / f"q-memory{suffix}"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name
