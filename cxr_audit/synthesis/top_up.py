"""Equal budgets by construction: which edits an arm attempts next so that every cell ends with the plan's
count of edits accepted by QC, or says why it could not.

An arm first attempts the planned edits. Where QC rejected some, the next round attempts, per cell and in
order, the plan's reserve sources for that cell, then the rejected sources again under a new seed (try 2, 3,
... up to `tries_per_source`), never more than the cell's shortfall in one round (so no cell ends with more
than it planned) and never more than `attempts_per_edit` x the planned count in all. A cell stops early when,
at the acceptance rate it has shown (over at least MIN_ATTEMPTS_TO_JUDGE attempts), its remaining attempts
cannot be expected to make up the shortfall: a generator that cannot draw a finding should not spend the cap
on it (on the demo, the swap cell accepted 7 of its first 58 edits). Rounds are a function of
the plan and the QC results alone, so a resumed run attempts what an uninterrupted one would.

Arms compared on the same cells then train on the same number of synthetic images per cell, and a
difference between them is the method's, not QC's acceptance rate (docs/method_validation.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from cxr_audit.provenance import Document
from cxr_audit.synthesis.planner import PlanDocument, PlannedEdit

TRY_MARK = "-t"  # a retry's id: the source's first attempt's id, then -t2, -t3, ...
MIN_ATTEMPTS_TO_JUDGE = 4  # a cell's acceptance rate is judged from this many attempts on


@dataclass(frozen=True)
class TopUpPolicy:
    tries_per_source: int = 2
    attempts_per_edit: float = 4.0


class CellBudget(Document):
    """How one cell's budget was met in one arm."""

    target: int            # the plan's count of edits for the cell
    accepted: int
    attempts: int          # edits made, retries included
    sources: int           # distinct source images attempted
    retries: int           # attempts on a source already attempted (under a new seed)
    status: str            # "met", or "short: ..." with the reason


def retry_of(edit: PlannedEdit, attempt: int) -> PlannedEdit:
    """The `attempt`-th try (2, 3, ...) of a planned edit: the same source, operations and target; a new seed
    drawn from the first one, so the noise and a one-sided finding's side are drawn anew."""
    seed = int(np.random.default_rng([edit.seed, attempt]).integers(2**31))
    return edit.model_copy(update={"edit_id": f"{edit.edit_id}{TRY_MARK}{attempt}", "seed": seed})


def first_attempt_id(edit_id: str) -> str:
    return edit_id.split(TRY_MARK)[0]


def attempt_number(edit_id: str) -> int:
    return int(edit_id.split(TRY_MARK)[1]) if TRY_MARK in edit_id else 1


def next_round(plan: PlanDocument, attempted: list[str], passed: Mapping[str, bool],
               policy: TopUpPolicy) -> list[PlannedEdit]:
    """The edits of the next round, given the ids attempted so far (in order) and QC's verdict on each; the
    planned edits when nothing was attempted, empty when every cell is met or out of attempts."""
    if not attempted:
        return list(plan.edits)
    by_id = {e.edit_id: e for e in [*plan.edits, *plan.reserves]}
    done = set(attempted)
    round_edits: list[PlannedEdit] = []
    for cell_id, target in _targets(plan).items():
        mine = [a for a in attempted if by_id[first_attempt_id(a)].cell_id == cell_id]
        accepted = sum(passed[a] for a in mine)
        room = min(target - accepted, _cap(target, policy) - len(mine))
        if room > 0 and not _hopeless(target, accepted, len(mine), policy):
            round_edits += _candidates(plan, cell_id, mine, passed, done, policy)[:room]
    return round_edits


def _hopeless(target: int, accepted: int, attempts: int, policy: TopUpPolicy) -> bool:
    """Whether the cell's acceptance rate so far, kept up over its remaining attempts, falls short."""
    remaining = _cap(target, policy) - attempts
    return attempts >= MIN_ATTEMPTS_TO_JUDGE and accepted * remaining < (target - accepted) * attempts


def _targets(plan: PlanDocument) -> dict[str, int]:
    return {c.cell_id: c.planned for c in plan.cells if c.planned > 0}


def _cap(target: int, policy: TopUpPolicy) -> int:
    return int(np.ceil(policy.attempts_per_edit * target))


def _candidates(plan: PlanDocument, cell_id: str, mine: list[str], passed: Mapping[str, bool], done: set[str],
                policy: TopUpPolicy) -> list[PlannedEdit]:
    """A cell's next attempts in order: reserve sources not yet tried, then retries of rejected sources."""
    fresh = [e for e in plan.reserves if e.cell_id == cell_id and e.edit_id not in done]
    if fresh:
        return fresh
    by_id = {e.edit_id: e for e in [*plan.edits, *plan.reserves]}
    retries = []
    for attempt in range(2, policy.tries_per_source + 1):
        for edit_id in mine:
            if attempt_number(edit_id) == attempt - 1 and not passed[edit_id]:
                retry = retry_of(by_id[first_attempt_id(edit_id)], attempt)
                if retry.edit_id not in done:
                    retries.append(retry)
        if retries:
            return retries  # a later try only after every source has had this one
    return retries


def cell_budgets(plan: PlanDocument, attempted: list[str], passed: Mapping[str, bool],
                 policy: TopUpPolicy) -> dict[str, CellBudget]:
    """Per cell: the plan's count, what was accepted, the attempts it took and, when short, why."""
    by_id = {e.edit_id: e for e in [*plan.edits, *plan.reserves]}
    budgets = {}
    for cell_id, target in _targets(plan).items():
        mine = [a for a in attempted if by_id[first_attempt_id(a)].cell_id == cell_id]
        accepted = sum(passed[a] for a in mine)
        sources = len({first_attempt_id(a) for a in mine})
        if accepted >= target:
            status = "met"
        elif len(mine) >= _cap(target, policy):
            status = f"short: {len(mine)} attempts reached the cap ({policy.attempts_per_edit:g} per planned edit)"
        elif _hopeless(target, accepted, len(mine), policy):
            status = (f"short: at its acceptance so far ({accepted} of {len(mine)}) the remaining attempts could "
                      "not reach the plan")
        else:
            status = (f"short: every source tried {policy.tries_per_source} time(s) ({sources} sources, the plan's "
                      "reserves included)")
        budgets[cell_id] = CellBudget(target=target, accepted=accepted, attempts=len(mine), sources=sources,
                                      retries=len(mine) - sources, status=status)
    return budgets
