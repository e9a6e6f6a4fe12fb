"""Evaluation plots logged with each training run (docs/models.md).

Every function returns a :class:`matplotlib.figure.Figure` built directly, without
pyplot, so nothing here selects a backend or keeps figures in global state; the
caller logs it with ``mlflow.log_figure(fig, "plots/name.png")``. Saving to PNG uses
the Agg renderer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from customer_lifecycle.training.metrics import calibration_bins, expected_calibration_error
from matplotlib import colormaps
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

__all__ = [
    "calibration_figure",
    "confusion_matrix_figure",
    "feature_importance_figure",
    "multiclass_calibration_figure",
    "roc_pr_figure",
]


def confusion_matrix_figure(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    classes: Sequence[str],
    *,
    normalize: bool = True,
) -> Figure:
    """Confusion matrix, true class on rows and predicted class on columns.

    Parameters
    ----------
    y_true, y_pred : array_like of str
        True and predicted classes; both must be among ``classes``.
    classes : sequence of str
        Class names in display order (the lifecycle order reads best).
    normalize : bool, default True
        Show each row as shares of the true class (recall on the diagonal); the
        counts are printed under the shares. Rows of absent classes stay 0.

    Returns
    -------
    matplotlib.figure.Figure
        One heat-map axes and its colour bar.
    """
    names = [str(c) for c in classes]
    index = {c: i for i, c in enumerate(names)}
    yt = np.asarray(y_true).astype(str).ravel()
    yp = np.asarray(y_pred).astype(str).ravel()
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.size} vs {yp.size}")
    unknown = sorted((set(yt.tolist()) | set(yp.tolist())) - set(index))
    if unknown:
        raise ValueError(f"labels not among the classes: {unknown[:5]}")
    k = len(names)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, ([index[v] for v in yt], [index[v] for v in yp]), 1)
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros((k, k)), where=rows > 0) if normalize else counts

    size = 1.2 + 0.9 * k
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="share of true class" if normalize else "rows")
    threshold = (1.0 if normalize else max(int(counts.max()), 1)) / 2
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}\n({counts[i, j]})" if normalize else f"{counts[i, j]}"
            colour = "white" if shown[i, j] > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=8)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix ({yt.size} rows)")
    return fig


def calibration_figure(
    y: ArrayLike, p: ArrayLike, *, title: str = "Calibration", bins: int = 10
) -> Figure:
    """Reliability curve of binary probabilities with the row count per bin.

    Top panel: observed frequency against mean prediction per equal-width bin, with
    the diagonal of perfect calibration and the ECE in the legend. Bottom panel: how
    many rows each bin holds.
    """
    mean_p, frac_pos, counts = calibration_bins(y, p, bins=bins)
    ece = expected_calibration_error(y, p, bins=bins)

    fig = Figure(figsize=(6, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.plot(mean_p, frac_pos, marker="o", label=f"model (ECE {ece:.3f})")
    top.set_ylabel("observed frequency")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(title)
    width = 1.0 / bins
    bottom.bar(mean_p, counts, width=0.8 * width, color="tab:blue", alpha=0.7)
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("rows per bin")
    return fig


def multiclass_calibration_figure(
    y_true: ArrayLike, proba: ArrayLike, classes: Sequence[str], *, bins: int = 10
) -> Figure:
    """One-vs-rest reliability curves, one line per class, on one axes.

    Each class's curve compares ``proba[:, c]`` with the indicator ``y_true == c``;
    its one-vs-rest ECE is in the legend.
    """
    names = [str(c) for c in classes]
    yt = np.asarray(y_true).astype(str).ravel()
    prob = np.asarray(proba, dtype=np.float64)
    if prob.ndim != 2 or prob.shape != (yt.size, len(names)):
        raise ValueError(
            f"proba must have shape ({yt.size}, {len(names)}) (rows, classes), got {prob.shape}"
        )
    fig = Figure(figsize=(6.5, 6), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    # A taxonomy has up to 12 stages; the default cycle repeats its colours after 10.
    palette = colormaps["tab10" if len(names) <= 10 else "tab20"]
    for i, name in enumerate(names):
        hit = (yt == name).astype(np.float64)
        col = np.clip(prob[:, i], 0.0, 1.0)
        mean_p, frac_pos, _ = calibration_bins(hit, col, bins=bins)
        ece = expected_calibration_error(hit, col, bins=bins)
        ax.plot(mean_p, frac_pos, marker="o", color=palette(i), label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Calibration, one vs rest")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def roc_pr_figure(y: ArrayLike, scores: Mapping[str, ArrayLike]) -> Figure:
    """ROC and precision-recall curves side by side, one line per model.

    Parameters
    ----------
    y : array_like of {0, 1}
        Outcomes (1 = churned).
    scores : mapping of str to array_like
        Scores per model, e.g. ``{"churn head": p, "BG/NBD": q, "recency": r}``, so
        baselines appear next to the model. The legend shows the ROC AUC and the
        average precision.

    Returns
    -------
    matplotlib.figure.Figure
        Two axes: ROC (plus the chance diagonal) and PR (plus the base-rate line).
    """
    yy = np.asarray(y, dtype=np.float64).ravel()
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not 0 < yy.sum() < yy.size:
        raise ValueError("ROC and PR curves need both outcomes in y")
    if not scores:
        raise ValueError("scores must hold at least one model")

    fig = Figure(figsize=(11, 5), layout="constrained")
    ax_roc, ax_pr = fig.subplots(1, 2)
    for name, s in scores.items():
        ss = np.asarray(s, dtype=np.float64).ravel()
        if ss.shape != yy.shape or not np.isfinite(ss).all():
            raise ValueError(f"scores of {name!r} must be {yy.size} finite numbers")
        fpr, tpr, _ = roc_curve(yy, ss)
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(yy, ss)
        ap = average_precision_score(yy, ss)
        ax_pr.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f})")
    ax_roc.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax_roc.set_xlabel("false positive rate")
    ax_roc.set_ylabel("true positive rate")
    ax_roc.set_title("ROC")
    ax_roc.legend(loc="lower right", fontsize=8)
    base = yy.mean()
    ax_pr.axhline(base, linestyle="--", color="grey", label=f"base rate ({base:.3f})")
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_title("Precision-recall")
    ax_pr.legend(loc="upper right", fontsize=8)
    return fig


def feature_importance_figure(
    names: Sequence[str],
    importances: ArrayLike,
    *,
    top: int = 25,
    title: str = "Feature importance",
) -> Figure:
    """Horizontal bars of the ``top`` features by absolute importance, largest first.

    Negative importances (e.g. permutation importance below noise) keep their sign.
    """
    labels = [str(n) for n in names]
    values = np.asarray(importances, dtype=np.float64).ravel()
    if values.size != len(labels):
        raise ValueError(f"{len(labels)} names but {values.size} importances")
    if top < 1:
        raise ValueError("top must be >= 1")
    # stable sort, so equal importances keep the definition's order
    order = np.argsort(-np.abs(np.nan_to_num(values)), kind="stable")[:top]
    shown = order[::-1]  # barh draws bottom-up; put the largest at the top

    fig = Figure(figsize=(7, 1.0 + 0.3 * max(len(order), 1)), layout="constrained")
    ax = fig.subplots()
    ax.barh(np.arange(len(shown)), values[shown], color="tab:blue")
    ax.set_yticks(np.arange(len(shown)), [labels[i] for i in shown], fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("importance")
    ax.set_title(title if len(order) == len(labels) else f"{title} (top {len(order)})")
    return fig
