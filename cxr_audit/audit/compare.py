"""`cxr-audit compare`: two audits side by side, with paired differences when they share a test set."""

from __future__ import annotations

from dataclasses import dataclass

from cxr_audit.audit.gate import AuditRun, check_same_test_set
from cxr_audit.errors import UserInputError
from cxr_audit.metrics.bootstrap import PairedDifference, paired_difference

COMPARED_METRICS = ("auprc", "auroc", "ece")


@dataclass
class Row:
    target: str                  # a concept, or 'cell:<id>'
    metric: str
    old: float | None
    new: float | None
    difference: PairedDifference | None   # None when either value is missing


def compare_audits(old: AuditRun, new: AuditRun) -> tuple[list[Row], str | None]:
    """Rows for every target both audits scored; the note says why intervals are missing, if they are."""
    try:
        check_same_test_set(new, old)
        reps_old, reps_new, note = old.replicates("baseline"), new.replicates("baseline"), None
    except UserInputError as reason:
        reps_old, reps_new, note = {}, {}, f"{reason} Differences are shown without paired intervals."
    metrics_old, metrics_new = old.metrics("baseline"), new.metrics("baseline")
    targets = list(metrics_new.concepts) + [f"cell:{c}" for c in metrics_new.evaluated_cells()]
    rows = []
    for target in targets:
        entry_old, entry_new = metrics_old.target(target), metrics_new.target(target)
        if entry_old is None or entry_old.auprc is None:
            continue
        for metric in COMPARED_METRICS:
            v_old, v_new = entry_old.metric(metric).value, entry_new.metric(metric).value
            difference = None
            if target in reps_old and target in reps_new:
                (p_old, r_old), (p_new, r_new) = reps_old[target][metric], reps_new[target][metric]
                _check_point(old, target, metric, v_old, p_old)
                _check_point(new, target, metric, v_new, p_new)
                if v_old is not None and v_new is not None:
                    difference = paired_difference(p_old, p_new, r_old, r_new)
            elif v_old is not None and v_new is not None:  # a value the audit does not have is never compared
                difference = PairedDifference(v_new - v_old, None, None)
            rows.append(Row(target, metric, v_old, v_new, difference))
    return rows, note


def _check_point(run: AuditRun, target: str, metric: str, value: float | None, point: float) -> None:
    """The audit's value and its replicates file's point estimate are one number (or both undefined); when they
    differ the audit was edited after it was made, and nothing is compared."""
    import math

    if value is None or not math.isfinite(point):
        same = value is None and not math.isfinite(point)
    else:
        same = abs(value - point) <= 1e-5  # (the audit rounds to 6 digits)
    if not same:
        raise UserInputError(f"{run.path}: {target} {metric} is {value} but its bootstrap replicates say {point}: "
                             "the audit was edited after it was made. Audit the model again.")
