"""The audit's own verdict: a plain summary of what needs a reviewer's attention.

It is advisory and uses fixed, documented thresholds; the deployment decision in CI belongs to
`cxr-audit gate` and the team's policy file.
"""

from __future__ import annotations

MIN_AUROC_LOWER_BOUND = 0.70   # discrimination: the lower 95% CI bound of AUROC
MAX_ECE = 0.10                 # calibration: expected calibration error
MIN_PROBE_SHARE = 0.5          # the frozen model's score must follow an inserted concept on most edits
MAX_SUBGROUP_GAP = 0.10        # AUROC between subgroups: a concern when the gap's lower bound exceeds it


def audit_verdict(document) -> dict:
    """The advisory verdict of an AuditDocument (everything but its own `verdict`)."""
    concerns: list[str] = []
    strengths: list[str] = []
    for concept, entry in document.metrics("baseline").concepts.items():
        auroc, ece = entry.metric("auroc"), entry.metric("ece")
        if auroc.ci and auroc.ci[0] is not None and auroc.ci[0] < MIN_AUROC_LOWER_BOUND:
            concerns.append(f"{concept}: AUROC {auroc.value:.3f} (95% CI {auroc.ci[0]:.3f}-{auroc.ci[1]:.3f}) "
                            f"has a lower bound under {MIN_AUROC_LOWER_BOUND}")
        if ece.value is not None and ece.value > MAX_ECE:
            concerns.append(f"{concept}: ECE {ece.value:.3f} is above {MAX_ECE}")
    cells = document.coverage.cells
    for concept, by_variable in document.metrics("baseline").subgroup_gaps.items():
        for variable, by_metric in by_variable.items():
            gap = by_metric.get("auroc")
            if gap is not None and gap.estimable and gap.ci[0] > MAX_SUBGROUP_GAP:
                concerns.append(f"{concept}: AUROC {gap.value:.3f} lower for {variable} {gap.lowest} than {gap.highest} "
                                f"(95% CI {gap.ci[0]:.3f}-{gap.ci[1]:.3f})")
    deficits = [c for c in cells if c.deficit > 0 and c.plausible]
    if deficits:
        concerns.append(f"{len(deficits)} of {len(cells)} coverage cells are under-represented in the training data "
                        f"({', '.join(c.id for c in deficits[:6])}{', ...' if len(deficits) > 6 else ''})")
    for gap in document.findings.gaps:  # does an under-covered context really hurt the model?
        if gap.significant:
            concerns.append(f"coverage gap hurts the model: {gap.context} ({gap.cell_id}) AUROC "
                            f"{gap.auroc_cell_context.value:.3f} against {gap.auroc_covered.value:.3f} elsewhere")
    for effect in document.findings.probe:
        concerns.append(f"probe: '{effect.edit}' moves the {effect.concept} score the wrong way ({effect.concept} "
                        f"{'present' if effect.concept_present else 'absent'}) in "
                        f"{effect.share_harmful.value:.0%} of {effect.pairs} pairs")
    for entry in (document.probe.by_concept.values() if document.probe else []):
        share = entry.share_expected_direction.value
        # an edit that should raise its concept's score (an insertion) and rarely does
        if (entry.expected_direction or 0) > 0 and share is not None and share < MIN_PROBE_SHARE:
            concerns.append(f"probe: the model's {entry.concept} score rose on only {share:.0%} of "
                            f"{entry.pairs} edits that inserted it")
    comparison = document.comparisons.get("cars vs real_only")
    if comparison:
        for target, metrics in comparison.differences.items():
            auprc = metrics.get("auprc")
            if target.startswith("cell:") and auprc and auprc.ci and auprc.ci[0] is not None and auprc.ci[0] > 0:
                strengths.append(f"CARS fine-tune improves {target[5:]} AUPRC by {auprc.difference:+.3f} "
                                 f"(95% CI {auprc.ci[0]:+.3f} to {auprc.ci[1]:+.3f}) over the real-only control")
    return {"status": "concerns" if concerns else "no concerns",
            "headline": (f"{len(concerns)} finding(s) need a reviewer's attention" if concerns
                         else "No concern found under the audit's thresholds"),
            "concerns": concerns, "strengths": strengths,
            "thresholds": {"min_auroc_lower_bound": MIN_AUROC_LOWER_BOUND, "max_ece": MAX_ECE,
                           "min_probe_share": MIN_PROBE_SHARE, "max_subgroup_gap": MAX_SUBGROUP_GAP},
            "note": "Advisory. Deployment decisions in CI are made by `cxr-audit gate` with the team's policy."}
