"""AUPRC (average precision) and AUROC, weighted so that a patient bootstrap is a weight matrix.

A bootstrap replicate that draws patient P k times is the original data with P's images weighted k. The
scores' order never changes between replicates, so each metric sorts once and evaluates every replicate
with cumulative sums over a (replicates x images) weight matrix. With unit weights both metrics equal
scikit-learn's `average_precision_score` and `roc_auc_score` (ties included); a test checks it.
"""

from __future__ import annotations

import numpy as np


def _sorted_cumulative(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray):
    """True/false positive weight at each distinct threshold, highest score first.

    weights: (B, N). Returns tps, fps of shape (B, T) for the T distinct score values.
    """
    order = np.argsort(-scores, kind="mergesort")
    s, y, w = scores[order], labels[order], weights[:, order]
    # the last index of each run of tied scores: a threshold includes all tied images at once
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.array([], dtype=int)
    ends = np.r_[distinct, s.size - 1]
    tps = np.cumsum(w * y, axis=1)[:, ends]
    fps = np.cumsum(w * (1 - y), axis=1)[:, ends]
    return tps, fps


def weighted_auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC for each row of `weights` (B, N); NaN where a replicate has no positives or no negatives."""
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    if scores.size == 0:  # no image: no ranking
        return np.full(len(weights), np.nan)
    tps, fps = _sorted_cumulative(scores, labels.astype(float), weights)
    p, n = tps[:, -1:], fps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.c_[np.zeros(len(tps)), tps / p]
        fpr = np.c_[np.zeros(len(fps)), fps / n]
        area = np.sum((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    area[(p[:, 0] <= 0) | (n[:, 0] <= 0)] = np.nan
    return area


def weighted_average_precision(scores: np.ndarray, labels: np.ndarray,
                               weights: np.ndarray | None = None) -> np.ndarray:
    """Average precision, sum over thresholds of (R_k - R_{k-1}) * P_k (scikit-learn's definition, no
    interpolation); NaN where a replicate has no positives."""
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    if scores.size == 0:  # no image: no positive
        return np.full(len(weights), np.nan)
    tps, fps = _sorted_cumulative(scores, labels.astype(float), weights)
    p = tps[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), 0.0)
        recall = tps / p
        recall_steps = np.diff(np.c_[np.zeros(len(tps)), recall], axis=1)
        ap = np.sum(recall_steps * precision, axis=1)
    ap[p[:, 0] <= 0] = np.nan
    return ap


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray, points: int = 60) -> dict[str, list[float]]:
    """Precision and recall at each distinct score threshold (tied scores enter together, as in the AUPRC
    above), thinned to about `points` thresholds for plotting; empty when there is no positive."""
    labels = labels.astype(float)
    if labels.sum() == 0:
        return {"precision": [], "recall": []}
    tps, fps = _sorted_cumulative(scores, labels, np.ones((1, scores.size)))
    tps, fps = tps[0], fps[0]
    keep = np.unique(np.linspace(0, tps.size - 1, min(points, tps.size)).astype(int))
    precision = tps[keep] / (tps[keep] + fps[keep])
    recall = tps[keep] / tps[-1]
    return {"precision": [round(float(v), 5) for v in precision], "recall": [round(float(v), 5) for v in recall]}


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float,
                      weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Precision, recall (sensitivity), specificity and F1 at an operating threshold (score >= t)."""
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    predicted = (scores >= threshold).astype(float)
    y = labels.astype(float)
    tp = weights @ (predicted * y)
    fp = weights @ (predicted * (1 - y))
    fn = weights @ ((1 - predicted) * y)
    tn = weights @ ((1 - predicted) * (1 - y))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
        specificity = tn / (tn + fp)
        f1 = 2 * tp / (2 * tp + fp + fn)
    return {"precision": precision, "recall": recall, "specificity": specificity, "f1": f1}


def choose_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises F1 on a validation split (ties: the lowest such threshold)."""
    candidates = np.unique(scores)
    if candidates.size == 0 or labels.sum() == 0:
        return 0.5
    f1 = threshold_metrics_grid(scores, labels, candidates)
    return float(candidates[int(np.nanargmax(f1))])


def threshold_metrics_grid(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    predicted = scores[None, :] >= thresholds[:, None]
    tp = (predicted & (labels[None, :] == 1)).sum(1)
    fp = (predicted & (labels[None, :] == 0)).sum(1)
    fn = ((~predicted) & (labels[None, :] == 1)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2 * tp / (2 * tp + fp + fn)
