"""Evaluation plots: structure of each figure, and each saves to a PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from customer_lifecycle.training.plots import (
    calibration_figure,
    confusion_matrix_figure,
    feature_importance_figure,
    multiclass_calibration_figure,
    roc_pr_figure,
)
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

CLASSES = ["awareness", "consideration", "purchase", "retention", "advocacy"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


def _saves_png(fig: Figure, path) -> None:
    fig.savefig(path)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1_000


def test_importing_and_drawing_does_not_touch_pyplot(tmp_path):
    # a fresh interpreter: another test may have imported pyplot in this one
    code = (
        "import sys, training.plots as p; "
        "p.feature_importance_figure(['a'], [1.0]).savefig(sys.argv[1]); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "False"
    assert (tmp_path / "x.png").read_bytes().startswith(PNG_MAGIC)


def test_confusion_matrix_figure(tmp_path):
    y_true = ["awareness", "purchase", "purchase", "retention", "advocacy", "advocacy"]
    y_pred = ["awareness", "purchase", "retention", "retention", "advocacy", "purchase"]
    fig = confusion_matrix_figure(y_true, y_pred, CLASSES)
    assert isinstance(fig, Figure)
    ax, colorbar = fig.axes  # heat map and its colour bar
    image = next(a for a in ax.get_children() if isinstance(a, AxesImage))
    shown = np.asarray(image.get_array())
    assert shown.shape == (5, 5)
    # rows are shares of the true class; the absent class (consideration) stays 0
    np.testing.assert_allclose(shown.sum(axis=1), [1, 0, 1, 1, 1])
    assert shown[2, 3] == pytest.approx(0.5)  # one of two purchases called retention
    assert len(ax.texts) == 25
    assert [t.get_text() for t in ax.get_yticklabels()] == CLASSES
    _saves_png(fig, tmp_path / "confusion.png")


def test_confusion_matrix_counts_and_unknown_labels():
    fig = confusion_matrix_figure(["a", "a", "b"], ["a", "b", "b"], ["a", "b"], normalize=False)
    image = next(a for a in fig.axes[0].get_children() if isinstance(a, AxesImage))
    np.testing.assert_array_equal(np.asarray(image.get_array()), [[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="not among the classes"):
        confusion_matrix_figure(["a"], ["c"], ["a", "b"])


def test_calibration_figure(tmp_path, rng):
    p = rng.uniform(0, 1, 500)
    y = (rng.random(500) < p).astype(int)
    fig = calibration_figure(y, p, title="Churn calibration")
    curve_ax, count_ax = fig.axes
    assert curve_ax.get_title() == "Churn calibration"
    assert len(curve_ax.lines) == 2  # diagonal and the model
    assert curve_ax.lines[1].get_xdata().size == 10  # every uniform bin is filled
    bars = count_ax.patches
    assert len(bars) == 10
    assert sum(b.get_height() for b in bars) == 500
    assert "ECE" in curve_ax.get_legend().get_texts()[1].get_text()
    _saves_png(fig, tmp_path / "calibration.png")


def test_multiclass_calibration_figure(tmp_path, rng):
    n = 400
    proba = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    y = np.array([rng.choice(CLASSES, p=row) for row in proba])
    fig = multiclass_calibration_figure(y, proba, CLASSES)
    (ax,) = fig.axes
    assert len(ax.lines) == len(CLASSES) + 1  # one per class and the diagonal
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(any(t.startswith(c) for t in legend) for c in CLASSES)
    _saves_png(fig, tmp_path / "stage_calibration.png")
    with pytest.raises(ValueError, match="shape"):
        multiclass_calibration_figure(y, proba[:, :3], CLASSES)


def test_multiclass_calibration_tells_twelve_stages_apart(rng):
    # a taxonomy may have 12 stages; matplotlib's default cycle repeats after 10
    classes = [f"stage {i}" for i in range(12)]
    proba = rng.dirichlet(np.ones(12), size=600)
    y = np.array([rng.choice(classes, p=row) for row in proba])
    (ax,) = multiclass_calibration_figure(y, proba, classes).axes
    colours = {tuple(line.get_color()) for line in ax.lines[1:]}
    assert len(colours) == 12


def test_roc_pr_figure_has_one_line_per_model(tmp_path, rng):
    y = rng.integers(0, 2, 300)
    scores = {
        "churn head": y + rng.normal(0, 0.7, 300),
        "BG/NBD": y + rng.normal(0, 1.5, 300),
        "recency": rng.normal(size=300),
    }
    fig = roc_pr_figure(y, scores)
    roc_ax, pr_ax = fig.axes
    assert len(roc_ax.lines) == 3 + 1  # models and the chance diagonal
    assert len(pr_ax.lines) == 3 + 1  # models and the base-rate line
    legend = [t.get_text() for t in roc_ax.get_legend().get_texts()]
    assert legend[0].startswith("churn head (AUC 0.")
    assert legend[1].startswith("BG/NBD (AUC")
    # the better model's ROC curve has the larger area
    aucs = [float(t.split("AUC ")[1].rstrip(")")) for t in legend[:3]]
    assert aucs[0] > aucs[1] > 0.5
    _saves_png(fig, tmp_path / "roc_pr.png")


def test_roc_pr_figure_refuses_one_class():
    with pytest.raises(ValueError, match="both outcomes"):
        roc_pr_figure(np.zeros(5), {"m": np.arange(5.0)})
    with pytest.raises(ValueError, match="'m'"):
        roc_pr_figure([0, 1, 0], {"m": [0.1, 0.2]})


def test_feature_importance_figure(tmp_path):
    names = [f"f{i}" for i in range(40)]
    importances = np.arange(40.0)
    importances[5] = -100.0  # large negative importance counts by magnitude
    fig = feature_importance_figure(names, importances, top=10, title="Churn head")
    (ax,) = fig.axes
    assert len(ax.patches) == 10
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "f5"  # largest at the top
    assert labels[-2] == "f39"
    assert "top 10" in ax.get_title()
    _saves_png(fig, tmp_path / "importance.png")


def test_feature_importance_figure_with_few_features():
    fig = feature_importance_figure(["a", "b"], [0.2, 0.8])
    (ax,) = fig.axes
    assert len(ax.patches) == 2
    assert ax.get_title() == "Feature importance"
    with pytest.raises(ValueError, match="2 names but 3"):
        feature_importance_figure(["a", "b"], [1.0, 2.0, 3.0])
