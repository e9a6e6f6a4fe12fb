"""Every YAML configuration goes through one loader: one-line errors that name the field.

The five kinds (event mapping, feature definition, taxonomy, rulebook, playbook) are
pydantic models read by ``features.config_file.load_config``; these tests hold them to
the same promise: a bad file is refused in one line naming the file, the place in it
and the problem, and a misspelt key or name comes with the closest valid one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from customer_lifecycle.features.definition import FeatureDefinition, load_definition
from customer_lifecycle.features.mapping import EventMapping, load_mapping
from customer_lifecycle.features.taxonomy import load_taxonomy
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.training.labels import load_rulebook


def _rulebook(path: Path) -> Any:
    return load_rulebook(path, taxonomy=load_taxonomy(), definition=load_definition())


LOADERS: dict[str, Callable[[Path], Any]] = {
    "mapping": load_mapping,
    "definition": load_definition,
    "taxonomy": load_taxonomy,
    "rulebook": _rulebook,
    "playbook": load_playbook,
}

GROUPS = "groups: {purchase: [purchase], refund: [refund]}\n"
RULE = "rules:\n  - stage: retention\n"


def _refused(tmp_path: Path, kind: str, text: str) -> str:
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        LOADERS[kind](path)
    message = str(info.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert str(path) in message, f"the file is not named: {message!r}"
    return message


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        # mapping: a column mapped to a list instead of a name
        ("mapping", "columns: {customer_id: [a, b]}\n", "columns.customer_id must be a name"),
        # mapping: `event_types` given as a list
        ("mapping", "event_types: [purchase]\n", "'event_types' must be a mapping, got a list"),
        # definition: a window that is not a whole number
        (
            "definition",
            GROUPS + "count_windows_days: [7, soon]\n",
            "'count_windows_days[1]' must be a whole number, got 'soon'",
        ),
        # definition: a group that names an event type nobody defined
        (
            "definition",
            "groups: {purchase: [purchase, teleport]}\n",
            "groups.purchase[1] names unknown event type 'teleport'",
        ),
        # definition: the trend's windows the wrong way round
        (
            "definition",
            GROUPS + "trend: {recent_days: 90, baseline_days: 30}\n",
            "trend needs 0 < recent_days < baseline_days",
        ),
        # definition: no groups at all
        ("definition", "count_windows_days: [7]\n", "needs a 'groups'"),
        # taxonomy: a stage entry without its name
        ("taxonomy", "stages:\n  - synonyms: [x]\n", "'stages[0]' needs a 'name'"),
        # taxonomy: an empty stage list
        ("taxonomy", "stages: []\n", "'stages' must not be empty"),
        # taxonomy: the same stage twice
        ("taxonomy", "stages: [{name: a}, {name: a}]\n", "stage names repeat"),
        # rulebook: a condition with two parts instead of three
        (
            "rulebook",
            RULE + "    when: [[purchase_days, 1]]\n",
            "rules[0].when[0] must be [feature, op, number]",
        ),
        # rulebook: an operator that does not exist
        (
            "rulebook",
            RULE + "    when: [[purchase_days, '=>', 1]]\n",
            "'rules[0].when[0][1]' is '=>', not one of <, <=, >, >=, ==, !=",
        ),
        # rulebook: a number that is not one
        (
            "rulebook",
            RULE + "    when: [[purchase_days, '>=', many]]\n",
            "'rules[0].when[0][2]' must be a number, got 'many'",
        ),
        # rulebook: a stage the taxonomy does not know
        ("rulebook", "rules:\n  - stage: lurk\n", "rules[0].stage names unknown stage 'lurk'"),
        # playbook: an entry that is text instead of {action, description}
        (
            "playbook",
            "stages: {retention: {high: call them}}\n",
            "'stages.retention.high' must be a mapping, got 'call them'",
        ),
        # playbook: a risk band that does not exist, nested two levels down
        ("playbook", "default: {urgent: {action: a}}\n", "default key 'urgent' is not a risk band"),
    ],
)
def test_a_malformed_file_is_one_line_naming_the_field(
    tmp_path: Path, kind: str, text: str, expected: str
) -> None:
    assert expected in _refused(tmp_path, kind, text)


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        # mapping: a misspelt top-level key
        ("mapping", "event_type: {}\n", "unknown key 'event_type'; did you mean 'event_types'?"),
        # mapping: a misspelt time unit
        ("mapping", "timestamp_unit: mss\n", "did you mean 'ms'?"),
        # definition: a misspelt key inside `trend`
        (
            "definition",
            GROUPS + "trend: {recent_day: 30}\n",
            "trend has unknown key 'recent_day'; did you mean 'recent_days'?",
        ),
        # definition: a misspelt group name where a group is referred to
        (
            "definition",
            GROUPS + "purchase_group: purchases\n",
            "purchase_group names unknown group 'purchases'; did you mean 'purchase'?",
        ),
        # taxonomy: a misspelt key of a stage entry
        ("taxonomy", "stages: [{name: a, synonym: [b]}]\n", "did you mean 'synonyms'?"),
        # rulebook: a misspelt key of a rule
        ("rulebook", "rules:\n  - stage: retention\n    wehn: []\n", "did you mean 'when'?"),
        # rulebook: a misspelt feature column
        (
            "rulebook",
            RULE + "    when: [[purchase_dayz, '>=', 1]]\n",
            "names unknown feature 'purchase_dayz'; did you mean 'purchase_days'?",
        ),
        # rulebook: a misspelt stage
        ("rulebook", "rules:\n  - stage: retension\n", "did you mean 'retention'?"),
        # playbook: a misspelt key of an action entry
        (
            "playbook",
            "default: {any: {action: a, descripton: d}}\n",
            "default.any has unknown key 'descripton'; did you mean 'description'?",
        ),
        # playbook: a misspelt top-level key
        ("playbook", "stage: {}\n", "unknown key 'stage'; did you mean 'stages'?"),
    ],
)
def test_a_misspelt_key_or_name_gets_a_suggestion(
    tmp_path: Path, kind: str, text: str, expected: str
) -> None:
    assert expected in _refused(tmp_path, kind, text)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_missing_file_is_named(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match="nowhere.yaml does not exist"):
        LOADERS[kind](tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_broken_yaml_names_its_line(tmp_path: Path, kind: str) -> None:
    message = _refused(tmp_path, kind, "stages:\n  - name: a\n  bad: [\n")
    assert "is not valid YAML at line" in message


def test_a_key_without_a_value_takes_its_default(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text("columns:\nevent_types: {view_item: product_view}\ntimestamp_unit:\n")
    assert load_mapping(path) == EventMapping(event_types={"view_item": "product_view"})


def test_a_definition_built_in_python_follows_the_file_rules() -> None:
    # The constructor checks with the file's model, so both routes refuse the same way.
    with pytest.raises(ValueError, match="groups key 'all' is reserved") as info:
        FeatureDefinition(groups={"all": ("login",)})
    assert "\n" not in str(info.value)


def test_shipped_configurations_load() -> None:
    assert load_definition().feature_names()
    assert load_taxonomy().stages[0] == "awareness"
    assert _rulebook_default().default == "awareness"
    assert load_playbook().source == "the shipped playbook"
    mapping = load_mapping("ga4")
    assert mapping is not None and mapping.timestamp_unit == "us"


def _rulebook_default() -> Any:
    return load_rulebook(taxonomy=load_taxonomy(), definition=load_definition())
