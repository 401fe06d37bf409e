"""Post-hoc recalibration of one concept's probabilities, fitted on a site's validation split.

Three maps, each monotone so the model's ranking (AUROC, AUPRC) is unchanged and only calibration moves:
- temperature: p -> sigmoid(logit(p) / T), one parameter (Guo et al. 2017); the default, hardest to overfit;
- platt: p -> sigmoid(a + b logit(p)) (logistic recalibration, the fit of the calibration slope);
- isotonic: a non-decreasing step map (sklearn's IsotonicRegression, clipped to the fitted range).
A concept whose validation labels hold one class only cannot be fitted and keeps its probabilities (said).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cxr_audit.metrics.calibration import fit_line, logit, sigmoid

Method = Literal["temperature", "platt", "isotonic"]
METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
_TEMPERATURE_BOUNDS = (-5.0, 5.0)  # log T: T from 0.007 to 148


@dataclass
class Recalibration:
    """One concept's fitted map (identity when it could not be fitted: `reason` says why)."""

    method: str
    parameters: dict = field(default_factory=dict)
    reason: str = ""
    _isotonic: object | None = None

    def apply(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=float)
        if self.reason:
            return scores
        if self.method == "temperature":
            return sigmoid(logit(scores) / self.parameters["temperature"])
        if self.method == "platt":
            return sigmoid(self.parameters["intercept"] + self.parameters["slope"] * logit(scores))
        return np.asarray(self._isotonic.predict(scores), dtype=float)

    def to_json(self) -> dict:
        return {"method": self.method, "parameters": {k: round(float(v), 6) for k, v in self.parameters.items()},
                **({"not_fitted": self.reason} if self.reason else {})}


def fit_recalibration(method: str, scores: np.ndarray, labels: np.ndarray) -> Recalibration:
    """Fit `method` on validation scores and 0/1 labels (unknown labels already left out)."""
    if method not in METHODS:
        raise ValueError(f"unknown recalibration method {method!r}; choose from {', '.join(METHODS)}")
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=float)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        return Recalibration(method, reason=f"the validation split has {positives} positives among {labels.size} "
                                            "labelled images: nothing to fit, probabilities kept")
    if method == "temperature":
        return Recalibration(method, {"temperature": _fit_temperature(scores, labels)})
    if method == "platt":
        intercept, slope = fit_line(scores, labels)
        if not (np.isfinite(intercept) and np.isfinite(slope)):
            return Recalibration(method, reason="the validation labels are separated by the scores: the logistic fit "
                                                "does not converge, probabilities kept")
        return Recalibration(method, {"intercept": intercept, "slope": slope})
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    return Recalibration(method, {"steps": float(len(model.X_thresholds_))}, _isotonic=model)


def _fit_temperature(scores: np.ndarray, labels: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    x = logit(scores)

    def negative_log_likelihood(log_temperature: float) -> float:
        z = x / np.exp(log_temperature)
        return float(np.sum(np.logaddexp(0, z) - labels * z))  # -log L of sigmoid(z) against the labels

    fitted = minimize_scalar(negative_log_likelihood, bounds=_TEMPERATURE_BOUNDS, method="bounded",
                             options={"xatol": 1e-8})
    return float(np.exp(fitted.x))

