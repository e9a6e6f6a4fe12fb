"""A broken or hostile bundle is refused with one line, never a crash or NaN scores.

LightGBM's own text parser aborts the whole process on some malformed files (a child
index out of range, a tree cut in the middle), so these tests would not merely fail but
kill the test run if a malformed file ever reached it.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from customer_lifecycle.features.contract import CUSTOMER_ID
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.scoring.bundle import (
    BUNDLE_FILE,
    CHURN_FILE,
    STAGE_FILE,
    ModelBundle,
)
from typer.testing import CliRunner

from customer_lifecycle.cli import app

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    definition = load_definition()
    names = definition.feature_names()
    rng = np.random.default_rng(0)
    X = rng.exponential(5.0, size=(400, len(names)))
    y_stage = rng.integers(0, len(STAGES), 400)
    y_churn = (X[:, 0] > 5).astype(int)
    params = {"verbose": -1, "num_threads": 1, "num_leaves": 7}
    stage = lgb.train(
        {**params, "objective": "multiclass", "num_class": len(STAGES)},
        lgb.Dataset(X, y_stage, feature_name=names),
        num_boost_round=8,
    )
    churn = lgb.train(
        {**params, "objective": "binary"}, lgb.Dataset(X, y_churn, feature_name=names), 8
    )
    bundle = ModelBundle(
        definition=definition, stages=STAGES, stage_booster=stage, churn_booster=churn
    )
    return bundle.save(tmp_path_factory.mktemp("bundle") / "good")


def _copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "bundle"))


def _edit_json(key: str, value: object) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        doc = json.loads((path / BUNDLE_FILE).read_text())
        if value is _DELETE:
            del doc[key]
        else:
            doc[key] = value
        (path / BUNDLE_FILE).write_text(json.dumps(doc))  # NaN and Infinity as JSON allows

    return edit


_DELETE = object()


def _cut(file: str, fraction: float) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        text = (path / file).read_bytes()
        (path / file).write_bytes(text[: int(len(text) * fraction)])

    return edit


def _replace_line(
    file: str, prefix: str, make: Callable[[list[str]], str]
) -> Callable[[Path], None]:
    """Rewrite the first line starting with ``prefix``, keeping ``tree_sizes`` consistent
    (so that the edit is caught by the check it targets, not by a length mismatch)."""

    def edit(path: Path) -> None:
        lines = (path / file).read_text().split("\n")
        i = next(i for i, line in enumerate(lines) if line.startswith(prefix))
        lines[i] = prefix + make(lines[i][len(prefix) :].split())
        text = "\n".join(lines)
        starts = [m.start() for m in re.finditer(r"^Tree=", text, flags=re.M)]
        starts.append(text.index("end of trees"))
        sizes = " ".join(str(b - a) for a, b in itertools.pairwise(starts))
        text = re.sub(r"^tree_sizes=.*$", f"tree_sizes={sizes}", text, count=1, flags=re.M)
        (path / file).write_text(text)

    return edit


def _write(file: str, content: bytes) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / file).write_bytes(content)

    return edit


def _swap_heads(path: Path) -> None:
    shutil.copy(path / CHURN_FILE, path / STAGE_FILE)


BROKEN = [
    # the tree files
    pytest.param(_cut(STAGE_FILE, 0.05), "stage_model.txt", id="stage file cut in the header"),
    pytest.param(_cut(STAGE_FILE, 0.5), "stage_model.txt", id="stage file cut mid-tree"),
    pytest.param(_cut(CHURN_FILE, 0.99), "churn_model.txt", id="churn file cut near its end"),
    pytest.param(_write(STAGE_FILE, b""), "stage_model.txt", id="empty tree file"),
    pytest.param(_write(CHURN_FILE, b"\xff\xfe\x00garbage"), "not UTF-8", id="binary garbage"),
    pytest.param(
        _replace_line(STAGE_FILE, "left_child=", lambda v: " ".join(["99"] * len(v))),
        "stage_model.txt",
        id="child index out of range (LightGBM aborts on it)",
    ),
    pytest.param(
        _replace_line(CHURN_FILE, "split_feature=", lambda v: " ".join(["100000"] * len(v))),
        "churn_model.txt",
        id="split feature out of range",
    ),
    pytest.param(
        _replace_line(CHURN_FILE, "threshold=", lambda v: " ".join(["x"] * len(v))),
        "non-numeric",
        id="non-numeric threshold",
    ),
    pytest.param(_swap_heads, "stage head has 1 outputs, expected 5", id="heads swapped"),
    pytest.param(lambda p: (p / CHURN_FILE).unlink(), "churn_model.txt is missing", id="no file"),
    # bundle.json
    pytest.param(_write(BUNDLE_FILE, b"{not json"), "not JSON", id="garbled JSON"),
    pytest.param(_write(BUNDLE_FILE, b"[1, 2]"), "JSON object", id="JSON array"),
    pytest.param(_write(BUNDLE_FILE, b"[" * 100_000), "not JSON", id="deeply nested JSON"),
    pytest.param(_edit_json("churn_platt", [float("nan"), 0.0]), "churn_platt", id="NaN Platt"),
    pytest.param(
        _edit_json("churn_platt", [1.0, float("inf")]), "churn_platt", id="infinite Platt"
    ),
    pytest.param(_edit_json("stage_temperature", 0.0), "stage_temperature", id="zero temp."),
    pytest.param(_edit_json("stage_temperature", -1.0), "stage_temperature", id="negative"),
    pytest.param(_edit_json("stages", "awareness"), "stages", id="stages not a list"),
    pytest.param(_edit_json("stages", [1, 2, 3, 4, 5]), "stages", id="stages not strings"),
    pytest.param(_edit_json("stages", ["only"]), "stages", id="one stage"),
    pytest.param(_edit_json("stages", ["a", "a", "b", "c", "d"]), "unique", id="dup stages"),
    pytest.param(_edit_json("stage_weights", [1.0]), "stage_weights", id="weights short"),
    pytest.param(_edit_json("risk_thresholds", [0.9, 0.1]), "risk_thresholds", id="thresholds"),
    pytest.param(_edit_json("horizon_days", 0), "horizon_days", id="zero horizon"),
    pytest.param(_edit_json("stage_temperature", _DELETE), "stage_temperature", id="missing key"),
    pytest.param(_edit_json("format_version", 99), "format 99", id="future format"),
    pytest.param(_edit_json("definition", []), "definition", id="definition not a mapping"),
    pytest.param(
        _edit_json("feature_names", ["x"]), "feature names do not match", id="feature names"
    ),
]


@pytest.mark.parametrize(("corrupt", "message"), BROKEN)
def test_a_broken_bundle_is_refused_in_one_line(
    good: Path, tmp_path: Path, corrupt: Callable[[Path], None], message: str
) -> None:
    path = _copy(good, tmp_path)
    corrupt(path)
    with pytest.raises(ValueError, match="refused") as info:
        ModelBundle.load(path)
    text = str(info.value)
    assert "\n" not in text
    assert message in text


def test_the_intact_bundle_loads_and_its_trees_are_checked(good: Path) -> None:
    bundle = ModelBundle.load(good)
    X = np.random.default_rng(1).exponential(5.0, size=(20, len(bundle.feature_names)))
    raw = bundle.stage_booster.predict(X, raw_score=True)
    assert np.allclose(bundle.stage_trees.raw_scores(X), raw, atol=1e-9)
    assert np.isfinite(bundle.churn_proba(X)).all()


def test_the_cli_refuses_a_broken_model_with_exit_2(good: Path, tmp_path: Path) -> None:
    path = _copy(good, tmp_path)
    _edit_json("churn_platt", [float("nan"), 0.0])(path)
    events = tmp_path / "events.csv"
    pd.DataFrame(
        {CUSTOMER_ID: ["a"], "timestamp": ["2024-01-01"], "event_type": ["page_view"]}
    ).to_csv(events, index=False)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app,
        ["score", "--events", str(events), "--model", str(path), "--as-of", "2024-02-01"]
        + ["--out", str(out)],
    )
    assert result.exit_code == 2, result.output
    assert "churn_platt" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()
