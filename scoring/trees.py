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
the scores).

The trees are read from LightGBM's text format (``Booster.model_to_string()``, what
``save_model`` writes and LightGBM loads), parsed as data: nothing stored in a model is
executed. Not from the JSON dump (``Booster.dump_model()``), for two reasons: the dump
writes an infinite threshold as ``1e300`` (LightGBM does make infinite thresholds, and
``inf <= inf`` goes left where ``inf <= 1e300`` would not), and it is slow and large, paid
at every model load and hot swap of the server (1500 trees of 31 leaves: about 1.1 s and
18 MB, against 0.1 s for the text). The dump is used only by a test, which checks that
both readings give the same trees. The parse is strict (see :func:`_read_text_model`):
a missing or unknown line, arrays of the wrong length, or child links that do not make a
tree are refused. Any model feature the kernels do not implement (categorical splits,
linear trees, random forests, unknown fields) is refused with a ``ValueError`` at load,
so a score is never silently wrong.

Raw scores are LightGBM's, bit for bit: the same decision rule per node
(``NumericalDecision`` of LightGBM's ``tree.h``, see :func:`_goes_left`), the same
thresholds and leaf values (the text format prints doubles with 17 significant digits,
so they read back exactly), and the same summation order (trees added in model order
into a zero-started sum per output).

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

import json
from dataclasses import dataclass, field
from typing import NamedTuple

import lightgbm as lgb
import numba
import numpy as np

#: LightGBM's ``kZeroThreshold``: declared ``const double kZeroThreshold = 1e-35f``, a
#: float literal, so the edge is float32(1e-35) widened, not the double 1e-35.
ZERO_THRESHOLD = float(np.float32(1e-35))
#: ``missing_type`` codes (LightGBM's own: bits 2-3 of ``decision_type``).
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
# Bits of a split's decision_type (tree.h): kCategoricalMask, kDefaultLeftMask; bits 2-3
# are the missing type, no other bit is used.
_CATEGORICAL_MASK, _DEFAULT_LEFT_MASK = 1, 2

# The text format, as LightGBM's GBDT::SaveModelToString and Tree::ToString write it.
# Header lines: any other is a model feature this module does not know, refused.
_HEADER_KEYS = frozenset(
    {
        "version",
        "num_class",
        "num_tree_per_iteration",
        "label_index",
        "max_feature_idx",
        "objective",
        "average_output",
        "feature_names",
        "monotone_constraints",
        "feature_infos",
        "tree_sizes",
    }
)
_HEADER_NEEDED = (
    "version",
    "num_class",
    "num_tree_per_iteration",
    "max_feature_idx",
    "feature_names",
    "tree_sizes",
)
_VERSIONS = frozenset({"v3", "v4"})
# Boosting types whose prediction is the plain sum of the trees (rf averages them).
_SUMMING_BOOSTING = frozenset({"gbdt", "dart", "goss"})
# Lines of a tree block read here: one value per split node, one per leaf (internal_count
# only checked: a split's rows are summed from its leaves).
_SPLIT_LINES = (
    "split_feature",
    "threshold",
    "decision_type",
    "left_child",
    "right_child",
    "internal_count",
)
_LEAF_LINES = ("leaf_value", "leaf_count")
# Lines of a tree block known and not needed (``shrinkage`` is already in the leaf
# values; ``is_linear`` must be 0). Anything else is refused, the lines of linear trees
# and categorical splits with their own message.
_TREE_KEYS = frozenset(
    {
        "num_leaves",
        "num_cat",
        "is_linear",
        "shrinkage",
        "split_gain",
        "internal_value",
        "internal_weight",
        "leaf_weight",
        *_SPLIT_LINES,
        *_LEAF_LINES,
    }
)
_LINEAR_KEYS = frozenset({"leaf_const", "num_features", "leaf_features", "leaf_coeff"})
_CATEGORICAL_KEYS = frozenset({"cat_boundaries", "cat_threshold"})


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

        Reads ``booster.model_to_string()``, LightGBM's text format, only (see the module
        docstring). It keeps the iterations ``predict`` uses by default (up to
        ``best_iteration`` when early stopping set one).

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
            splits or pandas categorical features, linear trees, random-forest
            averaging, an unknown boosting type, decision or missing type, an unknown
            line in the header or in a tree; when the text is malformed (a needed line
            missing, a non-numeric value, arrays of the wrong length, ``tree_sizes``
            not matching the trees, child links that do not make a tree); or when a
            tree has no row counts (the expected values need them).
        """
        return cls.from_text(booster.model_to_string())

    @classmethod
    def from_text(cls, text: str) -> TreeEnsemble:
        """Flatten a LightGBM text model (a ``model.txt`` as written by ``save_model``).

        The same strict reading as :meth:`from_booster`, without LightGBM: a truncated,
        garbled or foreign file is refused with a ``ValueError`` before any C++ parser
        sees it (LightGBM's own parser aborts the process on some malformed files).
        """
        model = _read_text_model(text)
        num_outputs, num_trees = model.num_outputs, len(model.trees)
        if num_trees % num_outputs:
            raise ValueError(
                f"{num_trees} trees do not make whole iterations of {num_outputs} outputs"
            )
        flat = _flatten(model.trees, model.num_features)
        root = flat.tree_root
        root_value = np.empty(num_trees, dtype=np.float64)
        root_value[root >= 0] = flat.node_value[root[root >= 0]]
        root_value[root < 0] = flat.leaf_value[~root[root < 0]]
        num_iterations = num_trees // num_outputs
        return cls(
            split_feature=flat.split_feature,
            threshold=flat.threshold,
            default_left=flat.default_left,
            missing_type=flat.missing_type,
            left_child=flat.left_child,
            right_child=flat.right_child,
            node_value=flat.node_value,
            leaf_value=flat.leaf_value,
            tree_root=root,
            tree_output=np.arange(num_trees, dtype=np.int32) % num_outputs,
            bias=root_value.reshape(num_iterations, num_outputs).sum(axis=0),
            num_features=model.num_features,
            num_outputs=num_outputs,
            num_iterations=num_iterations,
            feature_names=model.feature_names,
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


@dataclass(frozen=True)
class _TextModel:
    """What :func:`_read_text_model` keeps of a text model."""

    num_outputs: int
    num_features: int
    feature_names: tuple[str, ...]
    trees: list[dict[str, str]]  # each tree's lines, key -> value


def _read_text_model(text: str) -> _TextModel:
    """Parse LightGBM's text format (``GBDT::SaveModelToString``), refusing what is unknown.

    The layout: a header (``tree``, then ``key=value`` lines, ``average_output`` alone),
    a blank line, the trees (``Tree=i`` then ``key=value`` lines; ``tree_sizes`` in the
    header gives each tree's length in characters), ``end of trees``, then feature
    importances, the training parameters (``[key: value]`` lines between
    ``parameters:`` and ``end of parameters``; absent from a model LightGBM did not
    write them for) and, from the Python package, a ``pandas_categorical:`` JSON line.
    Of the header, ``num_tree_per_iteration`` (the outputs), ``max_feature_idx`` and
    ``feature_names`` are used; ``num_class`` must equal ``num_tree_per_iteration``;
    ``objective`` (the link from raw score to prediction) is not needed for raw scores.
    """
    head, blank, body = text.partition("\n\n")
    if not blank:
        raise ValueError("not a LightGBM text model (no header)")
    header = _read_header(head)
    if "average_output" in header:
        # Random forest: predict() averages the trees, but predict(raw_score=True) and
        # pred_contrib return their sum (LightGBM 4.x), so there is no one raw score.
        raise ValueError("random-forest models (average_output) are not supported")
    missing = [key for key in _HEADER_NEEDED if key not in header]
    if missing:
        raise ValueError(f"the text model's header lacks {missing}")
    if header["version"] not in _VERSIONS:
        raise ValueError(f"unsupported LightGBM model version {header['version']!r}")
    num_class = _int(header["num_class"], "num_class")
    num_outputs = _int(header["num_tree_per_iteration"], "num_tree_per_iteration")
    if num_outputs < 1 or num_class != num_outputs:
        raise ValueError(
            f"num_tree_per_iteration {num_outputs} must be num_class {num_class} (>= 1)"
        )
    num_features = _int(header["max_feature_idx"], "max_feature_idx") + 1
    names = tuple(header["feature_names"].split(" "))
    if num_features < 1 or len(names) != num_features:
        raise ValueError(f"{len(names)} feature_names for max_feature_idx {num_features - 1}")

    sizes = [_int(size, "tree_sizes") for size in header["tree_sizes"].split()]
    trees, start = [], 0
    for position, size in enumerate(sizes):
        block = body[start : start + size]
        start += size
        title, _, lines = block.partition("\n")
        if title != f"Tree={position}":
            raise ValueError(f"tree_sizes does not match the trees (at tree {position})")
        trees.append(_read_tree(lines, f"tree {position}"))
    if not body.startswith("end of trees\n", start):
        raise ValueError(f"no 'end of trees' after the {len(sizes)} trees of tree_sizes")
    _check_trailer(body[start + len("end of trees\n") :])
    return _TextModel(num_outputs, num_features, names, trees)


def _read_header(head: str) -> dict[str, str]:
    first, _, rest = head.partition("\n")
    if first != "tree":
        raise ValueError(f"not a LightGBM tree model (first line {first[:40]!r})")
    header: dict[str, str] = {}
    for line in rest.split("\n"):
        key, sep, value = line.partition("=")
        if key not in _HEADER_KEYS:
            raise ValueError(
                f"the text model's header has a line scoring.trees does not know: {line[:60]!r}"
            )
        if key in header or (not sep and key != "average_output"):
            raise ValueError(f"malformed header line {line[:60]!r} of the text model")
        header[key] = value
    return header


def _read_tree(lines: str, where: str) -> dict[str, str]:
    """The ``key=value`` lines of one tree block, checked against the known keys."""
    tree: dict[str, str] = {}
    for line in lines.rstrip("\n").split("\n"):
        key, sep, value = line.partition("=")
        if not sep or key in tree:
            raise ValueError(f"{where}: malformed line {line[:60]!r}")
        tree[key] = value
    if tree.get("num_cat", "0") != "0" or _CATEGORICAL_KEYS & tree.keys():
        raise ValueError(f"{where} has categorical splits; scoring.trees supports none")
    if tree.get("is_linear", "0") != "0" or _LINEAR_KEYS & tree.keys():
        raise ValueError(f"{where} is a linear tree; scoring.trees supports none")
    unknown = tree.keys() - _TREE_KEYS
    if unknown:
        raise ValueError(f"{where} has fields scoring.trees does not implement: {sorted(unknown)}")
    needed = ("num_leaves", "num_cat", *_SPLIT_LINES, *_LEAF_LINES)
    missing = [key for key in needed if key not in tree]
    if missing:
        raise ValueError(f"{where} lacks the lines {missing}")
    return tree


def _check_trailer(tail: str) -> None:
    """Refuse what the text after the trees says the trees alone do not."""
    parameters: dict[str, str] = {}
    in_parameters = False
    pandas_categorical = "null"
    for line in tail.split("\n"):
        if line == "parameters:":
            in_parameters = True
        elif line == "end of parameters":
            in_parameters = False
        elif in_parameters and line:  # LightGBM skips empty lines
            key, sep, value = line.removeprefix("[").removesuffix("]").partition(": ")
            if not (sep and line.startswith("[") and line.endswith("]")):
                raise ValueError(f"malformed parameter line {line[:60]!r} of the text model")
            parameters[key] = value
        elif line.startswith("pandas_categorical:"):
            pandas_categorical = line.removeprefix("pandas_categorical:")
    boosting = parameters.get("boosting", "gbdt")
    if boosting == "rf":
        raise ValueError("random-forest models (boosting rf) are not supported")
    if boosting not in _SUMMING_BOOSTING:
        raise ValueError(f"unsupported boosting type {boosting!r}")
    if parameters.get("linear_tree", "0") != "0":
        raise ValueError("the model has linear trees (linear_tree); scoring.trees supports none")
    try:
        categories = json.loads(pandas_categorical)
    except ValueError:
        raise ValueError(f"malformed pandas_categorical {pandas_categorical[:60]!r}") from None
    if categories:
        raise ValueError("categorical features are not supported by scoring.trees")


class _Flat(NamedTuple):
    split_feature: np.ndarray
    threshold: np.ndarray
    default_left: np.ndarray
    missing_type: np.ndarray
    left_child: np.ndarray
    right_child: np.ndarray
    node_value: np.ndarray
    leaf_value: np.ndarray
    tree_root: np.ndarray


def _flatten(trees: list[dict[str, str]], num_features: int) -> _Flat:
    """The trees' nodes in one index space of splits and one of leaves (see TreeEnsemble).

    Tree ``t``'s split ``j`` is split ``split_base[t] + j``, its leaf ``j`` leaf
    ``leaf_base[t] + j``: LightGBM's own numbering within a tree, whose root is split 0
    (leaf 0 for a tree without a split).
    """
    num_leaves = np.array(
        [_int(tree["num_leaves"], f"tree {t}: num_leaves") for t, tree in enumerate(trees)],
        dtype=np.int64,
    )
    if (num_leaves < 1).any():
        raise ValueError(f"tree {np.argmax(num_leaves < 1)} has num_leaves < 1")
    values: dict[str, list[str]] = {key: [] for key in (*_SPLIT_LINES, *_LEAF_LINES)}
    for t, tree in enumerate(trees):
        for keys, size in ((_SPLIT_LINES, num_leaves[t] - 1), (_LEAF_LINES, num_leaves[t])):
            for key in keys:
                line = tree[key].split()
                if len(line) != size:
                    raise ValueError(
                        f"tree {t}: {key} has {len(line)} values, num_leaves {num_leaves[t]} "
                        f"means {size}"
                    )
                values[key].extend(line)
    num_splits = num_leaves - 1
    split_base = np.cumsum(num_splits) - num_splits
    leaf_base = np.cumsum(num_leaves) - num_leaves
    split_tree = np.repeat(np.arange(len(trees)), num_splits)  # tree of each split
    leaf_tree = np.repeat(np.arange(len(trees)), num_leaves)
    local = np.arange(split_tree.size) - split_base[split_tree]  # index within its tree

    decision = _numbers(values["decision_type"], int, "decision_type")
    if ((decision < 0) | (decision > 15)).any():
        raise ValueError(
            f"tree {split_tree[np.argmax((decision < 0) | (decision > 15))]} has "
            "an unknown decision_type"
        )
    categorical = (decision & _CATEGORICAL_MASK) != 0
    if categorical.any():
        raise ValueError(
            f"tree {split_tree[np.argmax(categorical)]} has a categorical split; "
            "scoring.trees supports none"
        )
    missing_type = (decision >> 2) & 3
    unknown = ~np.isin(missing_type, [MISSING_NONE, MISSING_ZERO, MISSING_NAN])
    if unknown.any():
        raise ValueError(f"tree {split_tree[np.argmax(unknown)]} has an unknown missing type")
    split_feature = _numbers(values["split_feature"], int, "split_feature")
    outside = (split_feature < 0) | (split_feature >= num_features)
    if outside.any():
        raise ValueError(
            f"tree {split_tree[np.argmax(outside)]} splits on a feature outside the model's"
        )

    # Children: a split's split children come after it in its tree (LightGBM numbers a
    # split when it makes it, below its parent); with every node but the roots a child
    # exactly once, the links make a tree, without cycles.
    children = []
    for key in ("left_child", "right_child"):
        child = _numbers(values[key], int, key)
        bad = np.where(
            child >= 0,
            (child <= local) | (child >= num_splits[split_tree]),
            ~child >= num_leaves[split_tree],
        )
        if bad.any():
            raise ValueError(f"tree {split_tree[np.argmax(bad)]}: {key} out of range")
        children.append(
            np.where(child >= 0, child + split_base[split_tree], ~(~child + leaf_base[split_tree]))
        )
    left, right = children
    links = np.concatenate([left, right])
    split_parents = np.bincount(links[links >= 0], minlength=split_tree.size)
    leaf_parents = np.bincount(~links[links < 0], minlength=leaf_tree.size)
    bad_split = split_parents != (local > 0)
    bad_leaf = leaf_parents != (num_splits[leaf_tree] > 0)
    if bad_split.any() or bad_leaf.any():
        where = split_tree[bad_split].tolist() + leaf_tree[bad_leaf].tolist()
        raise ValueError(f"tree {min(where)}: the child links do not make a tree")

    leaf_value = _numbers(values["leaf_value"], float, "leaf_value")
    leaf_count = _numbers(values["leaf_count"], int, "leaf_count")
    _numbers(values["internal_count"], int, "internal_count")  # checked, not needed
    if (leaf_count < 0).any():
        raise ValueError(f"tree {leaf_tree[np.argmax(leaf_count < 0)]} has a negative leaf_count")
    count, node_value = _expected_values(local, left, right, leaf_value, leaf_count)
    if (count <= 0).any():
        raise ValueError(
            f"tree {split_tree[np.argmax(count <= 0)]} has no row counts (leaf_count); "
            "the expected values need them"
        )
    return _Flat(
        split_feature=split_feature.astype(np.int32),
        threshold=_numbers(values["threshold"], float, "threshold"),
        default_left=(decision & _DEFAULT_LEFT_MASK) != 0,
        missing_type=missing_type.astype(np.int8),
        left_child=left.astype(np.int32),
        right_child=right.astype(np.int32),
        node_value=node_value,
        leaf_value=leaf_value,
        tree_root=np.where(num_splits > 0, split_base, ~leaf_base).astype(np.int32),
    )


def _expected_values(
    local: np.ndarray,
    left: np.ndarray,
    right: np.ndarray,
    leaf_value: np.ndarray,
    leaf_count: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Each split's rows (sum of ``leaf_count`` below) and mean leaf value weighted by them.

    Children before parents: splits by decreasing index within their tree, all trees at
    once (a split's split children have larger indices, see :func:`_flatten`). The
    arithmetic is a walk's: ``count * value`` per leaf, ``left + right`` per split, then
    one division.
    """
    weighted = leaf_count * leaf_value
    total = np.zeros(local.size, dtype=np.float64)
    count = np.zeros(local.size, dtype=np.int64)
    order = np.argsort(-local, kind="stable")
    begin = 0
    for stop in np.cumsum(np.bincount(local)[::-1]):
        nodes = order[begin:stop]
        begin = stop
        sums, counts = [], []
        for child in (left[nodes], right[nodes]):
            split, leaf = np.maximum(child, 0), np.maximum(~child, 0)
            sums.append(np.where(child >= 0, total[split], weighted[leaf]))
            counts.append(np.where(child >= 0, count[split], leaf_count[leaf]))
        total[nodes] = sums[0] + sums[1]
        count[nodes] = counts[0] + counts[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, total / count


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the text model has a non-integer {what}: {text[:40]!r}") from None


def _numbers(values: list[str], kind: type[int] | type[float], what: str) -> np.ndarray:
    """Strings to numbers, by Python's own parsers (``float`` reads a double exactly)."""
    dtype = np.int64 if kind is int else np.float64
    try:
        return np.fromiter(map(kind, values), dtype=dtype, count=len(values))
    except (ValueError, OverflowError):
        raise ValueError(f"the text model has a non-numeric {what}") from None


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
