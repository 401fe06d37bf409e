"""Equal budgets by construction: the planner keeps reserve sources, and synthesis draws them (then retries
under new seeds) until each cell has the plan's count accepted, never more, within the attempt caps."""

import numpy as np

from cxr_audit.synthesis.planner import PlanDocument
from cxr_audit.synthesis.top_up import (
    TopUpPolicy,
    attempt_number,
    cell_budgets,
    first_attempt_id,
    next_round,
    retry_of,
)
from test_planner import ROWS, SPEC, plan_for


def _simulate(plan: PlanDocument, policy: TopUpPolicy, verdict) -> tuple[list[str], dict[str, bool]]:
    """Every round until none is left, QC's verdict given by `verdict(edit)`."""
    attempted, passed = [], {}
    edits = next_round(plan, attempted, passed, policy)
    rounds = 0
    while edits:
        rounds += 1
        assert rounds < 50
        assert not set(e.edit_id for e in edits) & set(attempted)  # nothing attempted twice
        attempted += [e.edit_id for e in edits]
        passed.update({e.edit_id: verdict(e) for e in edits})
        edits = next_round(plan, attempted, passed, policy)
    return attempted, passed


def test_the_planner_keeps_reserves_apart_from_the_planned_edits(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    without = plan_for(tmp_path, ROWS, SPEC.replace("cells:", "synthesis: {attempts_per_edit: 1}\n    cells:"))
    assert [e.model_dump() for e in plan.edits] == [e.model_dump() for e in without.edits]  # same planned edits
    assert not without.reserves
    assert len(plan.reserves) == 2  # five one-edit sources, three planned: the other two are reserves
    assert {e.source_image_id for e in plan.reserves}.isdisjoint({e.source_image_id for e in plan.edits})
    assert all(e.cell_id == "HF" for e in plan.reserves)


def test_rounds_fill_each_cell_to_the_plan_and_never_beyond(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    rng = np.random.default_rng(0)
    verdicts = {}
    verdict = lambda e: verdicts.setdefault(e.edit_id, bool(rng.random() < 0.5))
    attempted, passed = _simulate(plan, TopUpPolicy(tries_per_source=3, attempts_per_edit=4), verdict)
    budget = cell_budgets(plan, attempted, passed, TopUpPolicy(3, 4))["HF"]
    assert budget.accepted == min(3, sum(passed.values())) and sum(passed.values()) <= 3
    assert budget.attempts == len(attempted) <= 12 and budget.sources <= 5
    assert budget.status == "met" or budget.status.startswith("short")


def test_a_cell_qc_always_rejects_stops_when_hopeless_or_at_the_caps_and_says_why(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    # 3 planned, rejected; 2 reserves, rejected: after 5 attempts with none accepted the cell is hopeless
    attempted, passed = _simulate(plan, TopUpPolicy(tries_per_source=2, attempts_per_edit=4), lambda e: False)
    assert len(attempted) == 5 and max(attempt_number(a) for a in attempted) == 1
    budget = cell_budgets(plan, attempted, passed, TopUpPolicy(2, 4))["HF"]
    assert (budget.accepted, budget.sources, budget.retries) == (0, 5, 0)
    assert budget.status.startswith("short: at its acceptance so far (0 of 5)")
    # one accepted in every three: the cap allows 12 attempts, 3 x 1/3 = 1 is expected from the next 3
    verdicts = {}
    third = lambda e: verdicts.setdefault(e.edit_id, len(verdicts) % 3 == 0)
    attempted, passed = _simulate(plan, TopUpPolicy(tries_per_source=3, attempts_per_edit=4), third)
    budget = cell_budgets(plan, attempted, passed, TopUpPolicy(3, 4))["HF"]
    assert budget.accepted == 3 and budget.status == "met" and budget.retries > 0
    # sources run out before the cap: every source tried twice
    verdicts.clear()
    half = lambda e: verdicts.setdefault(e.edit_id, e.edit_id == plan.edits[0].edit_id)
    attempted, passed = _simulate(plan, TopUpPolicy(tries_per_source=2, attempts_per_edit=4), half)
    assert cell_budgets(plan, attempted, passed, TopUpPolicy(2, 4))["HF"].status.startswith(
        ("short: every source tried 2 time(s)", "short: at its acceptance so far"))
    capped, passed = _simulate(plan, TopUpPolicy(tries_per_source=5, attempts_per_edit=1), lambda e: False)
    assert len(capped) == 3
    assert cell_budgets(plan, capped, passed, TopUpPolicy(5, 1))["HF"].status.startswith("short: 3 attempts reached")


def test_retries_are_new_seeds_on_the_same_source(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    edit = plan.edits[0]
    retry = retry_of(edit, 2)
    assert retry.edit_id == f"{edit.edit_id}-t2" and first_attempt_id(retry.edit_id) == edit.edit_id
    assert retry.seed != edit.seed and retry.seed == retry_of(edit, 2).seed
    assert (retry.source_image_id, retry.operations, retry.target_vector) == \
        (edit.source_image_id, edit.operations, edit.target_vector)


def test_no_top_up_when_qc_accepts_everything(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    attempted, _ = _simulate(plan, TopUpPolicy(), lambda e: True)
    assert attempted == [e.edit_id for e in plan.edits]
