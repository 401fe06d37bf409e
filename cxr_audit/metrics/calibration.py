"""Calibration of one label at a time: ECE (equal-width bins), ACE (equal-mass bins), MCE, Brier, and the
data of a reliability diagram.

Binary, one label at a time, on 1-D arrays: netcal's metrics silently treat a multi-hot label matrix as a
multi-class problem, so this module is the implementation the tool uses, and a test checks it against
netcal on the 1-D case. ECE follows Naeini et al. / Guo et al. for the positive class: bins over the
predicted probability p, |mean(y) - mean(p)| weighted by the bin's share of images.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 10


def _bin_stats(bin_index: np.ndarray, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, n_bins: int):
    """Per replicate and bin: total weight, weighted mean score, weighted mean label. Shapes (B, n_bins)."""
    one_hot = np.zeros((scores.size, n_bins))
    one_hot[np.arange(scores.size), bin_index] = 1.0
    count = weights @ one_hot
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = (weights * scores) @ one_hot / count
        frequency = (weights * labels) @ one_hot / count
    return count, confidence, frequency


def equal_width_bins(scores: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    return np.clip((scores * n_bins).astype(int), 0, n_bins - 1)


def equal_mass_bins(scores: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Bins between quantiles of the scores, so each holds about the same number of images."""
    edges = np.quantile(scores, np.linspace(0, 1, n_bins + 1)) if scores.size else np.linspace(0, 1, n_bins + 1)
    return np.clip(np.searchsorted(edges[1:-1], scores, side="right"), 0, n_bins - 1)


def calibration_errors(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None,
                       n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """ECE, ACE, MCE and Brier for each row of `weights` (B, N).

    ECE and MCE use equal-width bins; ACE uses equal-mass (quantile) bins formed on the full sample and kept for every bootstrap replicate (the replicate
    reweights images; it does not re-rank them).
    """
    weights = np.ones((1, scores.size)) if weights is None else np.atleast_2d(weights)
    labels = labels.astype(float)
    total = weights.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    for name, bins in (("ece", equal_width_bins(scores, n_bins)), ("ace", equal_mass_bins(scores, n_bins))):
        count, confidence, frequency = _bin_stats(bins, scores, labels, weights, n_bins)
        gap = np.nan_to_num(np.abs(frequency - confidence))
        if name == "ece":  # weighted by each bin's share of images
            out["ece"] = (count * gap).sum(axis=1) / total
            out["mce"] = np.where(count > 0, gap, 0.0).max(axis=1)
        else:  # Nixon et al.'s ACE: the plain mean over non-empty equal-mass bins
            out["ace"] = gap.sum(axis=1) / np.maximum((count > 0).sum(axis=1), 1)
    out["brier"] = (weights * (scores - labels) ** 2).sum(axis=1) / total
    for name in ("mce", "ace"):  # a replicate (or a target) with no image has no calibration either
        out[name] = np.where(total > 0, out[name], np.nan)
    return out


def reliability_diagram(scores: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, list]:
    """Per equal-width bin: edges, mean predicted probability, observed frequency, count (JSON-ready)."""
    count, confidence, frequency = _bin_stats(equal_width_bins(scores, n_bins), scores, labels.astype(float),
                                              np.ones((1, scores.size)), n_bins)

    def clean(row: np.ndarray) -> list:
        return [None if not np.isfinite(v) else round(float(v), 6) for v in row]

    return {"bin_edges": [round(e, 6) for e in np.linspace(0, 1, n_bins + 1).tolist()],
            "confidence": clean(confidence[0]), "frequency": clean(frequency[0]),
            "count": [int(c) for c in count[0]]}
