"""Does a coverage gap hurt the model? Each finding of a cell scored in the cell's context against the covered one.

A cell such as Cardiomegaly + Pleural Effusion, or Support Devices without Pleural Effusion, puts each of its
concepts in a context: the cell's other conditions (Effusion present; Devices present). A model that learned a
finding only where training data showed it (the covered context) detects it worse in the cell's context: an
enlarged heart under an effusion is missed, or, where effusions came with devices in training, images with
devices but no effusion (the cell's members, the effusion's negatives there) are called effusions. For each
concept F of a cell (`all_of` and `none_of`), with the rest of the cell as its context:

- AUROC of F's score for F among images in the cell's context, and among the others (the covered context);
- AUPRC likewise, with the cell context's negatives reweighted so that its prevalence of F equals the covered
  context's: AUPRC moves with prevalence, and the gap must not be prevalence;
- the gap, cell context minus covered, as a paired difference over the evaluation's own patient-bootstrap
  replicates (both contexts come from one resample of patients).

A negative gap whose interval excludes 0 is a coverage failure that really hurts the model.
"""

from __future__ import annotations

import numpy as np

from cxr_audit.evaluation.documents import ContextGap, Difference, Interval
from cxr_audit.metrics.bootstrap import paired_difference, percentile_ci
from cxr_audit.metrics.discrimination import weighted_auroc, weighted_average_precision
from cxr_audit.spec import Cell

MIN_CLASS = 5  # a context with fewer positives or negatives of the finding is listed, not scored


def _matched_prevalence(weights: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`weights` (B, n) with the negatives scaled per replicate so that the weighted prevalence equals
    `reference` (B,)."""
    positives = (weights * labels).sum(axis=1)
    negatives = (weights * (1 - labels)).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = positives * (1 - reference) / (reference * negatives)
    factor = np.where(np.isfinite(factor), factor, np.nan)
    return weights * (labels + (1 - labels) * factor[:, None])


def _context(cell: Cell, finding: str, labels: np.ndarray, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(known, in cell context) masks: the cell's conditions other than `finding` known, and all holding."""
    others_pos = [c for c in cell.all_of if c != finding]
    others_neg = [c for c in cell.none_of if c != finding]
    known = np.ones(len(labels), bool)
    holds = np.ones(len(labels), bool)
    for concept in others_pos + others_neg:
        column = labels[:, index[concept]]
        known &= ~np.isnan(column)
        holds &= column == (1 if concept in others_pos else 0)
    return known, holds


def context_gaps(cells: list[Cell], concepts: list[str], probabilities: np.ndarray, labels: np.ndarray,
                 weights: np.ndarray, frame=None) -> tuple[dict[str, dict[str, ContextGap]], dict]:
    """({cell id: {finding: ContextGap}}, replicates keyed 'gap:<cell>:<finding>' for paired comparisons
    between models). Cells without a context (one finding, no none_of), findings the model does not predict
    and No Finding are skipped."""
    index = {c: j for j, c in enumerate(concepts)}
    gaps: dict[str, dict[str, ContextGap]] = {}
    replicates: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
    both = np.vstack([np.ones((1, len(labels))), weights])  # row 0: the point estimate
    for cell in cells:
        if len(cell.all_of) + len(cell.none_of) < 2 or any(c not in index for c in cell.concepts):
            continue
        in_subgroup = cell.subgroup_mask(frame) if frame is not None else np.ones(len(labels), bool)
        for finding in [*cell.all_of, *cell.none_of]:
            if finding == "No Finding":
                continue
            j = index[finding]
            known, holds = _context(cell, finding, labels, index)
            known &= ~np.isnan(labels[:, j]) & in_subgroup
            y, s = np.nan_to_num(labels[:, j]), probabilities[:, j]
            cell_ctx, covered = known & holds, known & ~holds
            entry = {"context": _describe(cell, finding), "n_cell_context": int(cell_ctx.sum()),
                     "positives_cell_context": int(y[cell_ctx].sum()), "n_covered": int(covered.sum()),
                     "positives_covered": int(y[covered].sum())}
            scoreable = all(MIN_CLASS <= y[m].sum() <= m.sum() - MIN_CLASS for m in (cell_ctx, covered))
            if not scoreable:
                gaps.setdefault(cell.id, {})[finding] = ContextGap(
                    **entry, reason=f"fewer than {MIN_CLASS} positives or negatives in a context")
                continue
            w_cell, w_cov = both[:, cell_ctx], both[:, covered]
            reference = (w_cov * y[covered]).sum(axis=1) / w_cov.sum(axis=1)
            reps = {
                "auroc_cell_context": weighted_auroc(s[cell_ctx], y[cell_ctx], w_cell),
                "auroc_covered": weighted_auroc(s[covered], y[covered], w_cov),
                "auprc_cell_context": weighted_average_precision(
                    s[cell_ctx], y[cell_ctx], _matched_prevalence(w_cell, y[cell_ctx], reference)),
                "auprc_covered": weighted_average_precision(s[covered], y[covered], w_cov),
            }
            for metric in ("auroc", "auprc"):
                reps[f"{metric}_gap"] = reps[f"{metric}_cell_context"] - reps[f"{metric}_covered"]
            replicates[f"gap:{cell.id}:{finding}"] = {name: (float(r[0]), r[1:]) for name, r in reps.items()}
            intervals = {name: Interval(**percentile_ci(float(r[0]), r[1:]).to_json())
                         for name, r in reps.items() if not name.endswith("_gap")}
            differences = {f"{metric}_gap": Difference(**paired_difference(
                float(reps[f"{metric}_covered"][0]), float(reps[f"{metric}_cell_context"][0]),
                reps[f"{metric}_covered"][1:], reps[f"{metric}_cell_context"][1:]).to_json())
                for metric in ("auroc", "auprc")}
            gaps.setdefault(cell.id, {})[finding] = ContextGap(**entry, **intervals, **differences)
    return gaps, replicates


def _describe(cell: Cell, finding: str) -> str:
    parts = [f"with {c}" for c in cell.all_of if c != finding] + [f"without {c}" for c in cell.none_of if c != finding]
    return f"{finding} " + " and ".join(parts)
