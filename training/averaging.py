"""Several boosters of one head as one: the average of their raw scores in one model.

A LightGBM model's raw score is the sum of its trees' leaf values (each tree adds to one
output: tree ``i`` to output ``i % num_tree_per_iteration``). The mean raw score of K
boosters trained on the same features is therefore the raw score of one model holding
all their trees with every leaf value divided by K. :func:`average_boosters` builds that
model in LightGBM's own text format, so a bundle stores, and every loader reads, a
single booster as before (docs/models.md#training-data-and-the-split).
"""

from __future__ import annotations

import re

import lightgbm as lgb

# the per-tree lines that carry output values: leaf outputs, and the node values
# LightGBM's own TreeSHAP (pred_contrib) reads
_VALUE_LINE = re.compile(r"^(leaf_value|internal_value)=(.*)$", re.M)


def average_boosters(boosters: list[lgb.Booster]) -> lgb.Booster:
    """One booster whose raw score is the mean of ``boosters``' raw scores.

    Parameters
    ----------
    boosters
        At least one booster, all of the same objective, number of outputs and
        features (boosters of one head, trained on the same feature matrix).

    Raises
    ------
    ValueError
        With no booster, or boosters whose headers (outputs, objective, features)
        differ.
    """
    if not boosters:
        raise ValueError("nothing to average: no booster")
    if len(boosters) == 1:
        return boosters[0]
    parts = [_split(b.model_to_string()) for b in boosters]
    header, _, trailer = parts[0]
    for other, _, _ in parts[1:]:
        if _header_key(other) != _header_key(header):
            raise ValueError("boosters to average differ in outputs, objective or features")
    weight = 1.0 / len(boosters)
    trees = [_scaled(tree, weight) for _, model_trees, _ in parts for tree in model_trees]
    body = "".join(f"Tree={i}\n{tree}" for i, tree in enumerate(trees))
    # without tree_sizes LightGBM reads the trees one by one; saving it again writes
    # the sizes and the feature importances of the merged trees
    head = "\n".join(line for line in header.split("\n") if not line.startswith("tree_sizes="))
    merged = f"{head}\n{body}end of trees\n{trailer}"
    return lgb.Booster(model_str=lgb.Booster(model_str=merged).model_to_string())


def _split(text: str) -> tuple[str, list[str], str]:
    """Header, tree bodies (after their ``Tree=i`` line) and what follows the trees."""
    head, _, rest = text.partition("\nTree=0\n")
    trees_text, _, trailer = rest.partition("end of trees\n")
    bodies = re.split(r"^Tree=\d+\n", trees_text, flags=re.M)
    return head + "\n", bodies, trailer


def _header_key(header: str) -> tuple[str, ...]:
    wanted = ("num_class=", "num_tree_per_iteration=", "objective=", "feature_names=")
    return tuple(line for line in header.split("\n") if line.startswith(wanted))


def _scaled(tree: str, weight: float) -> str:
    def scale(match: re.Match[str]) -> str:
        values = " ".join(repr(float(v) * weight) for v in match.group(2).split())
        return f"{match.group(1)}={values}"

    return _VALUE_LINE.sub(scale, tree)
