"""Whether the QC checker is fit to grade an edit (arrays in, documents out; the checker stage does the I/O).

A checker's call on an edit means something only for a concept it can see. For each concept, on the real
validation split: its AUROC with a patient-bootstrap interval, its positives, and a temperature that calibrates
its probabilities (temperature scaling: one scalar per concept dividing the logit, fitted by maximum
likelihood; it keeps the ranking, so AUROC and the operating threshold's decisions are unchanged, and the
probabilities QC records mean what they say). A concept whose interval's lower bound is under MIN_AUROC, or
that has fewer than MIN_POSITIVES validation positives, is *ungradable*: edits that set it are counted as
such, never silently accepted or rejected on the checker's word.
"""

from __future__ import annotations

import numpy as np

from cxr_audit.metrics.bootstrap import patient_weights, percentile_ci
from cxr_audit.metrics.discrimination import weighted_auroc

MIN_AUROC = 0.7
MIN_POSITIVES = 10
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimising the binary log loss of sigmoid(logit(p) / T) (bounded to [0.05, 20])."""
    from scipy.optimize import minimize_scalar

    z, y = _logit(probabilities), np.asarray(labels, np.float64)
    if y.size == 0 or y.min() == y.max():
        return 1.0

    def loss(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, s) - y * s))

    result = minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logit divided by `temperature` (1.0: unchanged, bit for bit)."""
    if temperature == 1.0:
        return np.asarray(probabilities)
    return 1 / (1 + np.exp(-_logit(probabilities) / temperature))


def grade_concepts(probabilities: np.ndarray, labels: np.ndarray, patients: np.ndarray, concepts: list[str],
                   replicates: int = 1000, seed: int = 0, min_auroc: float = MIN_AUROC,
                   min_positives: int = MIN_POSITIVES) -> dict[str, dict]:
    """Per concept: validation AUROC with its interval, positives, negatives, temperature, and whether the
    checker can grade it (with the reason when not). `labels` may hold NaN (unknown): those images are left
    out of that concept."""
    weights = patient_weights(np.asarray(patients, str), replicates, seed)
    grades = {}
    for j, concept in enumerate(concepts):
        known = ~np.isnan(labels[:, j])
        p, y = probabilities[known, j], labels[known, j]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        auroc = percentile_ci(float(weighted_auroc(p, y)[0]), weighted_auroc(p, y, weights[:, known]))
        entry = {"auroc": auroc.to_json(), "positives": positives, "negatives": negatives,
                 "temperature": round(fit_temperature(p, y), 6)}
        if positives < min_positives or negatives < min_positives:
            entry["gradable"], entry["reason"] = False, (
                f"{positives} positive and {negatives} negative validation images (at least {min_positives} of each "
                "are needed to judge the checker)")
        elif auroc.ci is None or auroc.ci[0] < min_auroc:
            lower = "not estimable" if auroc.ci is None else f"{auroc.ci[0]:.3f}"
            entry["gradable"], entry["reason"] = False, (
                f"validation AUROC {auroc.value:.3f}, lower 95% bound {lower} (under {min_auroc})")
        else:
            entry["gradable"], entry["reason"] = True, None
        grades[concept] = entry
    return grades


def ungradable_concepts(concepts: list[str], grading: dict[str, dict] | None) -> list[str]:
    """The concepts among `concepts` that the checker cannot grade: those graded unfit, and those it does not
    score at all. Without a grading (no checker) nothing is judged, so nothing is listed."""
    if grading is None:
        return []
    return [c for c in concepts if not grading.get(c, {}).get("gradable", False)]
