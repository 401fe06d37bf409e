"""From predictions and real labels to the scores of metrics.json: per concept and per coverage cell, with
patient-level bootstrap CIs.

One bootstrap weight matrix (patients resampled) is drawn for the whole test set and shared by every
concept and cell, and by every model scored on the same images with the same seed: that is what makes the
paired comparison between a baseline and a candidate valid.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_audit.errors import UserInputError

from cxr_audit.evaluation.documents import (
    Bootstrap,
    CellMetrics,
    ConceptMetrics,
    Curve,
    Difference,
    Reliability,
    UncertaintyHistogram,
    UncertaintyMethod,
)
from cxr_audit.metrics.bootstrap import paired_difference, patient_weights, percentile_ci
from cxr_audit.metrics.calibration import (
    calibration_errors,
    calibration_line,
    reliability_diagram,
    smooth_ece,
    smooth_reliability,
)
from cxr_audit.metrics.discrimination import (
    choose_threshold,
    precision_recall_curve,
    threshold_metrics,
    weighted_auroc,
    weighted_average_precision,
)
from cxr_audit.metrics.uncertainty import binary_entropy, decompose
from cxr_audit.provenance import atomic_write_bytes
from cxr_audit.spec import Cell


@dataclass
class EvaluationInput:
    """Everything evaluation needs, for images of one split."""

    concepts: list[str]               # columns of probabilities and labels
    probabilities: np.ndarray         # (N, K)
    labels: np.ndarray                # (N, K): 1, 0, NaN unknown
    patient_ids: np.ndarray           # (N,)
    thresholds: dict[str, tuple[float, str]]   # concept -> (threshold, where it came from)
    stochastic: np.ndarray | None = None       # (T, N, K) MC-dropout / TTA samples
    stochastic_method: str | None = None
    frame: object | None = None       # manifest frame (sex, age, view) for subgroup cells
    cells: list[Cell] = field(default_factory=list)
    cell_plausibility: dict[str, bool] = field(default_factory=dict)


def choose_thresholds(concepts: list[str], card_thresholds: dict[str, float],
                      validation: tuple[np.ndarray, np.ndarray] | None) -> dict[str, tuple[float, str]]:
    """Each concept's operating threshold and where it came from: the model card, else the validation split
    (max F1), else 0.5."""
    out = {}
    for j, concept in enumerate(concepts):
        if concept in card_thresholds:
            out[concept] = (float(card_thresholds[concept]), "model card")
        elif validation is not None:
            probabilities, labels = validation
            known = ~np.isnan(labels[:, j])
            if labels[known, j].sum() > 0:
                value = choose_threshold(probabilities[known, j], labels[known, j])
                out[concept] = (round(value, 6), "validation split (max F1)")
                continue
            out[concept] = (0.5, "default (no validation positives)")
        else:
            out[concept] = (0.5, "default (no card threshold, no validation split)")
    return out


def _replicate_metrics(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray, threshold: float,
                       mutual_information: np.ndarray | None) -> dict[str, tuple[float, np.ndarray]]:
    """(point estimate, bootstrap replicates) of every metric for one binary target."""
    unit = np.ones((1, scores.size))
    both = np.vstack([unit, weights])  # row 0 is the point estimate
    with np.errstate(invalid="ignore", divide="ignore"):  # a replicate may draw no image: NaN, not an error
        return _metric_rows(scores, labels, both, threshold, mutual_information)


def _metric_rows(scores, labels, both, threshold, mutual_information) -> dict[str, tuple[float, np.ndarray]]:
    values: dict[str, np.ndarray] = {
        "auprc": weighted_average_precision(scores, labels, both),
        "auroc": weighted_auroc(scores, labels, both),
    }
    # Ranking needs both classes: with no negatives AUPRC would read a perfect 1.0 and with no positives it is
    # undefined, so either way the ranking metrics are not estimable (in the point estimate or a replicate).
    one_class = (both @ labels == 0) | (both @ (1 - labels) == 0)
    for name in ("auprc", "auroc"):
        values[name] = np.where(one_class, np.nan, values[name])
    values.update(calibration_errors(scores, labels, both))
    values["smece"] = smooth_ece(scores, labels, both)
    values.update(calibration_line(scores, labels, both))
    values["entropy"] = both @ binary_entropy(scores) / both.sum(axis=1)
    if mutual_information is not None:
        values["mutual_information"] = both @ mutual_information / both.sum(axis=1)
    values.update(threshold_metrics(scores, labels, threshold, both))
    return {name: (float(v[0]), v[1:]) for name, v in values.items()}


def _summarise(replicated: dict[str, tuple[float, np.ndarray]]) -> dict[str, dict]:
    return {name: percentile_ci(point, reps).to_json() for name, (point, reps) in replicated.items()}


def cell_target(cell: Cell, concepts: list[str], probabilities: np.ndarray, labels: np.ndarray):
    """A cell as a binary task: target = in the cell; score = P(all_of) * P(not none_of), treating the
    model's outputs as independent. Images with an unknown label for any of the cell's concepts are left
    out. Returns (known mask, scores, targets) or None when the model does not predict a cell concept."""
    index = {c: j for j, c in enumerate(concepts)}
    if any(c not in index for c in cell.concepts):
        return None
    columns = [index[c] for c in cell.concepts]
    known = ~np.isnan(labels[:, columns]).any(axis=1)
    score = np.ones(len(labels))
    target = np.ones(len(labels), dtype=bool)
    for c in cell.all_of:
        score *= probabilities[:, index[c]]
        target &= labels[:, index[c]] == 1
    for c in cell.none_of:
        score *= 1 - probabilities[:, index[c]]
        target &= labels[:, index[c]] == 0
    return known, score, target.astype(float)


def cell_threshold(cell: Cell, thresholds: dict[str, tuple[float, str]]) -> float:
    """The cell's operating threshold: its score function applied to the concepts' thresholds, so an image
    whose every concept sits exactly at its threshold sits exactly at the cell's (all_of t, none_of 1 - t)."""
    value = float(np.prod([thresholds[c][0] for c in cell.all_of]))
    return value * float(np.prod([1 - thresholds[c][0] for c in cell.none_of]))


@dataclass
class Evaluation:
    """The scores of metrics.json plus the replicates needed to compare this evaluation with another on the
    same images."""

    scores: dict                # the MetricsDocument fields computed here (concepts, cells, curves, ...)
    replicates: dict[str, dict[str, tuple[float, np.ndarray]]]  # target id -> metric -> (point, reps)


def columns(weights: np.ndarray, known: np.ndarray) -> np.ndarray:
    """The bootstrap weights of the known images: the matrix itself when every image is known (a copy of a
    replicates x images matrix per concept is what large test sets cannot afford)."""
    return weights if known.all() else weights[:, known]


def evaluate(data: EvaluationInput, n_replicates: int = 1000, seed: int = 0) -> Evaluation:
    weights = patient_weights(data.patient_ids, n_replicates, seed)
    mutual = decompose(data.stochastic)["mutual_information"] if data.stochastic is not None else None
    concepts_out, reliability, curves, replicates = {}, {}, {}, {}
    for j, concept in enumerate(data.concepts):
        known = ~np.isnan(data.labels[:, j])
        scores, labels = data.probabilities[known, j], data.labels[known, j]
        threshold = data.thresholds[concept][0]
        known_weights = columns(weights, known)
        replicated = _replicate_metrics(scores, labels, known_weights, threshold,
                                        None if mutual is None else mutual[known, j])
        replicates[concept] = replicated
        concepts_out[concept] = ConceptMetrics(
            n=int(known.sum()), positives=int(labels.sum()), patients=int(np.unique(data.patient_ids[known]).size),
            prevalence=round(float(labels.mean()), 6) if labels.size else None,
            threshold={"value": threshold, "source": data.thresholds[concept][1]}, **_summarise(replicated))
        reliability[concept] = Reliability(**reliability_diagram(scores, labels),
                                           smooth=smooth_reliability(scores, labels, known_weights))
        curves[concept] = Curve(**precision_recall_curve(scores, labels))

    cells_out = {}
    for cell in data.cells:
        target = cell_target(cell, data.concepts, data.probabilities, data.labels)
        if target is None:
            cells_out[cell.id] = CellMetrics(evaluated=False, reason="the model does not predict every concept "
                                             "of this cell")
            continue
        known, score, in_cell = target
        if data.frame is not None:
            known &= cell.subgroup_mask(data.frame)
        if not known.any():
            cells_out[cell.id] = CellMetrics(evaluated=False, reason="no test image in the cell's subgroup with "
                                             "every concept of the cell labelled")
            continue
        threshold = cell_threshold(cell, data.thresholds)
        replicated = _replicate_metrics(score[known], in_cell[known], columns(weights, known), threshold, None)
        replicates[f"cell:{cell.id}"] = replicated
        cells_out[cell.id] = CellMetrics(
            evaluated=True, all_of=cell.all_of, none_of=cell.none_of,
            subgroup=cell.subgroup.model_dump() if cell.subgroup else None,
            plausible=data.cell_plausibility.get(cell.id, True),
            n=int(known.sum()), positives=int(in_cell[known].sum()),
            threshold={"value": round(threshold, 6), "source": "the cell's score at the concept thresholds: product "
                       "of the all_of thresholds and of (1 - threshold) for each none_of concept"},
            **_summarise(replicated))
        curves[f"cell:{cell.id}"] = Curve(**precision_recall_curve(score[known], in_cell[known]))

    scores = {
        "n_images": int(len(data.labels)),
        "n_patients": int(np.unique(data.patient_ids).size),
        "bootstrap": Bootstrap(unit="patient", replicates=n_replicates, seed=seed, interval="percentile 95%"),
        "uncertainty": UncertaintyMethod(method=data.stochastic_method or "none",
                                         samples=int(data.stochastic.shape[0]) if data.stochastic is not None else 0),
        "concepts": concepts_out,
        "cells": cells_out,
        "reliability": reliability,
        "pr_curves": curves,
        "uncertainty_histograms": _uncertainty_histograms(data.concepts, data.probabilities, mutual),
    }
    if data.cells:
        from cxr_audit.evaluation.context_gaps import context_gaps

        frame = data.frame.reset_index(drop=True) if data.frame is not None else None
        scores["context_gaps"], gap_replicates = context_gaps(data.cells, data.concepts, data.probabilities,
                                                              data.labels, weights, frame)
        replicates.update(gap_replicates)
    if data.frame is not None:
        from cxr_audit.evaluation.subgroups import subgroup_metrics

        scores["subgroups"], scores["subgroup_gaps"] = subgroup_metrics(
            data.concepts, data.probabilities, data.labels, data.frame.reset_index(drop=True), weights)
    return Evaluation(scores, replicates)


def _uncertainty_histograms(concepts: list[str], probabilities: np.ndarray, mutual: np.ndarray | None,
                            bins: int = 20) -> dict[str, UncertaintyHistogram]:
    """Per concept, histograms of the predictive entropy (bits, 0-1) and, with stochastic passes, of the
    mutual information (epistemic part): what the report's uncertainty plots draw."""
    entropy = binary_entropy(probabilities)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = {}
    for j, concept in enumerate(concepts):
        out[concept] = UncertaintyHistogram(
            bin_edges=[round(float(e), 4) for e in edges],
            entropy_bits=np.histogram(entropy[:, j], edges)[0].astype(int).tolist(),
            mutual_information_bits=None if mutual is None else
            np.histogram(np.clip(mutual[:, j], 0, 1), edges)[0].astype(int).tolist())
    return out


Replicates = dict[str, dict[str, tuple[float, np.ndarray]]]


def compare(old: Replicates, new: Replicates) -> dict[str, dict[str, Difference]]:
    """Paired bootstrap of new - old for every target and metric both evaluations share.

    Valid only when both were computed on the same images with the same bootstrap seed (the caller checks
    the test set's identity)."""
    out: dict[str, dict[str, Difference]] = {}
    for target, metrics in new.items():
        if target not in old:
            continue
        out[target] = {}
        for name, (point_new, reps_new) in metrics.items():
            if name not in old[target]:
                continue
            point_old, reps_old = old[target][name]
            out[target][name] = Difference(**paired_difference(point_old, point_new, reps_old, reps_new).to_json())
    return out


def save_replicates(path: Path, replicates: dict[str, dict[str, tuple[float, np.ndarray]]]) -> None:
    """Bootstrap replicates per target and metric, point estimate first: what a paired comparison with another
    run on the same test images needs (the gate reads them)."""
    arrays = {f"{target}::{metric}": np.concatenate([[np.nan if point is None else point], np.asarray(reps, float)])
              for target, metrics in replicates.items() for metric, (point, reps) in metrics.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_replicates(path: Path) -> dict[str, dict[str, tuple[float, np.ndarray]]]:
    """A replicates file (target::metric -> point estimate, then the replicates); a damaged one is named."""
    import zipfile

    out: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                target, metric = key.rsplit("::", 1)
                values = data[key]
                out.setdefault(target, {})[metric] = (float(values[0]), values[1:])
    except (OSError, ValueError, EOFError, IndexError, zipfile.BadZipFile) as error:
        raise UserInputError(f"{path} is not a readable bootstrap replicates file ({error}). It is damaged or was "
                             "replaced: run the evaluation again to remake it.") from None
    return out


def test_set_sha256(predictions_path: Path) -> str:
    """The identity of a test set: its image ids and labels (not the model's outputs)."""
    import hashlib

    with np.load(predictions_path, allow_pickle=False) as data:
        digest = hashlib.sha256()
        digest.update("\n".join(map(str, data["image_id"])).encode())
        digest.update("\n".join(map(str, data["concepts"])).encode())
        digest.update(np.nan_to_num(data["labels"], nan=-1).astype(np.int8).tobytes())
    return digest.hexdigest()
