"""The edit planner: from coverage deficits to targeted perturbations of real training images.

For each under-covered, clinically plausible cell, take training images whose concept vector is one edit
away from the cell (insert a missing `all_of` finding, or delete a present `none_of` finding; or, where the
cell allows the swap, replace a present `none_of` finding by a missing `all_of` one of the same group in one
edit; two edits when no image is one away), and plan the edit that moves them into the cell. A target vector is kept only
when it passes the clinical rules and, unless the spec allows it, when its set of findings occurs in at
least one real image. Rejections are recorded with the rule that rejected them.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from cxr_audit import concepts
from cxr_audit.coverage import CoverageReport
from cxr_audit.data.manifest import Manifest
from cxr_audit.provenance import Document
from cxr_audit.spec import Cell, CoverageSpec
from cxr_audit.synthesis.documents import Operation

PLAN_SCHEMA_VERSION = "2.2"  # 2.1: swap operations; 2.2: reserve sources


class PlannedEdit(Document):
    edit_id: str
    cell_id: str
    source_image_id: str
    source_path: str
    patient_id: str
    operations: list[Operation]
    source_vector: dict[str, float | None]
    target_vector: dict[str, float | None]
    regions: list[str] = Field(description="anatomical regions the edit may touch (concepts.py)")
    seed: int


class CellPlan(Document):
    cell_id: str
    deficit: int
    budget: int
    candidates_one_edit: int
    candidates_two_edits: int
    planned: int
    status: str = Field(description="planned, partly planned, rejected, no source")
    reason: str = ""


class Rejection(Document):
    cell_id: str
    reason: str
    sources_rejected: int


class PlanDocument(Document):
    """plan.json: the edits planned for each under-covered cell, and the targets rejected (with the rule)."""

    schema_version: str = PLAN_SCHEMA_VERSION
    seed: int = 0
    data: dict[str, str] = Field(default_factory=dict, description="path, sha256, format of the labels")
    spec: dict[str, str] = Field(default_factory=dict, description="path and sha256 of the coverage spec")
    label_policy: dict[str, Any] = Field(default_factory=dict)
    cells: list[CellPlan] = Field(default_factory=list)
    rejections: list[Rejection] = Field(default_factory=list)
    edits: list[PlannedEdit] = Field(default_factory=list)
    reserves: list[PlannedEdit] = Field(default_factory=list, description="further sources per cell, in the order "
                                        "synthesis draws them when QC rejects planned edits (synthesis/top_up.py)")


def derive_target(source: dict[str, float | None], operations: list[Operation],
                  rules: concepts.RuleSet) -> dict[str, float | None]:
    """Apply the operations and keep the vector consistent: inserted findings set their parents (CheXpert
    hierarchy, fine concepts), and No Finding is positive exactly when no pathology is (devices aside)."""
    target = dict(source)
    for operation in operations:
        for effect in operation.effects:
            target[effect.concept] = effect.target_value
    positives = {c for c, v in target.items() if v == 1.0}
    for parent in rules.implied_positives(positives) - positives:
        if parent in target:
            target[parent] = 1.0
    if concepts.NO_FINDING in target:
        pathology = {c for c, v in target.items() if v == 1.0 and concepts.is_pathology(c)}
        target[concepts.NO_FINDING] = 0.0 if pathology else 1.0
    return target


def finding_count(vector: dict[str, float | None], rules: concepts.RuleSet) -> int:
    """Positive findings, not counting No Finding or parents implied by a positive child."""
    positives = {c for c, v in vector.items() if v == 1.0} - {concepts.NO_FINDING}
    implied = set()
    for c in positives:
        implied |= rules.implied_positives({c}) - {c}
    return len(positives - implied)


def _operations_for(cell: Cell, row: np.ndarray, index: dict[str, int]) -> list[Operation] | None:
    """The edits that move an image into the cell, or None if impossible (an unknown label in the way)."""
    operations = []
    for c in cell.all_of:
        value = row[index[c]]
        if c == concepts.NO_FINDING:
            # No Finding is derived, never drawn: reaching it means deleting every pathology present.
            if value != 1:
                pathology = [p for p in index if concepts.is_pathology(p)]
                if any(np.isnan(row[index[p]]) for p in pathology):
                    return None  # an unknown finding could remain: the target cannot be certified normal
                operations += [Operation(op="delete", concept=p) for p in pathology if row[index[p]] == 1]
            continue
        if np.isnan(value):
            return None
        if value == 0:
            operations.append(Operation(op="insert", concept=c))
    for c in cell.none_of:
        value = row[index[c]]
        if np.isnan(value):
            return None
        if value == 1:
            if c == concepts.NO_FINDING:
                return None  # leaving "normal" needs some finding inserted: the cell does not say which
            operations.append(Operation(op="delete", concept=c))
    return _with_swaps(operations, cell)


def _with_swaps(operations: list[Operation], cell: Cell) -> list[Operation]:
    """A deletion and an insertion that the cell allows as one swap (its `swaps`) become that swap."""
    for old, new in cell.swaps:
        deleted = next((o for o in operations if o.concept == old and o.effects[0].target_value == 0.0), None)
        inserted = next((o for o in operations if o.concept == new and o.effects[0].target_value == 1.0), None)
        if deleted is not None and inserted is not None:
            operations = [o for o in operations if o is not deleted and o is not inserted]
            operations.append(Operation(op="swap", concept=old, to=new))
    return operations


def _diverse_order(patient_ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices ordered so that consecutive picks come from different patients (round-robin, shuffled)."""
    frame = pd.DataFrame({"patient": patient_ids, "i": np.arange(len(patient_ids))})
    frame["shuffle"] = rng.random(len(frame))
    frame = frame.sort_values(["patient", "shuffle"])
    frame["round"] = frame.groupby("patient").cumcount()
    patient_rank = {p: r for r, p in enumerate(rng.permutation(frame["patient"].unique()))}
    frame["patient_rank"] = frame["patient"].map(patient_rank)
    return frame.sort_values(["round", "patient_rank"])["i"].to_numpy()


def plan_edits(train: Manifest, spec: CoverageSpec, coverage: CoverageReport, seed: int = 0) -> PlanDocument:
    """Plan edits on the training split `train` (never the test split) for every deficit in `coverage`."""
    if "split" in train.frame and train.frame["split"].isin(["test"]).any():
        raise ValueError("the planner must only see training images; pass the training split")
    rules = spec.rule_set()
    names = spec.concepts
    labels = train.labels(names, spec.label_policy)
    index = {c: j for j, c in enumerate(names)}
    patterns = np.unique(labels == 1, axis=0)  # finding sets of real images (each distinct set once)
    seen = {frozenset(np.array(names)[row]) for row in patterns}
    plan = PlanDocument(seed=seed, label_policy=spec.label_policy.model_dump(mode="json"))
    rng = np.random.default_rng(seed)
    reserve_rng = np.random.default_rng([seed, 1])  # reserves draw apart: the planned edits are as without them
    reserves: list[tuple[str, int, list[Operation], dict, dict]] = []
    cells_by_id = {c.id: c for c in spec.all_cells()}
    edit_number = itertools.count(1)

    for cell_report in coverage.cells:
        cell = cells_by_id[cell_report.id]
        budget = min(cell_report.deficit, spec.synthesis.budget_per_cell)
        if cell_report.deficit == 0:
            continue
        if not cell_report.plausible:
            plan.cells.append(CellPlan(cell_id=cell.id, deficit=cell_report.deficit, budget=0, candidates_one_edit=0,
                                       candidates_two_edits=0, planned=0, status="rejected",
                                       reason="; ".join(cell_report.violations)))
            continue
        by_distance = _sources_by_distance(cell, train.frame, labels, index)
        chosen = by_distance[1] if len(by_distance[1]) else by_distance[2]
        accepted = 0
        reserve_count = int(np.ceil((spec.synthesis.attempts_per_edit - 1) * budget))
        reasons: dict[str, int] = {}
        if len(chosen):
            order = _diverse_order(train.frame["patient_id"].to_numpy()[chosen], rng)
            kept_reserves = 0
            for k in order:
                if accepted >= budget and kept_reserves >= reserve_count:
                    break
                i = int(chosen[k])
                operations = _operations_for(cell, labels[i], index)
                source = {c: (None if np.isnan(labels[i, j]) else float(labels[i, j])) for c, j in index.items()}
                target = derive_target(source, operations, rules)
                reason = _rejection(target, rules, seen, spec) or _outside_cell(target, cell)
                if reason:
                    if accepted < budget:  # the reasons describe the planning, not the reserve search
                        reasons[reason] = reasons.get(reason, 0) + 1
                    continue
                if accepted >= budget:
                    reserves.append((cell.id, i, operations, source, target))
                    kept_reserves += 1
                    continue
                plan.edits.append(_planned_edit(f"E{next(edit_number):06d}", cell.id, train.frame.iloc[i],
                                                operations, source, target, int(rng.integers(2**31))))
                accepted += 1
        for reason, count in sorted(reasons.items()):
            plan.rejections.append(Rejection(cell_id=cell.id, reason=reason, sources_rejected=count))
        status, why = _cell_status(by_distance, accepted, budget, reasons)
        plan.cells.append(CellPlan(cell_id=cell.id, deficit=cell_report.deficit, budget=budget,
                                   candidates_one_edit=len(by_distance[1]), candidates_two_edits=len(by_distance[2]),
                                   planned=accepted, status=status, reason=why))
    for cell_id, i, operations, source, target in reserves:  # numbered after every planned edit
        plan.reserves.append(_planned_edit(f"E{next(edit_number):06d}", cell_id, train.frame.iloc[i], operations,
                                           source, target, int(reserve_rng.integers(2**31))))
    return plan


def _planned_edit(edit_id: str, cell_id: str, row: pd.Series, operations: list[Operation], source: dict,
                  target: dict, seed: int) -> PlannedEdit:
    regions = sorted({r for op in operations for c in op.concepts for r in concepts.get(c).regions})
    return PlannedEdit(edit_id=edit_id, cell_id=cell_id, source_image_id=str(row["image_id"]),
                       source_path=str(row["path"]), patient_id=str(row["patient_id"]), operations=operations,
                       source_vector=source, target_vector=target, regions=regions, seed=seed)


def _sources_by_distance(cell: Cell, frame: pd.DataFrame, labels: np.ndarray,
                         index: dict[str, int]) -> dict[int, np.ndarray]:
    """The training images (row numbers, in order) of the cell's subgroup one and two edits away from it.

    The count of edits is computed on the whole label matrix at once (`edit_counts`); the edits themselves
    (`_operations_for`, the definition) are made only for the sources the planner visits, so the planner stays
    linear in the rows with a small constant on a million-row archive."""
    counts = edit_counts(cell, labels, index)
    counts[~cell.subgroup_mask(frame)] = -1
    return {1: np.flatnonzero(counts == 1), 2: np.flatnonzero(counts == 2)}


def edit_counts(cell: Cell, labels: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """Per image, len(_operations_for(cell, row)), or -1 where it is None: the same rules on whole columns."""
    n = len(labels)
    impossible = np.zeros(n, dtype=bool)
    inserted: dict[str, np.ndarray] = {}
    deleted: dict[str, np.ndarray] = {}  # how many delete operations of each concept (No Finding may add one)
    column = lambda c: labels[:, index[c]]
    for c in cell.all_of:
        if c == concepts.NO_FINDING:
            not_normal = column(c) != 1
            pathology = [p for p in index if concepts.is_pathology(p)]
            unknown = np.zeros(n, dtype=bool)
            for p in pathology:
                unknown |= np.isnan(column(p))
            impossible |= not_normal & unknown
            for p in pathology:
                deleted[p] = deleted.get(p, 0) + (not_normal & (column(p) == 1)).astype(int)
            continue
        impossible |= np.isnan(column(c))
        inserted[c] = inserted.get(c, 0) + (column(c) == 0).astype(int)
    for c in cell.none_of:
        impossible |= np.isnan(column(c))
        present = column(c) == 1
        if c == concepts.NO_FINDING:
            impossible |= present
        else:
            deleted[c] = deleted.get(c, 0) + present.astype(int)
    total = sum(inserted.values(), np.zeros(n, dtype=int)) + sum(deleted.values(), np.zeros(n, dtype=int))
    for old, new in cell.swaps:  # a deletion and an insertion the cell allows as one swap: one operation
        merge = (deleted.get(old, 0) > 0) & (inserted.get(new, 0) > 0)
        total = total - merge
        if old in deleted:
            deleted[old] = deleted[old] - merge
        if new in inserted:
            inserted[new] = inserted[new] - merge
    return np.where(impossible, -1, total)


def _cell_status(by_distance: dict[int, list], accepted: int, budget: int, reasons: dict[str, int]) -> tuple[str, str]:
    """How a cell's planning ended, and why."""
    if not (len(by_distance[1]) or len(by_distance[2])):
        return "no source", "no training image within two edits of this cell (in its subgroup)"
    if accepted == 0:
        return "rejected", "; ".join(sorted(reasons)) or "no usable source"
    return ("planned" if accepted >= budget else "partly planned"), f"{len(by_distance[1]) and 'one' or 'two'}-edit sources"


def _outside_cell(target: dict[str, float | None], cell: Cell) -> str:
    """A safety net: the derived target must really lie in the cell it is meant to fill."""
    if all(target.get(c) == 1.0 for c in cell.all_of) and all(target.get(c) == 0.0 for c in cell.none_of):
        return ""
    return "the consistent target vector does not reach the cell"


def _rejection(target: dict[str, float | None], rules: concepts.RuleSet, seen: set[frozenset],
               spec: CoverageSpec) -> str:
    """Why a target vector may not be synthesized, or '' when it may."""
    positives = {c for c, v in target.items() if v == 1.0}
    negatives = {c for c, v in target.items() if v == 0.0}
    violations = rules.violations(positives, negatives)
    if violations:
        return f"implausible: {violations[0]}"
    if finding_count(target, rules) > spec.synthesis.max_positive_findings:
        return f"more than {spec.synthesis.max_positive_findings} positive findings"
    if frozenset(positives) not in seen and not spec.synthesis.allow_unseen_combinations:
        return ("never seen: no real image has exactly these findings "
                f"({', '.join(sorted(positives)) or 'none'}); needs clinical sign-off (synthesis.allow_unseen_combinations)")
    return ""
