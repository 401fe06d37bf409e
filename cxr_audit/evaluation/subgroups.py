"""Performance by subgroup (what regulators ask for: FDA's guidance on AI-enabled devices, TRIPOD+AI): each
concept's AUROC and AUPRC by sex, age band, view and, for DICOM data, device manufacturer and model, with
patient-bootstrap intervals, and the largest gap between the subgroups of each variable with its interval.

The bootstrap weights are the evaluation's own (a subgroup is a column subset of them), so the gap's interval
is a paired difference over the same replicates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_audit.coverage import AGE_BANDS
from cxr_audit.evaluation.documents import Interval, SubgroupGap, SubgroupMetrics
from cxr_audit.metrics.bootstrap import percentile_ci
from cxr_audit.metrics.discrimination import weighted_auroc, weighted_average_precision

VARIABLES = ("sex", "age_band", "view", "manufacturer", "model")
MIN_IMAGES, MIN_CLASS = 20, 5  # a level with fewer images, positives or negatives is listed, not scored
METRICS = {"auroc": weighted_auroc, "auprc": weighted_average_precision}


def subgroup_levels(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Each subgroup variable the data has, as a label per image (None where unknown)."""
    levels: dict[str, pd.Series] = {}
    if "sex" in frame and frame["sex"].notna().any():
        levels["sex"] = frame["sex"]
    if "age" in frame and pd.to_numeric(frame["age"], errors="coerce").notna().any():
        age = pd.to_numeric(frame["age"], errors="coerce")
        bands = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        for lo, hi in AGE_BANDS:
            bands[(age >= lo) & (age < hi)] = f"{lo:g}-{hi:g}"
        levels["age_band"] = bands
    if "view" in frame and frame["view"].nunique() > 1:
        levels["view"] = frame["view"]
    for variable in ("manufacturer", "model"):
        if variable in frame and frame[variable].notna().any():
            levels[variable] = frame[variable]
    return levels


def subgroup_metrics(concepts: list[str], probabilities: np.ndarray, labels: np.ndarray, frame: pd.DataFrame,
                     weights: np.ndarray) -> tuple[dict, dict]:
    """({variable: {level: {concept: SubgroupMetrics}}}, {concept: {variable: {metric: SubgroupGap}}})."""
    metrics: dict[str, dict[str, dict[str, SubgroupMetrics]]] = {}
    gaps: dict[str, dict[str, dict[str, SubgroupGap]]] = {}
    for variable, values in subgroup_levels(frame).items():
        values = values.to_numpy(dtype=object)
        metrics[variable] = {}
        per_concept_reps: dict[str, dict[str, dict[str, tuple[float, np.ndarray]]]] = {}
        for level in sorted({v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}):
            in_level = values == level
            metrics[variable][str(level)] = {}
            for j, concept in enumerate(concepts):
                known = in_level & ~np.isnan(labels[:, j])
                y, s = labels[known, j], probabilities[known, j]
                entry = {"n": int(known.sum()), "positives": int(y.sum())}
                if known.sum() >= MIN_IMAGES and MIN_CLASS <= y.sum() <= known.sum() - MIN_CLASS:
                    both = np.vstack([np.ones((1, s.size)), weights[:, known]])
                    with np.errstate(invalid="ignore", divide="ignore"):
                        for name, function in METRICS.items():
                            values_ = function(s, y, both)
                            entry[name] = percentile_ci(values_[0], values_[1:]).to_json()
                            per_concept_reps.setdefault(concept, {}).setdefault(name, {})[str(level)] = \
                                (values_[0], values_[1:])
                metrics[variable][str(level)][concept] = SubgroupMetrics(**entry)
        for concept, by_metric in per_concept_reps.items():
            for name, by_level in by_metric.items():
                if len(by_level) >= 2:
                    gaps.setdefault(concept, {}).setdefault(variable, {})[name] = _gap(by_level)
    return metrics, gaps


def _gap(by_level: dict[str, tuple[float, np.ndarray]]) -> SubgroupGap:
    """The best level minus the worst (as the point estimates rank them), with the interval of that paired
    difference over the shared replicates. (Taking, per replicate, whichever levels are best and worst would
    never let the interval reach 0, even for equal subgroups.)"""
    points = {level: point for level, (point, _) in by_level.items()}
    highest, lowest = max(points, key=points.get), min(points, key=points.get)
    estimate = percentile_ci(points[highest] - points[lowest], by_level[highest][1] - by_level[lowest][1])
    return SubgroupGap(**Interval(**estimate.to_json()).model_dump(), highest=highest, lowest=lowest)

