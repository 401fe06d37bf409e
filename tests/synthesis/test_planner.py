"""The CARS edit planner: targeted, plausible, diverse, from training images only."""

import textwrap

import pytest

from cxr_audit.concepts import RuleSet
from cxr_audit.coverage import analyse_coverage
from cxr_audit.data.readers import read_manifest
from cxr_audit.spec import load_spec
from cxr_audit.synthesis.documents import Operation
from cxr_audit.synthesis.planner import derive_target, plan_edits


def dataset(tmp_path, rows):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,patient_id,split,No Finding,Cardiomegaly,Pleural Effusion,Pneumothorax,Edema\n"
                   + "".join(f"{r}\n" for r in rows))
    return read_manifest(csv, "csv")


def spec_file(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(text))
    return load_spec(path), path


def plan_for(tmp_path, rows, spec_text, seed=0):
    manifest = dataset(tmp_path, rows)
    spec, path = spec_file(tmp_path, spec_text)
    train = manifest.split("train")
    return plan_edits(train, spec, analyse_coverage(train, spec, path, {}), seed=seed)


ROWS = [  # image, patient, split, NF, Cardio, Effusion, PTX, Edema
    "a1.png,p1,train,0,1,0,0,0", "a2.png,p1,train,0,1,0,0,0", "b1.png,p2,train,0,1,0,0,0",
    "c1.png,p3,train,0,1,0,0,0", "d1.png,p4,train,0,0,1,0,0", "e1.png,p5,train,1,0,0,0,0",
    "f1.png,p6,train,0,1,1,0,0", "g1.png,p7,test,0,1,0,0,0", "h1.png,p8,train,0,0,0,1,0",
]
SPEC = """\
    version: 1
    concepts: [No Finding, Cardiomegaly, Effusion, Pneumothorax, Edema]
    cells:
      - {id: HF, all_of: [Cardiomegaly, Effusion], min_count: 4}
"""


def test_one_edit_sources_from_distinct_patients_within_budget(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC)
    cell = plan.cells[0]
    assert (cell.deficit, cell.budget, cell.planned, cell.status) == (3, 3, 3, "planned")
    assert cell.candidates_one_edit == 5  # four cardiomegaly-only images + one effusion-only image
    sources = [e.source_image_id for e in plan.edits]
    assert "g1.png" not in sources  # never from the test split
    assert len({e.patient_id for e in plan.edits}) == 3  # diverse: three different patients
    for edit in plan.edits:
        assert len(edit.operations) == 1
        assert edit.target_vector["Cardiomegaly"] == 1 and edit.target_vector["Pleural Effusion"] == 1
        op = edit.operations[0]
        assert set(edit.regions) == set({"Pleural Effusion": ["costophrenic_angles"],
                                         "Cardiomegaly": ["cardiac_silhouette"]}[op.concept])


def test_same_seed_same_plan(tmp_path):
    first = [e.source_image_id for e in plan_for(tmp_path, ROWS, SPEC, seed=4).edits]
    assert first == [e.source_image_id for e in plan_for(tmp_path, ROWS, SPEC, seed=4).edits]


def test_inserting_into_a_normal_study_clears_no_finding():
    source = {"No Finding": 1.0, "Pleural Effusion": 0.0, "Lung Opacity": 0.0, "Edema": 0.0}
    target = derive_target(source, [Operation(op="insert", concept="Edema")], RuleSet())
    assert target == {"No Finding": 0.0, "Pleural Effusion": 0.0, "Lung Opacity": 1.0, "Edema": 1.0}
    back = derive_target(target, [Operation(op="delete", concept="Edema")], RuleSet())
    assert back["No Finding"] == 0.0  # Lung Opacity stays: it may have another cause


def test_no_finding_plus_effusion_is_never_planned_and_the_plan_says_why(tmp_path):
    plan = plan_for(tmp_path, ROWS, SPEC.replace("all_of: [Cardiomegaly, Effusion]", "all_of: [No Finding, Effusion]"))
    assert plan.edits == []
    assert plan.cells[0].status == "rejected" and "No Finding excludes" in plan.cells[0].reason


def test_a_user_rule_rejects_targets_and_names_the_rule(tmp_path):
    spec = SPEC + "    rules:\n      - {if: Pneumothorax, excludes: Cardiomegaly}\n"
    spec = spec.replace("all_of: [Cardiomegaly, Effusion], min_count: 4", "all_of: [Pneumothorax], min_count: 3")
    plan = plan_for(tmp_path, ROWS, spec)
    # cardiomegaly sources would become Cardiomegaly + Pneumothorax, which the rule forbids
    assert all(e.source_vector["Cardiomegaly"] == 0 for e in plan.edits)
    assert any("Pneumothorax excludes Cardiomegaly (spec)" in r.reason for r in plan.rejections)


def test_never_seen_combinations_need_sign_off(tmp_path):
    spec = SPEC.replace("all_of: [Cardiomegaly, Effusion], min_count: 4", "all_of: [Edema, Pneumothorax], min_count: 2")
    rows = ROWS + ["i1.png,p9,train,0,0,0,0,1"]
    plan = plan_for(tmp_path, rows, spec)
    assert plan.edits == [] and any("never seen" in r.reason for r in plan.rejections)
    allowed = plan_for(tmp_path, rows, spec + "    synthesis: {allow_unseen_combinations: true}\n")
    assert len(allowed.edits) == 2


def test_two_edits_when_no_image_is_one_edit_away(tmp_path):
    rows = ["a.png,p1,train,1,0,0,0,0", "b.png,p2,train,1,0,0,0,0", "c.png,p3,train,0,1,1,0,0"]
    plan = plan_for(tmp_path, rows, SPEC.replace("min_count: 4", "min_count: 3"))
    assert plan.cells[0].candidates_one_edit == 0 and plan.cells[0].candidates_two_edits == 2
    assert all(len(e.operations) == 2 and e.target_vector["No Finding"] == 0 for e in plan.edits)


def test_the_planner_refuses_test_images(tmp_path):
    manifest = dataset(tmp_path, ROWS)
    spec, path = spec_file(tmp_path, SPEC)
    with pytest.raises(ValueError, match="only see training images"):
        plan_edits(manifest, spec, analyse_coverage(manifest, spec, path, {}))


def test_reaching_no_finding_deletes_the_findings_present(tmp_path):
    spec = SPEC.replace("all_of: [Cardiomegaly, Effusion], min_count: 4", "all_of: [No Finding], min_count: 3")
    rows = ["a.png,p1,train,0,1,0,0,0", "b.png,p2,train,0,1,1,0,0", "c.png,p3,train,1,0,0,0,0"]
    plan = plan_for(tmp_path, rows, spec)
    for edit in plan.edits:
        assert all(op.op == "delete" for op in edit.operations)
        assert edit.target_vector["No Finding"] == 1 and edit.target_vector["Cardiomegaly"] == 0
    assert [len(e.operations) for e in plan.edits] == [1]  # one-edit source first; b needs two


SWAP_ROWS = [  # image, patient, split, NF, Cardio, Effusion, PTX, Edema
    "s1.png,p1,train,0,0,1,0,0", "s2.png,p2,train,0,0,1,0,0", "s3.png,p3,train,0,0,1,0,0",  # effusion: swap
    "n1.png,p4,train,1,0,0,0,0",                                                          # normal: insert
    "x1.png,p5,train,0,0,0,1,0", "t1.png,p6,test,0,0,1,0,0",
]
SWAP_SPEC = """\
    version: 1
    concepts: [No Finding, Cardiomegaly, Effusion, Pneumothorax, Edema]
    synthesis: {allow_unseen_combinations: true}
    cells:
      - {id: PTX, all_of: [Pneumothorax], none_of: [Effusion], min_count: 6, swaps: [[Effusion, Pneumothorax]]}
"""


def test_a_swap_reaches_a_cell_in_one_edit_where_insert_and_delete_need_two(tmp_path):
    """Images with an effusion are two edits from 'pneumothorax without effusion' (delete, insert) but one
    swap away, which the cell allows: they join the one-edit sources, each planned as a single swap of both
    regions, and the target vector has the effusion out and the pneumothorax in."""
    plan = plan_for(tmp_path, SWAP_ROWS, SWAP_SPEC)
    cell = plan.cells[0]
    assert cell.candidates_one_edit == 4 and cell.candidates_two_edits == 0  # 3 swaps + 1 insertion
    swaps = [e for e in plan.edits if e.operations[0].op == "swap"]
    assert len(swaps) == 3 and "t1.png" not in {e.source_image_id for e in swaps}
    for edit in swaps:
        (operation,) = edit.operations
        assert (operation.concept, operation.to) == ("Pleural Effusion", "Pneumothorax")
        assert operation.label == "swap Pleural Effusion -> Pneumothorax"
        assert [(e.concept, e.target_value, e.expected_direction) for e in operation.effects] == [
            ("Pleural Effusion", 0.0, -1), ("Pneumothorax", 1.0, 1)]
        assert edit.target_vector["Pleural Effusion"] == 0 and edit.target_vector["Pneumothorax"] == 1
        assert set(edit.regions) == {"costophrenic_angles", "apical_lateral_pleura"}
    # without the cell's permission the same images are two edits away
    (tmp_path / "plain").mkdir()
    plain = plan_for(tmp_path / "plain", SWAP_ROWS, SWAP_SPEC.replace(", swaps: [[Effusion, Pneumothorax]]", ""))
    assert plain.cells[0].candidates_one_edit == 1 and plain.cells[0].candidates_two_edits == 3


@pytest.mark.parametrize("swap,why", [
    ("[[Cardiomegaly, Pneumothorax]]", "within a group"),
    ("[[Pneumothorax, Effusion]]", "none_of concept by an all_of one"),
])
def test_a_swap_the_cell_cannot_use_is_refused(tmp_path, swap, why):
    from cxr_audit.errors import UserInputError

    text = SWAP_SPEC.replace("none_of: [Effusion]", "none_of: [Effusion, Cardiomegaly]").replace(
        "[[Effusion, Pneumothorax]]", swap)
    with pytest.raises(UserInputError, match=why):
        spec_file(tmp_path, text)


def test_a_swap_operation_names_two_concepts_of_one_group():
    with pytest.raises(ValueError, match="within a group"):
        Operation(op="swap", concept="Cardiomegaly", to="Pneumothorax")
    with pytest.raises(ValueError, match="'to'"):
        Operation(op="swap", concept="Pleural Effusion")
    with pytest.raises(ValueError, match="for a swap"):
        Operation(op="insert", concept="Pleural Effusion", to="Pneumothorax")


def test_the_plan_schema_shows_the_swap_operation(run_cli):
    import json

    from cxr_audit.synthesis.planner import PLAN_SCHEMA_VERSION

    result = run_cli("schema", "plan")
    schema = json.loads(result.output)
    operation = schema["$defs"]["Operation"]
    assert "swap" in operation["properties"]["op"]["enum"] and "to" in operation["properties"]
    assert PLAN_SCHEMA_VERSION == "2.2" and "reserves" in schema["properties"]


def test_a_fine_concept_can_be_planned_and_sets_its_label(tmp_path):
    """A spec may name fine concepts (labels made from report text have them): inserting an endotracheal tube
    makes the target a support-device image, and inserting a meniscus an effusion (a fine concept implies its
    label)."""
    rules = RuleSet()
    source = {"No Finding": 1.0, "Support Devices": 0.0, "Endotracheal Tube": 0.0, "Pleural Effusion": 0.0,
              "Layering Effusion": 0.0}
    tube = derive_target(source, [Operation(op="insert", concept="Endotracheal Tube")], rules)
    assert tube["Support Devices"] == 1 and tube["No Finding"] == 1  # a device is no pathology
    meniscus = derive_target(source, [Operation(op="insert", concept="Layering Effusion")], rules)
    assert meniscus["Pleural Effusion"] == 1 and meniscus["No Finding"] == 0
    csv = tmp_path / "labels.csv"
    csv.write_text("path,patient_id,split,Support Devices,Endotracheal Tube\n" + "".join(
        f"i{k}.png,p{k},train,{int(k < 3)},{int(k < 1)}\n" for k in range(6)))
    spec, path = spec_file(tmp_path, """\
        version: 1
        concepts: [Support Devices, Endotracheal Tube]
        synthesis: {allow_unseen_combinations: true}
        cells:
          - {id: ETT, all_of: [Endotracheal Tube], min_count: 3}
    """)
    train = read_manifest(csv, "csv").split("train")
    coverage = analyse_coverage(train, spec, path, {})
    assert coverage.cells[0].count == 1 and coverage.cells[0].deficit == 2
    plan = plan_edits(train, spec, coverage)
    assert plan.edits and all(e.operations[0].concept == "Endotracheal Tube" and
                              e.target_vector["Support Devices"] == 1 for e in plan.edits)


def test_edit_counts_on_whole_columns_equal_the_operations_row_by_row():
    """The planner counts edits on the whole label matrix at once; the count is len(_operations_for) (None: -1)
    for every row, across insert, delete, No Finding, unknown labels and swaps."""
    import numpy as np

    from cxr_audit.spec import Cell
    from cxr_audit.synthesis.planner import _operations_for, edit_counts

    names = ["No Finding", "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Atelectasis",
             "Support Devices"]
    index = {c: j for j, c in enumerate(names)}
    rng = np.random.default_rng(0)
    labels = rng.choice([0.0, 1.0, np.nan], size=(3000, len(names)), p=[0.55, 0.35, 0.10])
    cells = [Cell(id="A", all_of=["Cardiomegaly", "Pleural Effusion"], min_count=1),
             Cell(id="B", all_of=["Pneumothorax"], none_of=["Pleural Effusion"], swaps=[("Pleural Effusion", "Pneumothorax")],
                  min_count=1),
             Cell(id="C", all_of=["No Finding"], min_count=1),
             Cell(id="D", all_of=["Atelectasis"], none_of=["Consolidation", "No Finding"], min_count=1),
             Cell(id="E", all_of=["Consolidation", "Support Devices"], none_of=["Atelectasis"],
                  swaps=[("Atelectasis", "Consolidation")], min_count=1)]
    for cell in cells:
        expected = [-1 if (ops := _operations_for(cell, row, index)) is None else len(ops) for row in labels]
        assert edit_counts(cell, labels, index).tolist() == expected, cell.id
