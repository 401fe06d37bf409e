"""The CI gate: judge a candidate audit (and, optionally, the previous model's audit) against a policy.

Every rule becomes one JUnit test case, so CI systems list them. Lower/upper CI bounds are used where the
policy says "at least"/"at most", so a small test set cannot pass a rule by luck. Comparisons with a baseline
use the paired bootstrap on the same test images (same test-set hash, same bootstrap seed and replicates);
runs on different test sets are refused, not compared.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from cxr_audit.audit.document import AuditDocument, load_audit
from cxr_audit.audit.policy import (
    CalibrationSlope,
    CellMetric,
    CoverageRule,
    GatePolicy,
    MaxEce,
    MaxRealismAuroc,
    MaxSmoothEce,
    MaxSubgroupGap,
    MaxUncertaintyRise,
    MinMetric,
    NonInferiority,
    QcRule,
)
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import MetricsDocument
from cxr_audit.metrics.bootstrap import paired_difference
from cxr_audit.provenance import sha256_file


@dataclass
class Outcome:
    rule_id: str
    rule_type: str
    status: Literal["passed", "failed", "skipped"]
    message: str
    details: list[str] = field(default_factory=list)


@dataclass
class AuditRun:
    """An audit.json and where its arms' bootstrap replicates lie (`replicates_file`: arm -> the file, which the
    run's layout knows)."""
    path: Path
    document: AuditDocument
    replicates_file: Callable[[str], Path]
    _replicates: dict = field(default_factory=dict, repr=False)  # read once per arm, however many rules use them

    @staticmethod
    def load(path: Path, arm: str, replicates_file: Callable[[str], Path]) -> "AuditRun":
        document = load_audit(path)
        if arm not in document.arms:
            raise UserInputError(f"{path} has no arm {arm!r} (it has {', '.join(document.arms)}); set 'arm' in "
                                 "the policy.")
        return AuditRun(path, document, replicates_file)

    def metrics(self, arm: str) -> MetricsDocument:
        return self.document.metrics(arm)

    def replicates(self, arm: str) -> dict:
        from cxr_audit.evaluation.scoring import load_replicates

        if arm in self._replicates:
            return self._replicates[arm]
        file = self.replicates_file(arm)
        if not file.exists():
            raise UserInputError(f"{file} is missing: the paired comparison needs the bootstrap replicates of "
                                 f"{self.path}. Keep the run directory together with its audit.json.")
        recorded = self.document.arms[arm].replicates_sha256 if arm in self.document.arms else None
        if arm == "baseline":
            recorded = self.document.test_set.replicates_sha256
        if recorded is None or sha256_file(file) != recorded:
            raise UserInputError(f"{file} does not match the SHA-256 recorded in {self.path} (or the audit records "
                                 "none): the gate reads only the files its audit made. Audit again to remake them.")
        self._replicates[arm] = load_replicates(file)
        return self._replicates[arm]


def _select(selection, available: list[str], what: str, rule_id: str) -> list[str]:
    if selection == "all":
        return list(available)
    missing = [c for c in selection if c not in available]
    if missing:
        raise UserInputError(f"gate rule {rule_id}: {what} {', '.join(missing)} not in the audit "
                             f"(it has {', '.join(available)}).")
    return list(selection)


def _rule_id(rule, index: int) -> str:
    if rule.id:
        return rule.id
    bits = [rule.type] + [f"{k}={getattr(rule, k)}" for k in ("metric", "min", "max", "margin", "max_rise",
                                                             "max_rejected_share", "min_images") if getattr(rule, k, None) is not None]
    return f"{index + 1:02d}-" + "-".join(str(b) for b in bits)


def check_same_test_set(candidate: AuditRun, baseline: AuditRun) -> None:
    a, b = candidate.document.test_set, baseline.document.test_set
    if a.sha256 != b.sha256:
        raise UserInputError(f"{candidate.path} and {baseline.path} were evaluated on different test sets (test-set "
                             "SHA-256 differs): a paired comparison would be meaningless. Audit both models on the "
                             "same data and split.")
    if a.bootstrap.seed != b.bootstrap.seed or a.bootstrap.replicates != b.bootstrap.replicates:
        raise UserInputError(f"{candidate.path} and {baseline.path} used different bootstrap settings (seed or "
                             "replicates); re-run one with the other's --seed and --bootstrap.")


@dataclass
class _Context:
    """What every rule is judged against: the candidate's gated arm, and the baseline run if any."""
    candidate: AuditRun
    baseline: AuditRun | None
    arm: str
    metrics: MetricsDocument
    concepts: list[str]
    cells: list[str]
    not_estimable: str = "fail"

    def judged(self, line: str, bound: float | None, passed: bool, interval=None) -> Check:
        """A check on a CI bound; a bound that is not estimable fails (or is skipped, per the policy)."""
        if bound is None:
            usable = f"; {interval.usable} bootstrap replicates usable" if getattr(interval, "usable", None) is not None \
                else ""
            return f"{line}: not estimable (no interval{usable})", None if self.not_estimable == "skip" else False
        return line, passed


Check = tuple[str, bool | None]  # (what was checked, with the numbers; passed, failed, or None: not judged)
BASELINE_RULES = ("non_inferiority", "max_uncertainty_rise")


def evaluate_policy(policy: GatePolicy, candidate: AuditRun, baseline: AuditRun | None,
                    allow_missing_baseline: bool = False) -> list[Outcome]:
    """Judge every rule. A rule that compares with the model in production needs its audit (--baseline): a
    missing one is refused, because a gate that skipped its comparisons would pass a regression. For a first
    release `allow_missing_baseline` skips them instead, and a policy left with nothing to judge is refused."""
    needs_baseline = [_rule_id(rule, k) for k, rule in enumerate(policy.rules) if rule.type in BASELINE_RULES]
    if baseline is None and needs_baseline and not allow_missing_baseline:
        raise UserInputError(f"gate rules {', '.join(needs_baseline)} compare with the model in production, and no "
                             "--baseline was given. Pass --baseline with its audit.json, or --allow-missing-baseline "
                             "for a first release (those rules are then skipped).")
    if baseline is None and len(needs_baseline) == len(policy.rules):
        raise UserInputError("every gate rule compares with a baseline and none was given: the gate would judge "
                             "nothing. Pass --baseline, or add rules that judge the candidate alone.")
    metrics = candidate.metrics(policy.arm)
    context = _Context(candidate, baseline, policy.arm, metrics, list(metrics.concepts), metrics.evaluated_cells(),
                       policy.not_estimable)
    if baseline is not None:
        check_same_test_set(candidate, baseline)
    outcomes = []
    for index, rule in enumerate(policy.rules):
        rule_id = _rule_id(rule, index)
        if rule.type in BASELINE_RULES and baseline is None:
            outcomes.append(Outcome(rule_id, rule.type, "skipped", "no --baseline given: nothing to compare with"))
            continue
        checks = list(_RULE_CHECKS[rule.type](rule, context, rule_id))
        details = [line for line, _ in checks]
        failures = [line for line, passed in checks if passed is False]
        judged = [line for line, passed in checks if passed is not None]
        if failures:
            status, message = "failed", (f"{len(failures)} of {len(checks)} checks failed: " + "; ".join(failures[:5])
                                         + ("; ..." if len(failures) > 5 else ""))
        elif judged:
            skipped = len(checks) - len(judged)
            status, message = "passed", f"all {len(judged)} checks passed" + (
                f" ({skipped} not estimable, skipped)" if skipped else "")
        else:
            status, message = "skipped", f"no check could be estimated: {'; '.join(details[:3])}"
        outcomes.append(Outcome(rule_id, rule.type, status, message, details))
    if all(outcome.status == "skipped" for outcome in outcomes) and not policy.allow_empty:
        outcomes.append(Outcome("gate", "judged nothing", "failed", "every rule was skipped, so the gate judged "
                                "nothing; a model is never passed that way. Add rules that can be estimated on this "
                                "audit, or set 'allow_empty: true' in the policy to accept it knowingly."))
    return outcomes


def _lower_bound_checks(c: _Context, entries: dict, names: list[str], metric: str, minimum: float) -> Iterator[Check]:
    """'At least `minimum`', judged on the lower 95% CI bound (the point estimate when there is no CI)."""
    for name in names:
        entry = entries[name].metric(metric)
        lower = entry.ci[0] if entry.estimable else None
        yield c.judged(f"{name}: {metric} {_num(entry.value)}, lower bound {_num(lower)} (min {minimum})", lower,
                       lower is not None and lower >= minimum, entry)


def _min_metric(rule: MinMetric, c: _Context, rule_id: str) -> Iterator[Check]:
    yield from _lower_bound_checks(c, c.metrics.concepts, _select(rule.concepts, c.concepts, "concepts", rule_id),
                                   rule.metric, rule.min)


def _cell_metric(rule: CellMetric, c: _Context, rule_id: str) -> Iterator[Check]:
    yield from _lower_bound_checks(c, c.metrics.cells, _select(rule.cells, c.cells, "cells", rule_id),
                                   rule.metric, rule.min)


def _max_ece(rule: MaxEce | MaxSmoothEce, c: _Context, rule_id: str) -> Iterator[Check]:
    metric, label = ("ece", "ECE") if rule.type == "max_ece" else ("smece", "smooth ECE")
    for concept in _select(rule.concepts, c.concepts, "concepts", rule_id):
        entry = c.metrics.concepts[concept].metric(metric)
        value = (entry.ci[1] if entry.estimable else None) if rule.use_upper_bound else entry.value
        bound = f" (upper bound {_num(value)})" if rule.use_upper_bound else ""
        yield c.judged(f"{concept}: {label} {_num(entry.value)}{bound} (max {rule.max})", value,
                       value is not None and value <= rule.max, entry)


def _calibration_slope(rule: CalibrationSlope, c: _Context, rule_id: str) -> Iterator[Check]:
    low, high = (1.0, 1.0) if rule.min is None and rule.max is None else (rule.min, rule.max)
    for concept in _select(rule.concepts, c.concepts, "concepts", rule_id):
        entry = c.metrics.concepts[concept].metric("calibration_slope")
        interval = entry.ci if entry.estimable else None
        if rule.min is None and rule.max is None:
            wanted, passed = "interval contains 1", interval is not None and interval[0] <= 1.0 <= interval[1]
        else:
            wanted = f"interval within [{_num(low)}, {_num(high)}]"
            passed = interval is not None and (low is None or interval[0] >= low) and (high is None or interval[1] <= high)
        shown = f"[{_num(interval[0])}, {_num(interval[1])}]" if interval else "not estimable"
        yield c.judged(f"{concept}: calibration slope {_num(entry.value)} {shown} ({wanted})",
                       interval[0] if interval else None, passed, entry)


def _non_inferiority(rule: NonInferiority, c: _Context, rule_id: str) -> Iterator[Check]:
    new, old = c.candidate.replicates(c.arm), c.baseline.replicates("baseline")
    targets = _select(rule.concepts, c.concepts, "concepts", rule_id)
    if rule.cells is not None:
        targets += [f"cell:{cell}" for cell in _select(rule.cells, c.cells, "cells", rule_id)]
    for target in targets:
        if target not in new or target not in old:
            yield f"{target}: not evaluated in both runs", False
            continue
        point_new, reps_new = new[target][rule.metric]
        point_old, reps_old = old[target][rule.metric]
        difference = paired_difference(point_old, point_new, reps_old, reps_new)
        lower = difference.ci[0] if difference.ci else None
        yield c.judged(f"{target}: {rule.metric} {_num(point_old)} -> {_num(point_new)}, difference "
                       f"{_num(difference.difference, signed=True)} (95% CI lower bound {_num(lower, signed=True)}; "
                       f"margin -{rule.margin})", lower, lower is not None and lower >= -rule.margin)


def _max_uncertainty_rise(rule: MaxUncertaintyRise, c: _Context, rule_id: str) -> Iterator[Check]:
    old_metrics = c.baseline.metrics("baseline")
    for concept in _select(rule.concepts, c.concepts, "concepts", rule_id):
        new_value = c.metrics.concepts[concept].metric("entropy").value
        old_entry = old_metrics.concepts.get(concept)
        old_value = old_entry.metric("entropy").value if old_entry else None
        if new_value is None or old_value is None:
            yield f"{concept}: entropy not available in both runs", False
            continue
        rise = new_value - old_value
        yield (f"{concept}: mean predictive entropy {old_value:.4f} -> {new_value:.4f} bits (rise {rise:+.4f}, "
               f"max {rule.max_rise})", rise <= rule.max_rise)


def _coverage(rule: CoverageRule, c: _Context, rule_id: str) -> Iterator[Check]:
    by_id = {cell.id: cell for cell in c.candidate.document.coverage.cells}
    cars = c.candidate.document.synthesis.get("cars")
    synthetic = cars.accepted_by_cell if cars else {}
    for cell_id in _select(rule.cells, list(by_id), "cells", rule_id):
        cell = by_id[cell_id]
        needed = rule.min_images if rule.min_images is not None else cell.min_count
        added = synthetic.get(cell_id, 0) if rule.count_synthetic else 0
        counted = f"{cell.count} real" + (f" + {added} synthetic" if rule.count_synthetic else "")
        yield f"{cell_id}: {counted} images (need {needed})", cell.count + added >= needed


def _qc(rule: QcRule, c: _Context, rule_id: str) -> Iterator[Check]:
    for summary in c.candidate.document.synthesis.values():
        share = summary.rejected / summary.planned if summary.planned else 0.0
        yield (f"{summary.mode}: {summary.rejected} of {summary.planned} edits rejected "
               f"({share:.0%}, max {rule.max_rejected_share:.0%})", share <= rule.max_rejected_share)


def _max_subgroup_gap(rule: MaxSubgroupGap, c: _Context, rule_id: str) -> Iterator[Check]:
    if rule.variables != "all":
        absent = [v for v in rule.variables if v not in c.metrics.subgroups]
        if absent:
            raise UserInputError(f"gate rule {rule_id}: the audit has no subgroup variable {', '.join(absent)} (it has "
                                 f"{', '.join(c.metrics.subgroups) or 'none'}; manufacturer and model come from DICOM "
                                 "headers, the others from the labels file). Remove it from 'variables'.")
    for concept in _select(rule.concepts, c.concepts, "concepts", rule_id):
        gaps = {variable: by_metric[rule.metric] for variable, by_metric in c.metrics.subgroup_gaps.get(concept, {}).items()
                if (rule.variables == "all" or variable in rule.variables) and rule.metric in by_metric}
        if not gaps:
            yield c.judged(f"{concept}: no two subgroups large enough to compare", None, False)
        for variable, gap in gaps.items():
            upper = gap.ci[1] if gap.estimable else None
            yield c.judged(f"{concept}, {variable}: {rule.metric} {gap.highest} - {gap.lowest} = {_num(gap.value)} "
                           f"(upper bound {_num(upper)}; max {rule.max})", upper, upper is not None and upper <= rule.max,
                           gap)


def _max_realism_auroc(rule: MaxRealismAuroc, c: _Context, rule_id: str) -> Iterator[Check]:
    realism = c.candidate.document.realism
    for mode in rule.modes:
        measured = realism.modes.get(mode) if realism else None
        if measured is None:
            yield (f"{mode}: the audit has no realism measurement of this synthesis mode (it synthesized "
                   f"{', '.join(c.candidate.document.synthesis) or 'nothing'})", False)
        elif measured.discriminator is None:
            yield f"{mode}: realism not measured ({measured.skipped})", False
        else:
            auroc = measured.discriminator.auroc
            upper = auroc.ci[1] if auroc.ci else None
            yield c.judged(f"{mode}: discriminator AUROC {_num(auroc.value)}, upper bound {_num(upper)} (max {rule.max})",
                           upper, upper is not None and upper <= rule.max, auroc)


_RULE_CHECKS = {"min_metric": _min_metric, "max_ece": _max_ece, "max_smece": _max_ece,
                "calibration_slope": _calibration_slope, "cell_metric": _cell_metric,
                "non_inferiority": _non_inferiority, "max_uncertainty_rise": _max_uncertainty_rise,
                "coverage": _coverage, "qc": _qc, "max_subgroup_gap": _max_subgroup_gap,
                "max_realism_auroc": _max_realism_auroc}


def _num(value, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def junit_xml(outcomes: list[Outcome], suite: str = "cxr-audit gate") -> bytes:
    """One <testsuite> with one <testcase> per rule; failed rules carry a <failure message=... type=...>."""
    failures = sum(o.status == "failed" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    root = ET.Element("testsuites", name=suite, tests=str(len(outcomes)), failures=str(failures), errors="0",
                      skipped=str(skipped))
    testsuite = ET.SubElement(root, "testsuite", name=suite, tests=str(len(outcomes)), failures=str(failures),
                              errors="0", skipped=str(skipped), time="0")
    for outcome in outcomes:
        case = ET.SubElement(testsuite, "testcase", classname=f"cxr_audit.gate.{outcome.rule_type}",
                             name=outcome.rule_id, time="0")
        if outcome.status == "failed":
            failure = ET.SubElement(case, "failure", message=outcome.message, type=outcome.rule_type)
            failure.text = "\n".join(outcome.details)
        elif outcome.status == "skipped":
            ET.SubElement(case, "skipped", message=outcome.message)
        else:
            ET.SubElement(case, "system-out").text = "\n".join(outcome.details)
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def markdown_summary(outcomes: list[Outcome], candidate: AuditRun, baseline: AuditRun | None) -> str:
    failed = [o for o in outcomes if o.status == "failed"]
    model = candidate.document.inputs["model"]
    lines = [f"## cxr-audit gate: {'FAILED' if failed else 'PASSED'}", "",
             f"Candidate: `{model.path}` (sha256 `{(model.sha256 or '')[:12]}`)"]
    if baseline is not None:
        old = baseline.document.inputs["model"]
        lines.append(f"Baseline: `{old.path}` (sha256 `{(old.sha256 or '')[:12]}`), same test set "
                     f"`{candidate.document.test_set.sha256[:12]}`")
    lines += ["", "| rule | result | detail |", "| --- | --- | --- |"]
    for outcome in outcomes:
        mark = {"passed": "pass", "failed": "**FAIL**", "skipped": "skipped"}[outcome.status]
        lines.append(f"| `{outcome.rule_id}` | {mark} | {outcome.message.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
