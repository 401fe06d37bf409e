"""The audit's findings about its coverage gaps, in the order an auditor asks the questions:

1. Does a coverage gap hurt the deployed model? Each under-covered cell's findings scored in the cell's context
   against the covered context (metrics.json `context_gaps`, the deployed model).
2. What does the frozen model do wrong there? The probe's harmful side effects: an edit that should not move a
   concept's score moves it toward the wrong answer (a shortcut, or an interaction the model never saw).
3. Did CARS close the gap, against each control? On each under-covered cell: the CARS arm minus the real-only
   arm (extra training), the unconstrained arm (anatomy preservation), the null-edit arm (generator texture)
   and the deployed model, as paired differences of AUPRC and ECE, and of the context gap itself.

Computed once from the typed audit document; the PDF's first page states them.
"""

from __future__ import annotations

from cxr_audit.audit.document import (
    AuditDocument,
    ControlComparison,
    GapFinding,
    MethodFindings,
)
from cxr_audit.evaluation.documents import Difference

CONTROLS = ("real_only", "unconstrained", "null_edits", "baseline")
CONTROL_NAMES = {"real_only": "real-only fine-tune (same budget)", "unconstrained": "unconstrained regeneration",
                 "null_edits": "null edits (texture control)", "baseline": "the deployed model"}


def _excludes_zero_below(difference: Difference | None) -> bool:
    return bool(difference and difference.ci and difference.ci[1] is not None and difference.ci[1] < 0)


def _excludes_zero_above(difference: Difference | None) -> bool:
    return bool(difference and difference.ci and difference.ci[0] is not None and difference.ci[0] > 0)


def _text(difference: Difference | None) -> str:
    if difference is None or difference.difference is None:
        return "not estimable"
    if not difference.ci or None in difference.ci:
        return f"{difference.difference:+.3f} (interval not estimable)"
    return f"{difference.difference:+.3f} (95% CI {difference.ci[0]:+.3f} to {difference.ci[1]:+.3f})"


def method_findings(document: AuditDocument) -> MethodFindings:
    baseline = document.metrics("baseline")
    targets = [c.id for c in document.coverage.cells
               if c.deficit > 0 and c.plausible and c.id in baseline.context_gaps]
    findings = MethodFindings(target_cells=targets)
    for cell_id in targets:
        for finding, gap in baseline.context_gaps[cell_id].items():
            if gap.auroc_gap is None:
                continue
            findings.gaps.append(GapFinding(
                **gap.model_dump(), cell_id=cell_id, finding=finding,
                significant=_excludes_zero_below(gap.auroc_gap) or _excludes_zero_below(gap.auprc_gap)))
    harmful = [e for e in document.probe.side_effects.values() if e.harmful] if document.probe else []
    findings.probe = sorted(harmful, key=lambda e: -(e.mean_harm.value or 0))
    for cell_id in targets:
        for control in CONTROLS:
            comparison = document.comparisons.get(f"cars vs {control}")
            if comparison is None:
                continue
            cell = comparison.differences.get(f"cell:{cell_id}", {})
            gap_change = {key.split(":", 2)[2]: metrics["auroc_gap"] for key, metrics in comparison.differences.items()
                          if key.startswith(f"gap:{cell_id}:") and "auroc_gap" in metrics}
            auprc = cell.get("auprc")
            verdict = ("better" if _excludes_zero_above(auprc) else "worse" if _excludes_zero_below(auprc)
                       else "no difference shown")
            findings.cars_vs_controls.append(ControlComparison(cell_id=cell_id, control=control, auprc=auprc,
                                                               ece=cell.get("ece"), gap_change=gap_change,
                                                               verdict=verdict))
    findings.statements = _statements(findings, probed=document.probe is not None)
    return findings


def _statements(findings: MethodFindings, probed: bool = True) -> list[str]:
    out = []
    for gap in findings.gaps:
        if gap.significant:
            out.append(f"Coverage gap hurts the deployed model: {gap.context} ({gap.cell_id}) has AUROC "
                       f"{gap.auroc_cell_context.value:.3f} against {gap.auroc_covered.value:.3f} in the covered context, "
                       f"a gap of {_text(gap.auroc_gap)}; AUPRC gap at matched prevalence {_text(gap.auprc_gap)}.")
    if findings.gaps and not any(g.significant for g in findings.gaps):
        out.append("No coverage gap was shown to hurt the deployed model: every under-covered context's AUROC and "
                   "AUPRC gap interval includes 0.")
    if probed and not findings.probe:
        out.append("Probe: no edit was shown to move the score of a concept it left alone the wrong way (each kind "
                   "of side effect needs 8 pairs or more, and both intervals excluding chance).")
    for effect in findings.probe[:3]:
        state = "present" if effect.concept_present else "absent"
        share = effect.share_harmful
        out.append(f"Probe: '{effect.edit}' moves the {effect.concept} score the wrong way ({effect.concept} {state}) in "
                   f"{share.value:.0%} of {effect.pairs} pairs (95% CI {share.ci[0]:.0%}-{share.ci[1]:.0%}), mean "
                   f"shift {effect.mean_harm.value:+.3f}: the model reads {effect.edit.split(' ', 1)[1]} as evidence "
                   f"about {effect.concept}.")
    by_cell: dict[str, list[ControlComparison]] = {}
    for comparison in findings.cars_vs_controls:
        by_cell.setdefault(comparison.cell_id, []).append(comparison)
    for cell_id, comparisons in by_cell.items():
        parts = []
        for verdict in ("better", "worse", "no difference shown"):
            controls = [CONTROL_NAMES[c.control] for c in comparisons if c.verdict == verdict]
            if controls:
                parts.append(f"{'no difference shown against' if verdict.startswith('no') else verdict + ' than'} "
                             + ", ".join(controls))
        out.append(f"CARS on {cell_id} (cell AUPRC): " + "; ".join(parts) + " (table below).")
    return out
