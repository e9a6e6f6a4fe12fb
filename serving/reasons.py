"""Per-prediction reasons: the features with the largest contributions.

Contributions come from :mod:`scoring.trees` (path attributions) or LightGBM's
``pred_contrib`` (TreeSHAP); both give, for each row, one contribution per feature plus
the expected value, summing to the raw score. The reasons of a prediction are the
``k`` features with the largest absolute contribution, largest first, with the
feature's value and its signed contribution.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np


def top_contributions(contrib: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest ``|contrib|`` per row, largest first.

    Parameters
    ----------
    contrib
        ``(n, features)`` contributions (without the expected-value column).
    k
        Reasons per row; capped at the number of features.

    Returns
    -------
    numpy.ndarray
        ``(n, min(k, features))`` integer indices. Which of several equal contributions
        at the cut is kept is unspecified.
    """
    n, f = contrib.shape
    k = min(k, f)
    if k == 0 or n == 0:
        return np.empty((n, k), dtype=np.intp)
    size = np.abs(contrib)
    if n <= 16:
        # A few rows (the API's usual request): one sort per row costs less than the
        # partition and the index gathers below.
        return np.argsort(-size, axis=1, kind="stable")[:, :k]
    if k < f:
        # argpartition is O(f); sorting only the k chosen columns keeps this cheap.
        part = np.argpartition(-size, k - 1, axis=1)[:, :k]
        part.sort(axis=1)
    else:
        part = np.broadcast_to(np.arange(f), (n, f)).copy()
    chosen = np.take_along_axis(size, part, axis=1)
    order = np.argsort(-chosen, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def split_multiclass(booster: lgb.Booster) -> list[lgb.Booster]:
    """One single-output booster per class of a multiclass LightGBM booster.

    A multiclass model stores its trees interleaved (tree ``i`` belongs to class
    ``i % num_class``). TreeSHAP on the whole model computes every class; the reasons
    need only the predicted one, so the trees of each class are copied into a booster
    of their own (LightGBM's text format, nothing executed), whose raw score and
    contributions are those of that class: about ``num_class`` times less work.

    Raises ``ValueError`` when the booster is not a multiclass model in text format.
    """
    text = booster.model_to_string()
    head, sep, rest = text.partition("\nTree=0\n")
    trees_text, sep2, _tail = rest.partition("\nend of trees\n")
    if not sep or not sep2:
        raise ValueError("not a LightGBM text model with trees")
    fields = dict(
        line.split("=", 1) for line in head.splitlines() if "=" in line and not line.startswith("[")
    )
    k = int(fields.get("num_tree_per_iteration", "1"))
    if k < 2:
        raise ValueError("the booster has one output; nothing to split")
    trees = ("Tree=0\n" + trees_text).split("\n\n")
    trees = [t.strip("\n") for t in trees if t.strip()]
    if len(trees) % k:
        raise ValueError(f"{len(trees)} trees do not divide into {k} classes")
    header = []
    for line in head.splitlines():
        key = line.split("=", 1)[0]
        if key in ("num_class", "num_tree_per_iteration"):
            line = f"{key}=1"
        elif key == "objective":
            line = "objective=regression"
        elif key == "tree_sizes":
            continue  # optional; LightGBM then parses the trees one after another
        header.append(line)
    out = []
    for cls in range(k):
        mine = trees[cls::k]
        body = "\n\n".join(f"Tree={j}\n" + t.split("\n", 1)[1] for j, t in enumerate(mine))
        model = "\n".join(header) + "\n\n" + body + "\n\nend of trees\n\npandas_categorical:null\n"
        out.append(lgb.Booster(model_str=model))
    return out
