"""The compiled tree evaluator: LightGBM's raw scores exactly, additive path attributions.

Models are trained here on small random data built so that every branch of LightGBM's
numerical decision is used: NaN missing values sent left and sent right, zero as the
missing value, no missing value at all (NaN read as 0), a constant feature, single-leaf
trees, dart boosting and an early-stopped model. Rows are drawn with the values where a
decision can go wrong: NaN, signed zeros, values below LightGBM's zero threshold,
infinities, and every split threshold exactly and one ulp either side. The trees are read
from LightGBM's text model: one test checks that reading against the JSON dump, and edited
texts check that the parse refuses what it does not know.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from customer_lifecycle.scoring.trees import (
    MISSING_NAN,
    MISSING_NONE,
    MISSING_ZERO,
    ZERO_THRESHOLD,
    TreeEnsemble,
)
from customer_lifecycle.training.models import DEFAULT_LGB_PARAMS
from hypothesis import given, settings
from hypothesis import strategies as st

N_FEATURES = 8
EDGE_VALUES = (
    np.nan,
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    ZERO_THRESHOLD,
    -ZERO_THRESHOLD,
    np.nextafter(ZERO_THRESHOLD, 1.0),
    1e300,
    -1e300,
    np.inf,
    -np.inf,
)


def _data(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Features with NaNs, zeros and a constant column; a 5-class label that uses them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, 1] = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(2.0, n))  # many zeros
    X[:, 2] = 3.0  # constant: never split on
    X[:, 3] = rng.integers(-2, 3, n).astype(float)  # few values, zero among them
    nan = rng.random((n, N_FEATURES)) < 0.15
    nan[:, 2] = False
    X[nan] = np.nan
    # NaN in column 0 pushes the label up, in column 4 down: missing goes both ways.
    score = (
        np.nan_to_num(X[:, 0], nan=2.5)
        + np.where(X[:, 1] == 0.0, 1.0, -0.3 * np.nan_to_num(X[:, 1]))
        + 0.5 * np.nan_to_num(X[:, 3])
        + np.nan_to_num(X[:, 4], nan=-2.5)
        + rng.normal(scale=0.7, size=n)
    )
    y = np.digitize(score, np.quantile(score, [0.2, 0.4, 0.6, 0.8]))
    return X, y


def _train(params: dict[str, object], rounds: int, *, binary: bool, seed: int = 0) -> lgb.Booster:
    X, y = _data(seed)
    base: dict[str, object] = {
        "num_leaves": 7,
        "min_data_in_leaf": 10,
        "verbose": -1,
        "num_threads": 1,
    }
    if binary:
        base |= {"objective": "binary"}
        y = (y >= 3).astype(int)
    else:
        base |= {"objective": "multiclass", "num_class": 5}
    return lgb.train({**base, **params}, lgb.Dataset(X, y), rounds)


def _early_stopped() -> lgb.Booster:
    X, y = _data(1)
    Xv, yv = _data(2)
    params = {
        "objective": "multiclass",
        "num_class": 5,
        "num_leaves": 15,
        "learning_rate": 0.5,
        "verbose": -1,
        "num_threads": 1,
    }
    train = lgb.Dataset(X, y)
    booster = lgb.train(
        params,
        train,
        200,
        valid_sets=[lgb.Dataset(Xv, yv, reference=train)],
        callbacks=[lgb.early_stopping(5, verbose=False)],
        # keep the trees after the best iteration: predict() and the text model drop them
        keep_training_booster=True,
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    return booster


def _constant_target() -> lgb.Booster:
    X, _ = _data(3)
    return lgb.train(
        {"objective": "regression", "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, np.full(len(X), 1.5)),
        5,
    )


MODELS = {
    # binary, NaN is the missing value (LightGBM's default), sent left or right per split
    "binary_nan": lambda: _train({}, 40, binary=True),
    # binary, zero is the missing value (NaN read as zero)
    "binary_zero": lambda: _train({"zero_as_missing": True}, 40, binary=True),
    # binary without missing values: NaN read as 0 and compared to the threshold
    "binary_no_missing": lambda: _train({"use_missing": False}, 40, binary=True),
    # 5 classes, NaN missing, deeper trees
    "multiclass_nan": lambda: _train({"num_leaves": 15}, 30, binary=False),
    # 5 classes, zero as missing
    "multiclass_zero": lambda: _train({"zero_as_missing": True}, 30, binary=False),
    # the training package's parameters: bagging, feature fraction, L2, 31 leaves
    "multiclass_training_defaults": lambda: _train(
        {**DEFAULT_LGB_PARAMS, "num_threads": 1}, 30, binary=False
    ),
    # dart: trees rescaled as later ones drop them out, still summed by predict()
    "binary_dart": lambda: _train({"boosting": "dart"}, 20, binary=True),
    # early stopping: predict() and model_to_string() keep best_iteration trees only
    "multiclass_early_stopped": _early_stopped,
    # nothing to learn: single-leaf trees
    "regression_constant": _constant_target,
}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[lgb.Booster, TreeEnsemble]]:
    out = {}
    for name, make in MODELS.items():
        booster = make()
        out[name] = (booster, TreeEnsemble.from_booster(booster))
    return out


def _reference(booster: lgb.Booster, X: np.ndarray) -> np.ndarray:
    return np.asarray(booster.predict(X, raw_score=True)).reshape(len(X), -1)


def _hard_rows(ensemble: TreeEnsemble, seed: int, n: int = 400) -> np.ndarray:
    """Random rows mixing ordinary values, special values and exact split thresholds."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=3.0, size=(n, N_FEATURES))
    X[rng.random(X.shape) < 0.2] = 0.0
    X[rng.random(X.shape) < 0.2] = np.nan
    special = rng.random(X.shape) < 0.1
    X[special] = rng.choice(EDGE_VALUES, special.sum())
    if ensemble.threshold.size:
        # exactly at a split's threshold and one ulp either side, on the split's feature
        for r in range(n):
            for _ in range(3):
                j = rng.integers(ensemble.threshold.size)
                step = rng.choice([-np.inf, 0.0, np.inf])
                t = ensemble.threshold[j]
                X[r, ensemble.split_feature[j]] = t if step == 0 else np.nextafter(t, step)
    X[0] = np.nan  # all missing
    X[1] = 0.0
    X[2] = np.inf
    X[3] = -np.inf
    X[4] = 1e-40
    return X


def test_the_models_cover_every_decision_branch(models):
    """The fixtures exercise what the parity tests claim to cover."""
    ensembles = [e for _, e in models.values()]
    missing = np.concatenate([e.missing_type for e in ensembles])
    assert {MISSING_NONE, MISSING_ZERO, MISSING_NAN} <= set(missing.tolist())
    for kind in (MISSING_NAN, MISSING_ZERO):  # missing sent left somewhere, right elsewhere
        left = np.concatenate([e.default_left[e.missing_type == kind] for e in ensembles])
        assert left.any() and not left.all()
    thresholds = np.concatenate([e.threshold for e in ensembles])
    assert (np.abs(thresholds) == ZERO_THRESHOLD).any()  # splits at LightGBM's zero edge
    assert np.isinf(thresholds).any()  # splits of NaN from every value
    assert all(not (e.split_feature == 2).any() for e in ensembles)  # constant feature unused
    constant = models["regression_constant"][1]
    assert constant.threshold.size == 0 and (constant.tree_root < 0).all()
    booster, early = models["multiclass_early_stopped"]
    assert early.num_iterations == booster.best_iteration


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_raw_scores_equal_lightgbm_exactly(models, name, seed):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, seed)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))


def test_raw_scores_equal_a_booster_reloaded_from_text(models):
    """Serving loads LightGBM text: a booster loaded from it gives the same arrays."""
    booster, ensemble = models["multiclass_nan"]
    reloaded = lgb.Booster(model_str=booster.model_to_string())
    X = _hard_rows(ensemble, 7)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(reloaded, X))
    np.testing.assert_array_equal(
        TreeEnsemble.from_booster(reloaded).raw_scores(X), ensemble.raw_scores(X)
    )


@pytest.mark.parametrize("name", ["binary_nan", "multiclass_zero"])
def test_arrays_are_the_text_models_numbers(models, name):
    """Thresholds, leaf values and split features are the text model's, bit for bit."""
    booster, ensemble = models[name]
    text = booster.model_to_string()

    def numbers(key: str, dtype: type) -> np.ndarray:
        lines = re.findall(rf"^{key}=(.*)$", text, flags=re.MULTILINE)
        return np.array([dtype(v) for line in lines for v in line.split()])

    np.testing.assert_array_equal(ensemble.threshold, numbers("threshold", float))
    np.testing.assert_array_equal(ensemble.leaf_value, numbers("leaf_value", float))
    np.testing.assert_array_equal(ensemble.split_feature, numbers("split_feature", int))
    decision = numbers("decision_type", int)  # tree.h: bit 1 default left, bits 2-3 missing
    np.testing.assert_array_equal(ensemble.default_left, (decision & 2) != 0)
    np.testing.assert_array_equal(ensemble.missing_type, (decision >> 2) & 3)


@pytest.mark.parametrize("name", list(MODELS))
def test_text_model_agrees_with_the_json_dump(models, name):
    """The two serialisations of a booster give the same trees.

    The only use of ``dump_model()``: the flattened arrays, read from the text model, are
    rebuilt here from the JSON dump by a recursive walk, with the expected values
    computed there as row-count weighted means of the leaves below.
    """
    booster, ensemble = models[name]
    dump = booster.dump_model()
    assert dump["num_tree_per_iteration"] == ensemble.num_outputs
    assert dump["max_feature_idx"] + 1 == ensemble.num_features
    assert tuple(dump["feature_names"]) == ensemble.feature_names
    trees = dump["tree_info"]
    assert len(trees) == ensemble.tree_root.size == ensemble.num_iterations * ensemble.num_outputs
    n_splits, n_leaves = ensemble.threshold.size, ensemble.leaf_value.size
    assert sum(t["num_leaves"] - 1 for t in trees) == n_splits
    split_feature = np.full(n_splits, -1)
    threshold = np.full(n_splits, np.nan)
    default_left = np.zeros(n_splits, dtype=bool)
    missing_type = np.full(n_splits, -1)
    left_child, right_child = np.zeros(n_splits, dtype=int), np.zeros(n_splits, dtype=int)
    node_value, leaf_value = np.full(n_splits, np.nan), np.full(n_leaves, np.nan)
    missing_code = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}
    roots, split_base, leaf_base = [], 0, 0

    def walk(node: dict[str, Any]) -> tuple[int, float, int]:
        """(node code, sum of count * value below, rows below)"""
        if "split_index" not in node:
            code = ~(leaf_base + node.get("leaf_index", 0))
            leaf_value[~code] = node["leaf_value"]
            return code, node["leaf_count"] * node["leaf_value"], node["leaf_count"]
        code = split_base + node["split_index"]
        assert node["decision_type"] == "<="
        split_feature[code] = node["split_feature"]
        threshold[code] = node["threshold"]
        default_left[code] = node["default_left"]
        missing_type[code] = missing_code[node["missing_type"]]
        left_child[code], left_sum, left_rows = walk(node["left_child"])
        right_child[code], right_sum, right_rows = walk(node["right_child"])
        assert left_rows + right_rows == node["internal_count"]
        node_value[code] = (left_sum + right_sum) / (left_rows + right_rows)
        return code, left_sum + right_sum, left_rows + right_rows

    for tree in trees:
        roots.append(walk(tree["tree_structure"])[0])
        split_base += tree["num_leaves"] - 1
        leaf_base += tree["num_leaves"]

    np.testing.assert_array_equal(ensemble.tree_root, roots)
    np.testing.assert_array_equal(ensemble.split_feature, split_feature)
    np.testing.assert_array_equal(ensemble.left_child, left_child)
    np.testing.assert_array_equal(ensemble.right_child, right_child)
    np.testing.assert_array_equal(ensemble.default_left, default_left)
    np.testing.assert_array_equal(ensemble.missing_type, missing_type)
    np.testing.assert_array_equal(ensemble.leaf_value, leaf_value)
    # The dump writes an infinite threshold as +-1e300 (LightGBM's AvoidInf); every other
    # threshold is the same double.
    finite = np.isfinite(ensemble.threshold)
    np.testing.assert_array_equal(ensemble.threshold[finite], threshold[finite])
    np.testing.assert_array_equal(
        threshold[~finite], np.copysign(1e300, ensemble.threshold[~finite])
    )
    np.testing.assert_allclose(ensemble.node_value, node_value, rtol=0, atol=1e-12)
    root_value = [node_value[r] if r >= 0 else leaf_value[~r] for r in roots]
    bias = np.reshape(root_value, (-1, ensemble.num_outputs)).sum(axis=0)
    np.testing.assert_allclose(ensemble.bias, bias, rtol=0, atol=1e-12)


value = st.one_of(
    st.sampled_from(EDGE_VALUES),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-5.0, 5.0),
)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(["binary_nan", "binary_no_missing", "multiclass_zero"]), data=st.data())
def test_raw_scores_equal_lightgbm_on_any_row(models, name, data):
    booster, ensemble = models[name]
    thresholds = st.sampled_from(ensemble.threshold.tolist())
    near = st.builds(np.nextafter, thresholds, st.sampled_from([-np.inf, np.inf]))
    row = data.draw(st.lists(st.one_of(value, thresholds, near), min_size=8, max_size=8))
    X = np.array([row], dtype=np.float64)
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))


@pytest.mark.parametrize("name", list(MODELS))
def test_contributions_sum_to_the_raw_score_of_each_output(models, name):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 3, n=200)
    raw = ensemble.raw_scores(X)
    for k in range(ensemble.num_outputs):
        contrib = ensemble.path_contributions(X, k)
        assert contrib.shape == (len(X), N_FEATURES + 1)
        np.testing.assert_allclose(contrib.sum(axis=1), raw[:, k], rtol=0, atol=1e-9)
    # one output per row: each row's predicted class
    pick = np.argmax(raw, axis=1)
    contrib = ensemble.path_contributions(X, pick)
    np.testing.assert_allclose(contrib.sum(axis=1), raw[np.arange(len(X)), pick], atol=1e-9)


@pytest.mark.parametrize("name", ["binary_nan", "multiclass_zero", "regression_constant"])
def test_one_walk_gives_raw_scores_and_every_outputs_contributions(models, name):
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 8, n=100)
    raw, contrib = ensemble.raw_scores_and_contributions(X)
    np.testing.assert_array_equal(raw, _reference(booster, X))
    assert contrib.shape == (len(X), ensemble.num_outputs, N_FEATURES + 1)
    for k in range(ensemble.num_outputs):
        np.testing.assert_array_equal(contrib[:, k], ensemble.path_contributions(X, k))


@pytest.mark.parametrize("name", list(MODELS))
def test_bias_is_treeshap_expected_value(models, name):
    """Both weight a node's leaves by training rows: the bias columns agree at any depth."""
    booster, ensemble = models[name]
    X = _hard_rows(ensemble, 4, n=20)
    k = ensemble.num_outputs
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), k, -1)
    for c in range(k):
        ours = ensemble.path_contributions(X, c)[:, -1]
        np.testing.assert_allclose(ours, shap[:, c, -1], rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("params", "binary"),
    [
        ({"num_leaves": 2}, True),  # binary stumps, NaN missing
        ({"num_leaves": 2, "zero_as_missing": True}, False),  # 5-class stumps, zero missing
        ({"max_depth": 1, "use_missing": False}, False),  # depth-1 trees without missing
    ],
)
def test_stump_contributions_equal_treeshap(params, binary):
    """With one split per tree, path attribution and TreeSHAP are the same numbers."""
    booster = _train(params, 25, binary=binary)
    ensemble = TreeEnsemble.from_booster(booster)
    X = _hard_rows(ensemble, 5, n=300)
    k = ensemble.num_outputs
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), k, -1)
    for c in range(k):
        np.testing.assert_allclose(ensemble.path_contributions(X, c), shap[:, c], rtol=0, atol=1e-9)


def test_deeper_trees_differ_from_treeshap(models):
    """The attribution is not TreeSHAP beyond stumps (the law above is not vacuous)."""
    booster, ensemble = models["multiclass_nan"]
    X = _hard_rows(ensemble, 6, n=50)
    shap = np.asarray(booster.predict(X, pred_contrib=True)).reshape(len(X), 5, -1)
    assert np.abs(ensemble.path_contributions(X, 0) - shap[:, 0]).max() > 1e-3


def test_categorical_model_is_refused():
    X, y = _data(0)
    X[:, 3] = np.abs(np.nan_to_num(X[:, 3]))
    booster = lgb.train(
        {
            "objective": "multiclass",
            "num_class": 5,
            "min_data_per_group": 5,
            "verbose": -1,
            "num_threads": 1,
        },
        lgb.Dataset(X, y, categorical_feature=[3]),
        10,
    )
    text = booster.model_to_string()
    assert re.search(r"^num_cat=[1-9]", text, flags=re.MULTILINE)  # it split on the category
    with pytest.raises(ValueError, match="categorical split"):
        TreeEnsemble.from_booster(booster)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"linear_tree": True}, "linear tree"),  # leaves are linear models
        ({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}, "random-forest"),
    ],
)
def test_other_unsupported_models_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        TreeEnsemble.from_booster(_train(params, 3, binary=True))


class _TextOnly:
    """A booster that offers ``from_booster`` only a text model (no ``dump_model``)."""

    def __init__(self, text: str) -> None:
        self._text = text

    def model_to_string(self) -> str:
        return self._text


def test_only_the_text_model_is_read(models):
    booster, ensemble = models["multiclass_training_defaults"]
    text_only = TreeEnsemble.from_booster(_TextOnly(booster.model_to_string()))  # type: ignore[arg-type]
    for f in dataclasses.fields(TreeEnsemble):
        ours, theirs = getattr(text_only, f.name), getattr(ensemble, f.name)
        if isinstance(ours, np.ndarray):
            assert ours.dtype == theirs.dtype
            np.testing.assert_array_equal(ours, theirs)
        else:
            assert ours == theirs


def _edit_trees(text: str, edit: Callable[[list[str]], None]) -> str:
    """``text`` with its tree blocks (``Tree=i`` to the next) edited, tree_sizes updated."""
    head, _, body = text.partition("\n\n")
    match = re.search(r"^tree_sizes=(.*)$", head, flags=re.MULTILINE)
    assert match
    blocks, start = [], 0
    for size in map(int, match.group(1).split()):
        blocks.append(body[start : start + size])
        start += size
    edit(blocks)
    sizes = " ".join(str(len(block)) for block in blocks)
    head = head.replace(match.group(0), f"tree_sizes={sizes}")
    return head + "\n\n" + "".join(blocks) + body[start:]


def _tree_line(tree: int, key: str, change: Callable[[list[str]], list[str] | None]):
    """An edit of the text: ``change`` the values of line ``key`` of tree ``tree``."""

    def edit(blocks: list[str]) -> None:
        lines = blocks[tree].split("\n")
        (i,) = [i for i, line in enumerate(lines) if line.startswith(key + "=")]
        values = change(lines[i].partition("=")[2].split())
        if values is None:
            del lines[i]
        else:
            lines[i] = f"{key}={' '.join(values)}"
        blocks[tree] = "\n".join(lines)

    return lambda text: _edit_trees(text, edit)


def _replace(old: str, new: str):
    def edit(text: str) -> str:
        assert text.count(old) == 1, old
        return text.replace(old, new)

    return edit


def _set(index: int, value: str) -> Callable[[list[str]], list[str]]:
    return lambda values: values[:index] + [value] + values[index + 1 :]


def _shorten_tree_0(text: str) -> str:
    """tree_sizes one character short for tree 0: tree 1 starts one early."""
    match = re.search(r"^tree_sizes=(\d+)", text, flags=re.MULTILINE)
    assert match
    return text.replace(match.group(0), f"tree_sizes={int(match.group(1)) - 1}", 1)


def _add_field(blocks: list[str]) -> None:
    blocks[1] = blocks[1].replace("\nshrinkage=", "\nnew_thing=1\nshrinkage=")


def _right_child_is_left_child(blocks: list[str]) -> None:
    # Split 0's children both the same node: a node missing, another with two parents.
    lines = blocks[0].split("\n")
    left = next(line for line in lines if line.startswith("left_child="))
    right = next(line for line in lines if line.startswith("right_child="))
    first = left.partition("=")[2].split()[0]
    rest = right.partition("=")[2].split()[1:]
    blocks[0] = blocks[0].replace(right, f"right_child={' '.join([first, *rest])}")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # header
        (_replace("tree\nversion", "forest\nversion"), "not a LightGBM tree model"),
        (_replace("version=v4\n", "version=v9\n"), "model version 'v9'"),
        (_replace("\nlabel_index=", "\nnew_header=1\nlabel_index="), "does not know"),
        (_replace("\nlabel_index=", "\naverage_output\nlabel_index="), "random-forest"),
        (_replace("num_class=1\n", "num_class=3\n"), "must be num_class 3"),
        (_replace("max_feature_idx=7\n", "max_feature_idx=6\n"), "8 feature_names"),
        (_replace("max_feature_idx=7\n", ""), r"lacks \['max_feature_idx'\]"),
        # the tree blocks
        (_shorten_tree_0, r"tree_sizes does not match the trees \(at tree 1\)"),
        (_replace("end of trees\n", "the end\n"), "no 'end of trees'"),
        (lambda text: _edit_trees(text, _add_field), r"tree 1 has fields .* \['new_thing'\]"),
        (_tree_line(0, "leaf_count", lambda v: None), r"tree 0 lacks the lines \['leaf_count'\]"),
        (_tree_line(2, "threshold", lambda v: v[:-1]), "tree 2: threshold has"),
        (_tree_line(1, "leaf_value", lambda v: [*v, "0"]), "tree 1: leaf_value has"),
        (_tree_line(0, "threshold", _set(1, "abc")), "non-numeric threshold"),
        (_tree_line(0, "num_leaves", lambda v: ["x"]), "non-integer tree 0: num_leaves"),
        (_tree_line(3, "split_feature", _set(0, "8")), "tree 3 splits on a feature outside"),
        (_tree_line(1, "decision_type", _set(0, "9")), "tree 1 has a categorical split"),
        (_tree_line(1, "decision_type", _set(0, "14")), "tree 1 has an unknown missing type"),
        (_tree_line(1, "decision_type", _set(0, "18")), "tree 1 has an unknown decision_type"),
        (_tree_line(0, "num_cat", lambda v: ["1"]), "tree 0 has categorical splits"),
        (_tree_line(0, "is_linear", lambda v: ["1"]), "tree 0 is a linear tree"),
        (_tree_line(2, "left_child", _set(1, "1")), "tree 2: left_child out of range"),
        (_tree_line(2, "right_child", _set(0, "-8")), "tree 2: right_child out of range"),
        (lambda text: _edit_trees(text, _right_child_is_left_child), "do not make a tree"),
        (_tree_line(0, "leaf_count", lambda v: ["0"] * len(v)), "tree 0 has no row counts"),
        # after the trees
        (_replace("[boosting: gbdt]", "[boosting: other]"), "unsupported boosting type"),
        (_replace("[boosting: gbdt]", "[boosting: rf]"), "random-forest"),
        (_replace("[linear_tree: 0]", "[linear_tree: 1]"), "linear trees"),
        (_replace("[linear_tree: 0]", "linear_tree: 0"), "malformed parameter line"),
        (_replace("pandas_categorical:null", 'pandas_categorical:[["a"]]'), "categorical"),
        (_replace("pandas_categorical:null", "pandas_categorical:{"), "malformed pandas"),
    ],
)
def test_unknown_or_malformed_text_is_refused(models, edit, message):
    text = models["binary_nan"][0].model_to_string()
    # the edits break nothing else: with nothing changed, the text reads the same
    unchanged = _edit_trees(text, lambda blocks: None)
    assert unchanged == text
    TreeEnsemble.from_booster(lgb.Booster(model_str=text))
    with pytest.raises(ValueError, match=message):
        TreeEnsemble.from_booster(_TextOnly(edit(text)))  # type: ignore[arg-type]


def test_empty_and_odd_texts_are_refused():
    for text in ("", "tree\nversion=v4", "{}"):
        with pytest.raises(ValueError, match="not a LightGBM"):
            TreeEnsemble.from_booster(_TextOnly(text))  # type: ignore[arg-type]


def test_infinite_threshold_is_kept(models):
    """A split of NaN from all values has threshold inf, and inf <= inf goes left."""
    booster, ensemble = models["multiclass_nan"]
    assert np.isinf(ensemble.threshold).any()
    clamped = dataclasses.replace(ensemble, threshold=np.clip(ensemble.threshold, -1e300, 1e300))
    X = np.where(np.arange(N_FEATURES) == 2, 3.0, 1e301)[None, :]  # 1e301 <= inf, not <= 1e300
    np.testing.assert_array_equal(ensemble.raw_scores(X), _reference(booster, X))
    assert not np.array_equal(clamped.raw_scores(X), _reference(booster, X))


def test_bad_inputs_are_refused(models):
    _, ensemble = models["multiclass_nan"]
    with pytest.raises(ValueError, match="8 columns"):
        ensemble.raw_scores(np.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"output must be in \[0, 5\)"):
        ensemble.path_contributions(np.zeros((2, 8)), 5)
    with pytest.raises(ValueError, match="one per row"):
        ensemble.path_contributions(np.zeros((2, 8)), np.array([0, 1, 2]))
    assert ensemble.raw_scores(np.zeros((0, 8))).shape == (0, 5)
