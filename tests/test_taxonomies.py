"""Any taxonomy end to end: train, evaluate, score and serve a model of other stages.

The end-to-end tests (marked slow) use two taxonomies that share no stage name with
the default one: three stages of a clickstream shop (``new``, ``returning``,
``loyal``, from a file) and HubSpot's default lifecycle stages (shipped, selected by
name). Their labels are the simulator's true stages mapped onto them; the events are
copied away from the simulator's files, so nothing treats the log as simulated. Each
trains through the command line into a real SQLite MLflow store, then is evaluated and
scored through the command line and served through ``create_app``. The fast tests
before them hold the taxonomy file, the rulebook's fit and the playbook's default to
their documented rules.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from customer_lifecycle.features.definition import load_definition
from customer_lifecycle.features.events import load_events
from customer_lifecycle.features.taxonomy import Taxonomy, load_taxonomy
from customer_lifecycle.scoring.bundle import VALUE_COLUMNS
from customer_lifecycle.scoring.pyfunc import load_bundle
from customer_lifecycle.serving.app import create_app
from customer_lifecycle.serving.playbook import load_playbook
from customer_lifecycle.simulator import write_dataset
from customer_lifecycle.training.labels import rulebook_for
from customer_lifecycle.training.train import mlflow_metrics
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from typer.testing import CliRunner

from customer_lifecycle.cli import app
from tests.serving.support import AUTH, busy_customers, customer_payload, settings
from tests.tracking import tracking_store

AS_OF = "2024-12-31"
THREE = ("new", "returning", "loyal")
HUBSPOT = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
)
THREE_STAGE_FILE = """\
stages:
  - name: new
    synonyms: [first-time]
  - name: returning
    synonyms: [repeat]
  - name: loyal
    synonyms: [fan]
"""
# Rules over the same features as the shipped rulebook, for the three stages.
THREE_STAGE_RULES = """\
rules:
  - stage: fan
    when:
      - [count_advocacy_365d, ">=", 1]
      - [purchase_days, ">=", 2]
  - stage: returning
    when:
      - [purchase_days, ">=", 1]
default: new
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh SQLite tracking store that MLFLOW_TRACKING_URI points at."""
    root = tmp_path_factory.mktemp("taxonomies")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp, tracking_store(uri):
        mp.chdir(root)  # artifacts land here, not in the repository
        yield root


@pytest.fixture(scope="module")
def shop(store: Path) -> dict[str, Path]:
    """A simulated log copied away from the simulator's files, and its true stages."""
    sim = store / "sim"
    # enough that each of HubSpot's seven stages has the examples training needs, no more
    write_dataset(sim, customers=1000, seed=5, as_of=[AS_OF])
    data = store / "shop"
    data.mkdir()
    shutil.copy(sim / "events.parquet", data / "events.parquet")
    truth = pd.read_csv(sim / "labels.csv", dtype=str)
    return {"events": data / "events.parquet", "data": data, "truth": truth}  # type: ignore[dict-item]


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def _model_uri(stdout: str) -> str:
    return stdout.split("model URI: ")[1].split()[0]


def _run_id(stdout: str) -> str:
    return stdout.split("run id: ")[1].split()[0]


def _served(model_uri: str, events: pd.DataFrame, **overrides: object) -> list[dict]:
    """Scores of 20 customers from the HTTP API serving ``model_uri``."""
    ids = busy_customers(events, AS_OF, 20)
    body = {
        "as_of": f"{AS_OF}T00:00:00Z",
        "customers": [customer_payload(events, c) for c in ids],
    }
    with TestClient(create_app(settings(model_uri, **overrides))) as client:
        model = client.get("/v1/model", headers=AUTH)
        assert model.status_code == 200, model.text
        stages = model.json()["stages"]
        r = client.post("/v1/scores", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    scores = r.json()["scores"]
    for score in scores:
        assert list(score["stage_probabilities"]) == stages
        assert score["stage"] in stages
    return scores


# -- the taxonomy, the rulebook's fit and the playbook's default, on their own ------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # one stage: nothing to tell apart
        ("stages: [{name: a}]", "needs 2 to 12 stages, got 1"),
        # thirteen stages: more than a model stores
        ("stages: [" + ", ".join(f"{{name: s{i}}}" for i in range(13)) + "]", "got 13"),
        # two names that differ only in case: labels are matched without case
        ("stages: [{name: New}, {name: new}]", "stage names repeat"),
        # one synonym for two stages
        ("stages: [{name: a, synonyms: [x]}, {name: b, synonyms: [X]}]", "given to both"),
        # a synonym that is another stage's name
        ("stages: [{name: a, synonyms: [b]}, {name: b}]", "is the name of another stage"),
        # a backtick would break the p_<stage> column in Spark SQL
        ("stages: [{name: 'a`b'}, {name: c}]", "control character or a backtick"),
        # a name with a space at its end would not survive a CSV round trip
        ("stages: [{name: 'a '}, {name: c}]", "starts or ends with a space"),
    ],
)
def test_a_bad_taxonomy_is_one_line_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "stages.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        load_taxonomy(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_any_names_from_two_to_twelve_stages(tmp_path: Path) -> None:
    path = tmp_path / "stages.yaml"
    path.write_text("stages: [{name: Neu}, {name: Stammkunde, synonyms: [Wiederkäufer]}]")
    taxonomy = load_taxonomy(path)
    assert taxonomy.stages == ("Neu", "Stammkunde")
    assert taxonomy.normalise(" wiederkäufer ") == "Stammkunde"
    twelve = tmp_path / "twelve.yaml"
    twelve.write_text("stages: [" + ", ".join(f"{{name: s{i}}}" for i in range(12)) + "]")
    assert len(load_taxonomy(twelve).stages) == 12


def test_a_taxonomy_is_named_or_a_path(tmp_path: Path) -> None:
    assert load_taxonomy("default") == load_taxonomy()
    with pytest.raises(ValueError, match="shipped taxonomies: default, hubspot"):
        load_taxonomy(tmp_path / "hubspotty.yaml")


def test_a_model_s_taxonomy_round_trips_and_a_bad_one_is_refused() -> None:
    taxonomy = load_taxonomy("hubspot")
    assert Taxonomy.from_dict(taxonomy.to_dict(), source="m") == taxonomy
    with pytest.raises(ValueError, match="^m: synonym 'x' maps to 'c', which is not a stage$"):
        Taxonomy.from_dict({"stages": ["a", "b"], "synonyms": {"x": "c"}}, source="m")
    with pytest.raises(ValueError, match="^m: the taxonomy needs a list of stages$"):
        Taxonomy.from_dict({}, source="m")


def test_stage_names_become_metric_names_mlflow_accepts() -> None:
    metrics = {"valid_stage_f1_opt-in/out": 0.5, "valid_stage_f1_vip:gold": 0.25, "x": float("nan")}
    assert mlflow_metrics(metrics) == {
        "valid_stage_f1_opt-in_out": 0.5,
        "valid_stage_f1_vip_gold": 0.25,
    }


def test_the_shipped_rulebook_is_skipped_for_stages_it_does_not_name() -> None:
    rulebook, note = rulebook_for(
        None, taxonomy=Taxonomy(stages=THREE), definition=load_definition()
    )
    assert rulebook is None
    assert note.startswith("skipped: the shipped rulebook names stages the taxonomy lacks")


def test_a_given_rulebook_that_does_not_fit_is_an_error(tmp_path: Path) -> None:
    # a rulebook passed for the run is meant for its stages: a stage it lacks is a typo
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - stage: loyl\ndefault: new\n")
    with pytest.raises(ValueError, match="names unknown stage 'loyl'.*did you mean 'loyal'"):
        rulebook_for(path, taxonomy=Taxonomy(stages=THREE), definition=load_definition())


def test_a_rulebook_fits_through_the_taxonomy_s_synonyms() -> None:
    # the shipped rulebook fits a taxonomy whose synonyms cover the default stage names
    synonyms = {"awareness": "new", "consideration": "new", "purchase": "returning"}
    synonyms |= {"retention": "returning", "advocacy": "loyal"}
    taxonomy = Taxonomy(stages=THREE, synonyms=synonyms)
    rulebook, note = rulebook_for(None, taxonomy=taxonomy, definition=load_definition())
    assert note == "the shipped rulebook"
    assert rulebook is not None and rulebook.default == "new"
    assert [stage for stage, _ in rulebook.rules] == ["loyal", "returning", "returning", "new"]


def test_the_shipped_playbook_serves_any_stages_with_its_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        table = load_playbook().resolve(THREE)
    assert {a.action for a in table.values()} == {"review_manually"}
    assert len(table) == 3 * 3
    assert "new, returning, loyal take the default" in caplog.text
    # a model of the default stages still gets the stages' own actions
    assert load_playbook().resolve(load_taxonomy().stages)["retention", "high"].action == (
        "personal_offer"
    )


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("", True),  # by default a stage the model lacks is a typo
        ("unknown_stages: refuse\n", True),  # said explicitly
        ("unknown_stages: ignore\n", False),  # a playbook shared by several taxonomies
    ],
)
def test_a_playbook_naming_other_stages(tmp_path: Path, line: str, refused: bool) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        line + "default: {any: {action: call}}\nstages: {loyal: {any: {action: thank}}, "
        "advocacy: {any: {action: refer}}}\n"
    )
    if refused:
        with pytest.raises(ValueError, match="'advocacy' is not a stage of the model"):
            load_playbook(path).resolve(THREE)
    else:
        table = load_playbook(path).resolve(THREE)
        assert table["loyal", "high"].action == "thank"
        assert table["new", "low"].action == "call"


# -- three stages from a file ----------------------------------------------------------------


@pytest.fixture(scope="module")
def three(store: Path, shop: dict) -> dict[str, object]:
    """The three-stage taxonomy file, its labels, and a model trained through the CLI."""
    data: Path = shop["data"]
    taxonomy = data / "three.yaml"
    taxonomy.write_text(THREE_STAGE_FILE)
    onto = {
        "awareness": "new",
        "consideration": "new",
        "purchase": "returning",
        "retention": "Repeat",  # a synonym, in another case
        "advocacy": "loyal",
    }
    labels = shop["truth"].assign(stage=shop["truth"]["stage"].map(onto))
    labels.to_csv(data / "three-labels.csv", index=False)
    code, out, err = _invoke(
        "train",
        "--cv-folds",  # cross-fitting is not what this module tests
        "2",
        "--events",
        str(shop["events"]),
        "--labels",
        str(data / "three-labels.csv"),
        "--taxonomy",
        str(taxonomy),
        "--register",
        "three",
        "--promote-if-better",
        "--experiment",
        "three-stages",
    )
    assert code == 0, err
    return {"taxonomy": taxonomy, "labels": data / "three-labels.csv", "out": out, "err": err}


@pytest.mark.slow
def test_three_stages_train_and_the_run_says_the_rulebook_was_skipped(three: dict) -> None:
    # the shipped rulebook names the default stages: a message, a param, a tag, no scores
    err = three["err"]
    assert "rulebook baseline skipped: the shipped rulebook names stages the taxonomy " in err
    assert "lacks (advocacy, retention, purchase, consideration, awareness)" in err
    run = MlflowClient().get_run(_run_id(three["out"]))
    assert run.data.params["rulebook_baseline"].startswith("skipped: the shipped rulebook")
    assert run.data.tags["rulebook_baseline"] == "skipped"
    assert run.data.params["taxonomy"] == "new,returning,loyal"
    assert not [k for k in run.data.metrics if "rulebook" in k]
    for stage in THREE:
        assert f"valid_stage_f1_{stage}" in run.data.metrics
    assert "baseline_majority_stage_macro_f1" in run.data.metrics
    bundle = load_bundle(_model_uri(three["out"]))
    assert bundle.stages == THREE
    assert bundle.metadata["taxonomy"]["synonyms"] == {
        "first-time": "new",
        "repeat": "returning",
        "fan": "loyal",
    }


@pytest.mark.slow
def test_three_stages_evaluate_with_the_model_s_own_taxonomy(three: dict, shop: dict) -> None:
    # no --taxonomy: the labels' synonym "Repeat" is read through the model's taxonomy
    model = _model_uri(three["out"])
    code, out, err = _invoke(
        "evaluate", "--events", str(shop["events"]), "--model", model, "--labels",
        str(three["labels"]),
    )  # fmt: skip
    assert code == 0, err
    metrics = dict(line.split("\t") for line in out.splitlines())
    assert {f"stage_f1_{s}" for s in THREE} <= set(metrics)
    assert float(metrics["stage_accuracy"]) > 0.5


@pytest.mark.slow
def test_evaluate_refuses_a_taxonomy_of_other_stages(three: dict, shop: dict) -> None:
    model = _model_uri(three["out"])
    args = ["evaluate", "--events", str(shop["events"]), "--model", model]
    code, _, err = _invoke(*args, "--labels", str(three["labels"]), "--taxonomy", "hubspot")
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: the model's stages {list(THREE)} differ from the taxonomy's {list(HUBSPOT)}"
    ]


@pytest.mark.slow
def test_three_stages_score_to_a_file(three: dict, shop: dict, store: Path) -> None:
    out = store / "three-scores.csv"
    code, _, err = _invoke(
        "score", "--events", str(shop["events"]), "--model", _model_uri(three["out"]),
        "--as-of", AS_OF, "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    scores = pd.read_csv(out)
    # the stage probabilities, the forecast of the latent-stage model 90 days ahead, then
    # the customer value, whatever the stages are called
    assert list(scores.columns) == [
        "customer_id", "stage", "churn_probability", "churn_risk", "p_new", "p_returning",
        "p_loyal", "p_next_new", "p_next_returning", "p_next_loyal", "expected_purchases",
        "expected_spend", "next_purchase_date", "value_tier",
    ]  # fmt: skip
    assert set(scores["stage"]) <= set(THREE)
    assert scores[["p_new", "p_returning", "p_loyal"]].sum(axis=1).round(6).eq(1).all()
    forecast = scores[["p_next_new", "p_next_returning", "p_next_loyal"]]
    assert forecast.sum(axis=1).round(6).eq(1).all()


@pytest.mark.slow
def test_three_stages_serve_with_the_shipped_playbook_s_default(three: dict, shop: dict) -> None:
    # the shipped playbook names none of these stages: every one takes its default action
    events, _ = load_events(shop["events"])
    scores = _served("models:/three@champion", events)
    assert {s["next_best_action"]["action"] for s in scores} == {"review_manually"}


@pytest.mark.slow
def test_without_labels_a_non_fitting_rulebook_is_refused_in_one_line(shop: dict) -> None:
    taxonomy = shop["data"] / "three.yaml"
    taxonomy.write_text(THREE_STAGE_FILE)
    code, _, err = _invoke(
        "train", "--events", str(shop["events"]), "--as-of", AS_OF, "--taxonomy", str(taxonomy),
    )  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        "error: a label file (--labels) or a rulebook for the stages new, returning, loyal "
        "(--rulebook) is needed: the shipped rulebook names stages the taxonomy lacks "
        "(advocacy, retention, purchase, consideration, awareness)"
    ]


@pytest.mark.slow
def test_without_labels_a_rulebook_for_the_stages_labels_and_is_the_baseline(
    store: Path, shop: dict
) -> None:
    data: Path = shop["data"]
    (data / "three.yaml").write_text(THREE_STAGE_FILE)
    (data / "three-rules.yaml").write_text(THREE_STAGE_RULES)
    code, out, err = _invoke(
        "train", "--cv-folds", "2", "--events", str(shop["events"]), "--as-of", AS_OF,
        "--taxonomy", str(data / "three.yaml"), "--rulebook", str(data / "three-rules.yaml"),
        "--experiment", "three-stage-rules",
    )  # fmt: skip
    assert code == 0, err
    assert "no label file: stage labels come from the rulebook" in err
    run = MlflowClient().get_run(_run_id(out))
    assert run.data.params["rulebook_baseline"] == f"rulebook {data / 'three-rules.yaml'}"
    assert run.data.tags["rulebook_baseline"] == "run"
    # the model imitates its own labels' rules
    assert run.data.metrics["baseline_rulebook_stage_accuracy"] == 1.0


# -- HubSpot's lifecycle stages, shipped --------------------------------------------------------


@pytest.fixture(scope="module")
def hubspot(store: Path, shop: dict) -> dict[str, object]:
    """Labels in HubSpot's stages (as its interface names them) and a model trained on them."""
    truth: pd.DataFrame = shop["truth"]
    number = truth["customer_id"].str[1:].astype(int)
    # the simulator's consideration spreads over HubSpot's four pre-sale stages
    leads = pd.Series(["Lead", "Marketing Qualified Lead", "SQL", "Opportunity"])
    onto = {
        "awareness": "Subscriber",
        "purchase": "Customer",
        "retention": "customer",
        "advocacy": "Evangelist",
    }
    stage = truth["stage"].map(onto)
    considering = truth["stage"] == "consideration"
    stage[considering] = leads[number[considering] % 4].to_numpy()
    labels = shop["data"] / "hubspot-labels.csv"
    truth.assign(stage=stage).to_csv(labels, index=False)
    code, out, err = _invoke(
        "train", "--cv-folds", "2", "--events", str(shop["events"]), "--labels", str(labels),
        "--taxonomy", "hubspot", "--register", "hubspot", "--promote-if-better",
        "--experiment", "hubspot",
    )  # fmt: skip
    assert code == 0, err
    return {"labels": labels, "out": out, "err": err}


def test_hubspot_is_shipped_and_selected_by_name() -> None:
    taxonomy = load_taxonomy("HubSpot")
    assert taxonomy.stages == HUBSPOT
    assert taxonomy.normalise("Marketing Qualified Lead") == "marketingqualifiedlead"
    assert taxonomy.normalise("MQL") == "marketingqualifiedlead"
    assert taxonomy.normalise("sales qualified lead") == "salesqualifiedlead"


@pytest.mark.slow
def test_hubspot_trains_evaluates_and_scores(hubspot: dict, shop: dict, store: Path) -> None:
    assert "rulebook baseline skipped" in hubspot["err"]
    model = _model_uri(hubspot["out"])
    assert load_bundle(model).stages == HUBSPOT
    run = MlflowClient().get_run(_run_id(hubspot["out"]))
    assert run.data.params["taxonomy"] == ",".join(HUBSPOT)
    assert {f"valid_stage_support_{s}" for s in HUBSPOT} <= set(run.data.metrics)

    code, out, err = _invoke(
        "evaluate", "--events", str(shop["events"]), "--model", model,
        "--labels", str(hubspot["labels"]), "--taxonomy", "hubspot",
    )  # fmt: skip
    assert code == 0, err
    metrics = dict(line.split("\t") for line in out.splitlines())
    assert float(metrics["stage_support_evangelist"]) > 0

    scores_path = store / "hubspot-scores.parquet"
    code, _, err = _invoke(
        "score", "--events", str(shop["events"]), "--model", model, "--as-of", AS_OF,
        "--out", str(scores_path),
    )  # fmt: skip
    assert code == 0, err
    scores = pd.read_parquet(scores_path)
    assert list(scores.columns[4:]) == [f"p_{s}" for s in HUBSPOT] + [
        f"p_next_{s}" for s in HUBSPOT
    ] + list(VALUE_COLUMNS)
    assert set(scores["stage"]) <= set(HUBSPOT)


@pytest.mark.slow
def test_hubspot_serves_with_a_playbook_for_some_of_its_stages(
    hubspot: dict, shop: dict, store: Path
) -> None:
    # a playbook written for this taxonomy: two stages named, the rest take the default
    path = store / "hubspot-playbook.yaml"
    path.write_text(
        "default: {any: {action: nurture, description: Keep in the nurture flow.}}\n"
        "stages:\n"
        "  customer: {any: {action: cross_sell}, high: {action: win_back}}\n"
        "  subscriber: {any: {action: welcome_series}}\n"
    )
    table = load_playbook(path).resolve(HUBSPOT)
    assert table["lead", "low"].action == "nurture"
    assert table["customer", "high"].action == "win_back"
    events, _ = load_events(shop["events"])
    scores = _served("models:/hubspot@champion", events, playbook_path=path)
    for score in scores:
        expected = table[score["stage"], score["churn_risk"]].action
        assert score["next_best_action"]["action"] == expected
    actions = {s["next_best_action"]["action"] for s in scores}
    assert actions & {"cross_sell", "win_back", "welcome_series"}  # named stages are used
