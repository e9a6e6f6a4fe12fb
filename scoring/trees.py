"""LightGBM tree ensembles as flat arrays, scored and explained by compiled kernels.

Why
---
The HTTP API scores one customer at a time. LightGBM's ``Booster.predict`` costs tens of
microseconds of wrapper overhead per call, and TreeSHAP (``pred_contrib=True``) costs
hundreds more per head. :class:`TreeEnsemble` reads a booster's trees once per model load
into NumPy arrays, and numba kernels walk them, one row after another on the calling
thread: :meth:`TreeEnsemble.raw_scores` (every output's raw score),
:meth:`TreeEnsemble.path_contributions` (per-feature attributions of one output per row,
walking only that output's trees) and :meth:`TreeEnsemble.raw_scores_and_contributions`
(both for every output in one walk, for a server that picks the output to explain from
the scores). The trees come from ``Booster.dump_model()``, plain JSON read as data, and
their thresholds from LightGBM's text format (the dump rounds infinite thresholds, see
:func:`_exact_thresholds`): nothing stored in a model is executed. Any model feature the
kernels do not implement (categorical splits, linear trees, random forests, unknown
fields) is refused with a ``ValueError`` at load, so a score is never silently wrong.

Raw scores are LightGBM's, bit for bit: the same decision rule per node
(``NumericalDecision`` of LightGBM's ``tree.h``, see :func:`_goes_left`), the same
thresholds and leaf values (both serialisations print doubles with 17 significant
digits, so they read back exactly), and the same summation order (trees added in model
order into a zero-started sum per output).

Attribution
-----------
:meth:`TreeEnsemble.path_contributions` gives path attributions ("Saabas", as in
treeinterpreter). Every node carries an expected value ``E[node]``: the mean of the
leaf values below it weighted by the training rows that reached each leaf
(``leaf_count``), a leaf's being its own value. For one tree and one row, each split on
the row's decision path adds ``E[child taken] - E[node]`` to the split's feature; the
bias is ``E[root]``. The sum telescopes to the leaf value, so a row's attributions over
all trees of an output, bias included, sum to that output's raw score.

LightGBM's ``internal_value`` is *not* this expected value: it is the node's own
regularised Newton step (``-G / (H + lambda)``, times the shrinkage), written with six
significant digits. Using it would keep the attributions additive but change the bias
and every difference; the row-count weighting is the one TreeSHAP uses for its expected
value, so the bias column here equals LightGBM's ``pred_contrib`` bias column for any
model.

Relation to TreeSHAP: both are additive (they sum to the raw score) and share the bias.
They coincide for trees with a single split (stumps): the split's feature gets
``leaf - E[root]`` in both. With deeper trees they differ: path attribution credits each
split on the path with the change of expectation it causes, in path order, so features
near the root and interactions are credited differently from Shapley values, and a
feature not on the path gets nothing. It costs one walk per tree (as much as scoring),
against TreeSHAP's ``O(leaves * depth^2)`` per tree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numba
import numpy as np

#: LightGBM's ``kZeroThreshold``: declared ``const double kZeroThreshold = 1e-35f``, a
#: float literal, so the edge is float32(1e-35) widened, not the double 1e-35.
ZERO_THRESHOLD = float(np.float32(1e-35))
#: ``missing_type`` codes (LightGBM's own: bits 2-3 of ``decision_type``).
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
_MISSING_CODE = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}

# Fields of the JSON dump the kernels account for. Any other field means a model feature
# this module does not implement (e.g. a linear tree's leaf_const / leaf_coeff): refused.
_SPLIT_KEYS = frozenset(
    {
        "split_index",
        "split_feature",
        "split_gain",
        "threshold",
        "decision_type",
        "default_left",
        "missing_type",
        "internal_value",
        "internal_weight",
        "internal_count",
        "left_child",
        "right_child",
    }
)
_LEAF_KEYS = frozenset({"leaf_index", "leaf_value", "leaf_weight", "leaf_count"})
_TREE_KEYS = frozenset({"tree_index", "num_leaves", "num_cat", "shrinkage", "tree_structure"})


@dataclass(frozen=True, eq=False)
class TreeEnsemble:
    """A LightGBM tree ensemble flattened into node arrays; build with :meth:`from_booster`.

    Split nodes of all trees share one index space, leaves another. A child index
    ``c >= 0`` is split node ``c``; ``c < 0`` is leaf ``~c`` (LightGBM's own encoding).
    Tree ``t`` belongs to output ``t % num_outputs`` (LightGBM stores the trees of one
    boosting iteration together, one per class).

    Parameters
    ----------
    split_feature
        ``int32 (n_splits,)``: feature column tested by each split node.
    threshold
        ``float64 (n_splits,)``: go left iff ``value <= threshold`` (missing values aside).
    default_left
        ``bool (n_splits,)``: direction of a missing value.
    missing_type
        ``int8 (n_splits,)``: :data:`MISSING_NONE`, :data:`MISSING_ZERO` or
        :data:`MISSING_NAN`, what counts as missing at that split.
    left_child, right_child
        ``int32 (n_splits,)``: children, encoded as above.
    node_value
        ``float64 (n_splits,)``: expected value of each split node (row-count weighted
        mean of the leaf values below it).
    leaf_value
        ``float64 (n_leaves,)``: leaf outputs (shrinkage and initial score included, as
        LightGBM stores them).
    tree_root
        ``int32 (n_trees,)``: root of each tree, encoded as a child (a tree without a
        split is a single leaf).
    tree_output
        ``int32 (n_trees,)``: output (class) of each tree, ``tree index % num_outputs``.
    bias
        ``float64 (num_outputs,)``: sum over an output's trees of the root's expected
        value.
    num_features
        Columns the model expects (LightGBM's ``max_feature_idx + 1``).
    num_outputs
        Raw scores per row: ``num_tree_per_iteration`` (1 for binary and regression,
        ``num_class`` for multiclass).
    num_iterations
        Boosting iterations kept (trees per output).
    feature_names
        The model's feature names, in column order.
    """

    split_feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing_type: np.ndarray
    left_child: np.ndarray
    right_child: np.ndarray
    node_value: np.ndarray
    leaf_value: np.ndarray
    tree_root: np.ndarray
    tree_output: np.ndarray
    bias: np.ndarray
    num_features: int
    num_outputs: int
    num_iterations: int
    feature_names: tuple[str, ...]
    _links: np.ndarray = field(init=False, repr=False)
    _deltas: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        links = _pack_links(
            self.split_feature,
            self.threshold,
            self.default_left,
            self.missing_type,
            self.left_child,
            self.right_child,
        )
        # What a split adds to its feature's attribution, per direction: E[child] - E[node].
        children = np.stack([self.left_child, self.right_child], axis=1)
        expected = np.where(
            children >= 0,
            self.node_value[np.maximum(children, 0)],
            self.leaf_value[np.maximum(~children, 0)],
        )
        deltas = np.ascontiguousarray(expected - self.node_value[:, None])
        # Derived once; the class is frozen.
        object.__setattr__(self, "_links", links)
        object.__setattr__(self, "_deltas", deltas)

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> TreeEnsemble:
        """Flatten a booster's trees, as ``booster.predict`` would use them.

        The trees come from ``booster.dump_model()`` (JSON); the split thresholds from
        ``booster.model_to_string()`` (LightGBM's text format), because the JSON dump
        writes an infinite threshold as ``1e300``. Both keep the iterations ``predict``
        uses by default (up to ``best_iteration`` when early stopping set one), and
        they are checked to agree on every threshold and leaf value.

        Parameters
        ----------
        booster
            A trained or loaded LightGBM booster with numerical splits.

        Returns
        -------
        TreeEnsemble

        Raises
        ------
        ValueError
            When the model uses anything the kernels do not implement: categorical
            splits, linear trees, random-forest averaging, an unknown decision or
            missing type, a non-numeric threshold, an unknown field in the dump, a
            tree without row counts (the expected values need them), or when the two
            serialisations disagree.
        """
        dump = booster.dump_model()
        if dump.get("name") != "tree":
            raise ValueError(f"not a LightGBM tree model (name {dump.get('name')!r})")
        if dump.get("average_output", False):
            # Random forest: predict() averages the trees, but predict(raw_score=True) and
            # pred_contrib return their sum (LightGBM 4.x), so there is no one raw score.
            raise ValueError("random-forest models (average_output) are not supported")
        if dump.get("pandas_categorical"):
            raise ValueError("categorical features are not supported by scoring.trees")
        num_outputs = int(dump["num_tree_per_iteration"])
        num_features = int(dump["max_feature_idx"]) + 1
        trees = dump["tree_info"]
        if num_outputs < 1 or len(trees) % num_outputs:
            raise ValueError(
                f"{len(trees)} trees do not make whole iterations of {num_outputs} outputs"
            )
        flat = _Flattener(num_features)
        roots = [flat.add_tree(t, position) for position, t in enumerate(trees)]
        threshold = _exact_thresholds(flat, booster.model_to_string(), len(trees))
        num_iterations = len(trees) // num_outputs

        root_value = np.array(
            [flat.node_value[r] if r >= 0 else flat.leaf_value[~r] for r in roots],
            dtype=np.float64,
        )
        bias = root_value.reshape(num_iterations, num_outputs).sum(axis=0)
        names = dump.get("feature_names") or [f"Column_{j}" for j in range(num_features)]
        return cls(
            split_feature=np.array(flat.split_feature, dtype=np.int32),
            threshold=threshold,
            default_left=np.array(flat.default_left, dtype=np.bool_),
            missing_type=np.array(flat.missing_type, dtype=np.int8),
            left_child=np.array(flat.left_child, dtype=np.int32),
            right_child=np.array(flat.right_child, dtype=np.int32),
            node_value=np.array(flat.node_value, dtype=np.float64),
            leaf_value=np.array(flat.leaf_value, dtype=np.float64),
            tree_root=np.array(roots, dtype=np.int32),
            tree_output=np.arange(len(trees), dtype=np.int32) % num_outputs,
            bias=bias,
            num_features=num_features,
            num_outputs=num_outputs,
            num_iterations=num_iterations,
            feature_names=tuple(names),
        )

    def _rows(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(
                f"X must be 2-D with {self.num_features} columns (the model's features), "
                f"got shape {X.shape}"
            )
        return X

    def raw_scores(self, X: np.ndarray) -> np.ndarray:
        """Raw scores of every output: ``booster.predict(X, raw_score=True)``, exactly.

        Parameters
        ----------
        X
            ``(n, num_features)`` feature matrix; NaN is a missing value. Converted to
            float64, as LightGBM does.

        Returns
        -------
        numpy.ndarray
            ``float64 (n, num_outputs)``, also for a single-output model (LightGBM
            returns ``(n,)`` there).
        """
        return _raw_scores(
            self._rows(X),
            self._links,
            self.threshold,
            self.leaf_value,
            self.tree_root,
            self.num_outputs,
        )

    def path_contributions(self, X: np.ndarray, output: int | np.ndarray = 0) -> np.ndarray:
        """Path attributions of one output per row (see the module docstring).

        Walks only the trees of the requested outputs.

        Parameters
        ----------
        X
            ``(n, num_features)`` feature matrix; NaN is a missing value.
        output
            The output (class) explained: one for all rows, or one per row (for
            instance each row's predicted stage). 0 for a single-output model.

        Returns
        -------
        numpy.ndarray
            ``float64 (n, num_features + 1)``: one attribution per feature, then the
            bias. Each row sums to the raw score of its output (to rounding).
        """
        X = self._rows(X)
        outputs = np.asarray(output)
        if outputs.dtype.kind not in "iu":
            raise ValueError(f"output must be an integer or integer array, got {outputs.dtype}")
        if outputs.ndim == 0:
            outputs = np.full((X.shape[0], 1), outputs, dtype=np.int64)
        elif outputs.shape == (X.shape[0],):
            outputs = outputs.astype(np.int64).reshape(-1, 1)
        else:
            raise ValueError(
                f"output must be one integer or one per row ({X.shape[0]}), got {outputs.shape}"
            )
        if outputs.size and (outputs.min() < 0 or outputs.max() >= self.num_outputs):
            raise ValueError(f"output must be in [0, {self.num_outputs}), got {output}")
        _, contributions = self._attribute(X, outputs)
        return contributions[:, 0]

    def raw_scores_and_contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and path attributions of every output, in one walk of the trees.

        For a server that needs all raw scores (probabilities) and the attributions of an
        output it picks from them: the bookkeeping costs less than the walk, so this is
        cheaper than :meth:`raw_scores` then :meth:`path_contributions` (for 5 classes of
        300 trees, about a quarter more than :meth:`raw_scores` alone).

        Parameters
        ----------
        X
            ``(n, num_features)`` feature matrix; NaN is a missing value.

        Returns
        -------
        raw : numpy.ndarray
            ``float64 (n, num_outputs)``, equal to :meth:`raw_scores` bit for bit.
        contributions : numpy.ndarray
            ``float64 (n, num_outputs, num_features + 1)``: for each output, what
            :meth:`path_contributions` gives for it.
        """
        X = self._rows(X)
        every = np.broadcast_to(
            np.arange(self.num_outputs, dtype=np.int64), (X.shape[0], self.num_outputs)
        )
        return self._attribute(X, np.ascontiguousarray(every))

    def _attribute(self, X: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _attribute(
            X,
            outputs,
            self._links,
            self.threshold,
            self._deltas,
            self.leaf_value,
            self.tree_root,
            self.bias,
            self.num_outputs,
        )


class _Flattener:
    """Appends the trees of a JSON dump to flat lists, checking every field."""

    def __init__(self, num_features: int) -> None:
        self.num_features = num_features
        self.split_feature: list[int] = []
        self.threshold: list[float] = []
        self.default_left: list[bool] = []
        self.missing_type: list[int] = []
        self.left_child: list[int] = []
        self.right_child: list[int] = []
        self.node_value: list[float] = []
        self.leaf_value: list[float] = []

    def add_tree(self, tree: dict[str, Any], position: int) -> int:
        """Append one tree; returns its root encoded as a child."""
        where = f"tree {position}"
        _check_keys(tree, _TREE_KEYS, where)
        if tree.get("num_cat", 0):
            raise ValueError(f"{where} has categorical splits; scoring.trees supports none")
        num_leaves = int(tree["num_leaves"])
        split_base, leaf_base = len(self.split_feature), len(self.leaf_value)
        self.split_feature.extend([0] * (num_leaves - 1))
        self.threshold.extend([0.0] * (num_leaves - 1))
        self.default_left.extend([False] * (num_leaves - 1))
        self.missing_type.extend([0] * (num_leaves - 1))
        self.left_child.extend([0] * (num_leaves - 1))
        self.right_child.extend([0] * (num_leaves - 1))
        self.node_value.extend([math.nan] * (num_leaves - 1))
        self.leaf_value.extend([math.nan] * num_leaves)
        seen_leaves: set[int] = set()
        seen_splits: set[int] = set()

        def encode(node: dict[str, Any]) -> int:
            if "split_index" in node:
                index = int(node["split_index"])
                if not 0 <= index < num_leaves - 1 or index in seen_splits:
                    raise ValueError(f"{where}: bad split_index {index}")
                seen_splits.add(index)
                return split_base + index
            index = int(node.get("leaf_index", 0))
            if not 0 <= index < num_leaves or index in seen_leaves:
                raise ValueError(f"{where}: bad leaf_index {index}")
            seen_leaves.add(index)
            return ~(leaf_base + index)

        root = encode(tree["tree_structure"])
        # Iterative post-order walk: deep trees must not hit Python's recursion limit.
        stack: list[tuple[dict[str, Any], int, bool]] = [(tree["tree_structure"], root, False)]
        weighted: dict[int, tuple[float, int]] = {}  # code -> (sum count * value, count)
        while stack:
            node, code, children_done = stack.pop()
            if code < 0:
                _check_keys(node, _LEAF_KEYS, where)
                value = _number(node["leaf_value"], where)
                count = int(node.get("leaf_count", 0))
                self.leaf_value[~code] = value
                weighted[code] = (count * value, count)
                continue
            if not children_done:
                self._add_split(node, code, where)
                left, right = encode(node["left_child"]), encode(node["right_child"])
                self.left_child[code], self.right_child[code] = left, right
                stack.append((node, code, True))
                stack.append((node["left_child"], left, False))
                stack.append((node["right_child"], right, False))
                continue
            sum_l, n_l = weighted.pop(self.left_child[code])
            sum_r, n_r = weighted.pop(self.right_child[code])
            total, count = sum_l + sum_r, n_l + n_r
            if count <= 0:
                raise ValueError(
                    f"{where} has no row counts (leaf_count); the expected values need them"
                )
            self.node_value[code] = total / count
            weighted[code] = (total, count)
        if len(seen_leaves) != num_leaves or len(seen_splits) != num_leaves - 1:
            raise ValueError(f"{where}: num_leaves {num_leaves} does not match its nodes")
        return root

    def _add_split(self, node: dict[str, Any], code: int, where: str) -> None:
        _check_keys(node, _SPLIT_KEYS, where)
        decision = node["decision_type"]
        if decision == "==":
            raise ValueError(f"{where} has a categorical split; scoring.trees supports none")
        if decision != "<=":
            raise ValueError(f"{where} has an unsupported decision_type {decision!r}")
        missing = node["missing_type"]
        if missing not in _MISSING_CODE:
            raise ValueError(f"{where} has an unsupported missing_type {missing!r}")
        feature = int(node["split_feature"])
        if not 0 <= feature < self.num_features:
            raise ValueError(f"{where} splits on feature {feature} outside the model's")
        self.split_feature[code] = feature
        self.threshold[code] = _number(node["threshold"], where)
        self.default_left[code] = bool(node["default_left"])
        self.missing_type[code] = _MISSING_CODE[missing]


def _check_keys(node: dict[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(node) - known
    if {"leaf_const", "leaf_coeff", "leaf_features"} & unknown:
        raise ValueError(f"{where} is a linear tree; scoring.trees supports none")
    if unknown:
        raise ValueError(f"{where} has fields scoring.trees does not implement: {sorted(unknown)}")


def _number(value: Any, where: str) -> float:
    # bool is an int: reject it too. Categorical thresholds are strings ("0||2||4").
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} has a non-numeric value {value!r}")
    return float(value)


def _exact_thresholds(flat: _Flattener, text: str, num_trees: int) -> np.ndarray:
    """The thresholds of the text model, checked against the dump's.

    The JSON dump passes thresholds through LightGBM's ``AvoidInf`` (``|x| >= 1e300``
    becomes ``±1e300``), and LightGBM does make infinite thresholds: a split of the
    missing values from all others has threshold ``inf``, and ``inf <= inf`` goes left
    where ``inf <= 1e300`` would not. The text model prints every double exactly.
    """
    blocks = text.partition("\nend of trees")[0].split("\nTree=")[1:]
    if len(blocks) != num_trees:
        raise ValueError(f"the text model has {len(blocks)} trees, the dump {num_trees}")
    fields = [_text_fields(block) for block in blocks]
    threshold = np.array([float(v) for f in fields for v in f["threshold"]], dtype=np.float64)
    leaf_value = np.array([float(v) for f in fields for v in f["leaf_value"]], dtype=np.float64)
    dumped = np.array(flat.threshold, dtype=np.float64)
    if threshold.shape != dumped.shape or not np.array_equal(
        leaf_value, np.array(flat.leaf_value, dtype=np.float64)
    ):
        raise ValueError("the text model and the JSON dump of the booster disagree")
    clamped = (np.abs(threshold) >= 1e300) & (dumped == np.copysign(1e300, threshold))
    if not ((threshold == dumped) | clamped).all():
        raise ValueError("the text model and the JSON dump of the booster disagree")
    return threshold


def _text_fields(block: str) -> dict[str, list[str]]:
    """``key=v1 v2 ...`` lines of one tree of LightGBM's text format."""
    out: dict[str, list[str]] = {"threshold": [], "leaf_value": []}
    for line in block.splitlines()[1:]:
        key, sep, values = line.partition("=")
        if sep:
            out[key] = values.split()
    return out


def _pack_links(
    split_feature: np.ndarray,
    threshold: np.ndarray,
    default_left: np.ndarray,
    missing_type: np.ndarray,
    left_child: np.ndarray,
    right_child: np.ndarray,
) -> np.ndarray:
    """What the kernels read per split node, in one row: one cache line, not six.

    Columns: feature, left child, right child, and where the two special values go
    (bit 0: NaN goes left, bit 1: zero goes left), resolved from LightGBM's
    ``NumericalDecision``: a NaN becomes 0.0 unless NaN is the missing value; a value
    within ``ZERO_THRESHOLD`` of zero reaches the tree as 0.0 (LightGBM's dense-row
    reader drops it). A missing value (NaN under missing type NaN, zero or NaN under
    missing type Zero) goes the default way; any other zero is compared, ``0.0 <=
    threshold``.
    """
    zero_by_threshold = threshold >= 0.0
    nan_left = np.where(missing_type == MISSING_NONE, zero_by_threshold, default_left)
    zero_left = np.where(missing_type == MISSING_ZERO, default_left, zero_by_threshold)
    flags = nan_left.astype(np.int32) | (zero_left.astype(np.int32) << 1)
    return np.ascontiguousarray(
        np.stack([split_feature, left_child, right_child, flags], axis=1), dtype=np.int32
    )


@numba.njit(cache=True, inline="always")
def _goes_left(value: float, node: int, links: np.ndarray, threshold: np.ndarray) -> bool:
    """Whether ``value`` goes to the left child of split ``node`` (see _pack_links)."""
    # Returning the direction, not the child, compiles to a loop several times faster.
    if value > ZERO_THRESHOLD or value < -ZERO_THRESHOLD:  # false for NaN
        return value <= threshold[node]
    if value != value:
        return (links[node, 3] & 1) != 0
    return (links[node, 3] & 2) != 0


@numba.njit(cache=True)
def _raw_scores(
    X: np.ndarray,
    links: np.ndarray,
    threshold: np.ndarray,
    leaf_value: np.ndarray,
    tree_root: np.ndarray,
    num_outputs: int,
) -> np.ndarray:
    n = X.shape[0]
    out = np.zeros((n, num_outputs), dtype=np.float64)
    for i in range(n):
        x = X[i]
        # Trees in model order into a zero-started sum: LightGBM's order, so equal bits.
        for t in range(tree_root.shape[0]):
            node = tree_root[t]
            while node >= 0:
                left = _goes_left(x[links[node, 0]], node, links, threshold)
                node = links[node, 1] if left else links[node, 2]
            out[i, t % num_outputs] += leaf_value[~node]
    return out


@numba.njit(cache=True)
def _attribute(
    X: np.ndarray,
    outputs: np.ndarray,
    links: np.ndarray,
    threshold: np.ndarray,
    deltas: np.ndarray,
    leaf_value: np.ndarray,
    tree_root: np.ndarray,
    bias: np.ndarray,
    num_outputs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores and attributions of outputs ``outputs[i, j]`` of each row ``i``."""
    n, f = X.shape
    m = outputs.shape[1]
    raw = np.zeros((n, m), dtype=np.float64)
    contrib = np.zeros((n, m, f + 1), dtype=np.float64)
    for i in range(n):
        x = X[i]
        for j in range(m):
            k = outputs[i, j]
            # Tree t belongs to output t % num_outputs; its trees in model order, so the
            # raw score is LightGBM's to the bit here too.
            for t in range(k, tree_root.shape[0], num_outputs):
                node = tree_root[t]
                while node >= 0:
                    feature = links[node, 0]
                    if _goes_left(x[feature], node, links, threshold):
                        contrib[i, j, feature] += deltas[node, 0]
                        node = links[node, 1]
                    else:
                        contrib[i, j, feature] += deltas[node, 1]
                        node = links[node, 2]
                raw[i, j] += leaf_value[~node]
            contrib[i, j, f] = bias[k]
    return raw, contrib
