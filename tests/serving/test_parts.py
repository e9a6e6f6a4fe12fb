"""The serving package's parts on their own: settings, playbook, reasons, logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from customer_lifecycle.scoring.bundle import ModelBundle
from customer_lifecycle.serving.logs import JsonFormatter
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.serving.predict import ServedModel
from customer_lifecycle.serving.reasons import split_multiclass, top_contributions
from customer_lifecycle.serving.settings import Settings, get_settings, settings_with

from tests.serving.support import Trained

STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")

# -- settings ----------------------------------------------------------------------------------


def test_settings_come_from_lifecycle_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k3\n# not a key\n\n")
    monkeypatch.setenv("LIFECYCLE_API_KEYS", " k1, k2 ,")
    monkeypatch.setenv("LIFECYCLE_API_KEYS_FILE", str(keys))
    monkeypatch.setenv("LIFECYCLE_MAX_IN_FLIGHT", "5")
    monkeypatch.setenv("LIFECYCLE_MODEL_URI", "models:/x@champion")
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s is get_settings()  # cached
        assert s.all_api_keys() == (b"k1", b"k2", b"k3")
        assert s.max_in_flight == 5
        assert s.model_uri == "models:/x@champion"
        assert "k1" not in repr(s)  # secrets stay out of reprs and logs
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "no API keys"),  # keyless without allow_anonymous
        ({"api_keys": "k", "max_in_flight": 0}, "max_in_flight"),  # a limit below 1
    ],
)
def test_bad_settings_are_one_line_errors(
    monkeypatch: pytest.MonkeyPatch, overrides: dict, message: str
) -> None:
    for var in ("LIFECYCLE_API_KEYS", "LIFECYCLE_API_KEYS_FILE", "LIFECYCLE_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=message) as err:
        settings_with(**overrides)
    assert "\n" not in str(err.value)


def test_unreadable_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read API keys file .*missing"):
        Settings(api_keys="k", api_keys_file=tmp_path / "missing")


# -- playbook ----------------------------------------------------------------------------------


def test_shipped_playbook_covers_every_stage_and_band() -> None:
    table = load_playbook().resolve(STAGES)
    assert len(table) == len(STAGES) * 3
    assert table["retention", "high"].action == "personal_offer"
    assert table["advocacy", "low"].action == "referral_invitation"
    assert table["consideration", "low"].action == "comparison_content"
    assert table["purchase", "medium"].action == "onboarding_help"


def test_unlisted_stage_takes_the_default(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "default: {any: {action: call, description: d}}\n"
        "stages: {retention: {high: {action: offer, description: o}}}\n"
    )
    table = load_playbook(path).resolve(STAGES)
    assert table["retention", "high"].action == "offer"
    assert table["retention", "low"].action == "call"
    assert table["awareness", "medium"].action == "call"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages: {retention: {urgent: {action: a}}}", "'urgent' is not a risk band"),  # band
        ("stages: {retentoin: {any: {action: a}}}", "'retentoin' is not a stage"),  # typo
        ("stages: {retention: {any: {description: d}}}", "needs an 'action'"),  # no action
        ("stages: {retention: {any: {action: a}}}", "no action for stage 'awareness'"),  # gap
        ("actions: {}", "unknown key 'actions'"),  # top-level key
        ("stages: [", "not valid YAML"),  # syntax
    ],
)
def test_bad_playbooks_are_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_playbook(path).resolve(STAGES)
    assert "bad.yaml" in str(err.value)


# -- reasons -----------------------------------------------------------------------------------


def test_top_contributions_orders_by_absolute_size() -> None:
    contrib = np.array([[0.1, -3.0, 2.0, 0.0, -2.5], [5.0, 0.01, 0.0, 0.0, -0.1]])
    assert top_contributions(contrib, 3).tolist() == [[1, 4, 2], [0, 4, 1]]
    assert top_contributions(contrib, 10).shape == (2, 5)  # capped at the feature count
    assert top_contributions(contrib[:0], 3).shape == (0, 3)


@pytest.mark.parametrize(
    "rows",
    [
        3,  # a small request: one sort per row
        40,  # a large one: partition, then sort the chosen few
    ],
)
def test_top_contributions_are_the_largest_whatever_the_request_size(rows: int) -> None:
    rng = np.random.default_rng(rows)
    contrib = rng.normal(size=(rows, 50))  # continuous: no ties
    top = top_contributions(contrib, 4)
    expected = np.argsort(-np.abs(contrib), axis=1)[:, :4]
    np.testing.assert_array_equal(top, expected)


def test_per_class_boosters_reproduce_the_multiclass_head_exactly(trained: Trained) -> None:
    bundle = ModelBundle.load(trained.v1_dir)
    parts = split_multiclass(bundle.stage_booster)
    assert len(parts) == len(bundle.stages)
    rng = np.random.default_rng(1)
    X = rng.exponential(20, size=(50, len(bundle.feature_names)))
    X[rng.random(X.shape) < 0.3] = np.nan
    full = bundle.stage_booster.predict(X, pred_contrib=True).reshape(50, len(parts), -1)
    for k, part in enumerate(parts):
        np.testing.assert_array_equal(part.predict(X, pred_contrib=True), full[:, k, :])


def test_the_served_model_scores_with_the_trees_the_bundle_checked(trained: Trained) -> None:
    """No second flattening and probing at build: the heads are the bundle's own."""
    bundle = ModelBundle.load(trained.v1_dir)
    model = ServedModel.build(
        bundle, name="m", version="1", uri="u", playbook=load_playbook(), reasons_method="path"
    )
    assert model._stage_trees is bundle.stage_trees
    assert model._churn_trees is bundle.churn_trees


def test_split_refuses_a_single_output_booster(trained: Trained) -> None:
    with pytest.raises(ValueError, match="one output"):
        split_multiclass(ModelBundle.load(trained.v1_dir).churn_booster)


# -- logs --------------------------------------------------------------------------------------


def test_log_lines_are_json_with_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "serving.access", "levelname": "INFO", "msg": "request", "request_id": "abc"}
    )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "request"
    assert doc["request_id"] == "abc"
    assert doc["level"] == "info"
