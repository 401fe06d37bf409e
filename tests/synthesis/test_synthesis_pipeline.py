"""plan -> synthesize on the phantom: outputs, provenance, QC, resumability, and the ablation."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_audit.classifier.loading import load_model
from cxr_audit.data.images import load_image
from cxr_audit.rundir import RunDir, SynthesisLayout
from cxr_audit.stages.synthesize import synthesize_into
from cxr_audit.synthesis.backends import load_backend
from cxr_audit.synthesis.editor import EditSettings
from cxr_audit.synthesis.planner import PlanDocument
from cxr_audit.synthesis.synthesize import SynthesisOptions

SPEC = Path("coverage_specs/phantom.yaml")


@pytest.fixture(scope="module")
def planned_run(phantom_dataset, tmp_path_factory):
    from typer.testing import CliRunner

    from cxr_audit.cli import app

    folder = tmp_path_factory.mktemp("planned")
    run = folder / "run"
    spec = folder / "spec.yaml"  # small budgets keep the test fast
    spec.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 3}\n")
    result = CliRunner().invoke(app, ["plan", "--data", str(phantom_dataset / "labels.csv"), "--format", "chexpert",
                                      "--spec", str(spec), "--out", str(run)])
    assert result.exit_code == 0, result.output
    return run, json.loads(RunDir(run).plan.read_text())


def test_plan_targets_the_phantom_deficits(planned_run):
    _, plan = planned_run
    pathology_inserted = [e for e in plan["edits"]
                          if any(o["op"] == "insert" and o["concept"] != "Support Devices" for o in e["operations"])]
    assert pathology_inserted and all(e["target_vector"]["No Finding"] == 0 for e in pathology_inserted)
    # devices are not a pathology: a normal study with a line inserted stays No Finding
    devices_only = [e for e in plan["edits"] if e["cell_id"] == "PHANTOM-COV-004"]
    assert all(e["target_vector"]["No Finding"] == 1 for e in devices_only)
    assert {c["status"] for c in plan["cells"]} <= {"planned", "partly planned", "rejected", "no source"}


def test_synthesis_writes_accepted_edits_with_provenance_and_resumes(planned_run, tiny_generator, phantom_dataset,
                                                                    phantom_model, tmp_path):
    from cxr_audit.data.readers import read_manifest

    run, plan = planned_run
    plan = PlanDocument.model_validate(plan)
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    backend = load_backend(tiny_generator)
    options = SynthesisOptions(settings=EditSettings(steps=8, strength=0.5), progress=False, batch_size=4,
                               top_up=None)  # the planned edits only (the top-up: the next test)
    checker = load_model(phantom_model)
    out = SynthesisLayout(tmp_path / "synthetic")
    summary = synthesize_into(out, plan, manifest, backend, checker, options)
    n = len(plan.edits)
    assert summary.planned == n == len(list(out.records.glob("*.json")))
    assert summary.accepted + summary.rejected == n
    assert summary.mean_outside_mae < 1e-3 and summary.mean_ground_truth_mae is not None
    records = [json.loads(p.read_text()) for p in sorted(out.records.glob("*.json"))]
    assert all(r["qc"]["checker_before"] is not None for r in records)
    frame = pd.read_csv(out.manifest) if summary.accepted else None
    if frame is not None:
        assert {"source_sha256", "operation", "concept", "target_vector", "seed", "generator_sha256"} <= set(frame.columns)
        assert (frame["split"] == "train").all()  # synthetic images never enter a test set
    first = records[0]["edit_id"]
    assert load_image(out.image(first)).shape == (64, 64)
    assert load_image(out.mask(first)).max() == 1.0

    # resume: remove one record; only its batch is redone, and to the same bytes
    assert n > options.batch_size  # two batches at least
    untouched = out.record(records[-1]["edit_id"])
    stamp = untouched.stat().st_mtime_ns
    image = out.image(first).read_bytes()
    out.record(first).unlink()
    again = synthesize_into(out, plan, manifest, backend, checker, options)
    assert again.planned == n and untouched.stat().st_mtime_ns == stamp
    assert out.image(first).read_bytes() == image and out.record(first).exists()

    # the unconstrained ablation changes anatomy outside the edit region measurably more, and is not rejected
    # for it (its fidelity is measured, not required)
    options.unconstrained = True
    ablation = synthesize_into(SynthesisLayout(tmp_path / "abl"), plan, manifest, backend, checker, options)
    assert ablation.mean_outside_mae > 10 * max(summary.mean_outside_mae, 1e-4)
    assert not any("outside the edit region" in reason for reason in ablation.rejected_by_reason)

    # the null edits (texture control): the same regions regenerated under each source's own vector
    options.unconstrained, options.null_edits = False, True
    null_layout = SynthesisLayout(tmp_path / "null")
    null = synthesize_into(null_layout, plan, manifest, backend, checker, options)
    assert null.mode == "null edits (texture control)" and null.planned == n
    assert null.mean_outside_mae < 1e-3  # anatomy outside the region kept, as in CARS
    by_id = {e.edit_id: e for e in plan.edits}
    for path in sorted(null_layout.records.glob("*.json")):
        record = json.loads(path.read_text())
        planned = by_id[record["edit_id"]]
        assert record["operations"] == [] and record["target_vector"] == planned.source_vector
        assert record["qc"]["alignment"] is None
        # same edit region as the CARS edit of the same plan entry
        assert load_image(null_layout.mask(record["edit_id"])).tolist() == load_image(out.mask(record["edit_id"])).tolist()
    if null.accepted:
        rows = pd.read_csv(null_layout.manifest)
        assert set(rows["operation"]) == {"null"} and (rows["split"] == "train").all()


def test_rejected_edits_are_topped_up_to_the_plans_count_per_cell(planned_run, tiny_generator, phantom_dataset,
                                                                 phantom_model, tmp_path):
    """QC rejects many of a barely trained generator's edits: the arm draws the plan's reserves, then retries,
    and no cell ends with more accepted edits than planned; a resumed top-up redoes only what is missing."""
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.top_up import TopUpPolicy, first_attempt_id

    run, plan = planned_run
    plan = PlanDocument.model_validate(plan)
    assert plan.reserves  # the phantom has more one-edit sources than the budget of 3 per cell
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    backend, checker = load_backend(tiny_generator), load_model(phantom_model)
    options = SynthesisOptions(settings=EditSettings(steps=4, strength=0.5), progress=False, batch_size=8,
                               top_up=TopUpPolicy(tries_per_source=2, attempts_per_edit=2))
    out = SynthesisLayout(tmp_path / "synthetic")
    summary = synthesize_into(out, plan, manifest, backend, checker, options)
    planned = {c.cell_id: c.planned for c in plan.cells if c.planned}
    assert set(summary.budgets) == set(planned)
    for cell, budget in summary.budgets.items():
        assert budget["target"] == planned[cell] and budget["accepted"] <= planned[cell]
        assert budget["attempts"] <= 2 * planned[cell]
        assert summary.accepted_by_cell.get(cell, 0) == budget["accepted"]
        assert budget["status"] == "met" if budget["accepted"] == planned[cell] else budget["status"].startswith("short")
    assert summary.planned > len(plan.edits)  # QC rejected some planned edits and the arm drew more
    records = sorted(out.records.glob("*.json"))
    topped = [p for p in records if first_attempt_id(p.stem) not in {e.edit_id for e in plan.edits}]
    assert topped
    stamp = {p: p.stat().st_mtime_ns for p in records}
    topped[-1].unlink()
    again = synthesize_into(out, plan, manifest, backend, checker, options)
    assert again.budgets == summary.budgets and topped[-1].exists()
    assert sum(p.stat().st_mtime_ns != stamp[p] for p in records) <= options.batch_size  # one batch redone


def test_dicom_sources_give_dicom_edits_without_source_phi(tiny_generator, tmp_path):
    import pydicom

    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.phantom.dataset import MADE_UP_NAMES, write_phantom_dataset
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import load_spec
    from cxr_audit.synthesis.planner import plan_edits

    data = tmp_path / "dicom"
    write_phantom_dataset(data, 60, size=64, seed=5, dicom=True, workers=1, progress=False)
    manifest = read_manifest(data / "labels.csv", "chexpert")
    train = manifest.split("train")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(SPEC.read_text() + "synthesis: {budget_per_cell: 1}\n")
    spec = load_spec(spec_path)
    plan = plan_edits(train, spec, analyse_coverage(train, spec, spec_path, {}), 0)
    plan.edits = plan.edits[:2]
    out = SynthesisLayout(tmp_path / "synthetic")
    synthesize_into(out, plan, manifest, load_backend(tiny_generator), None,
                  SynthesisOptions(settings=EditSettings(steps=4, strength=0.5), progress=False))
    for edit in plan.edits:
        path = out.dicom(edit.edit_id)
        ds = pydicom.dcmread(path)
        assert "DERIVED" in ds.ImageType and "SYNTHETIC" in ds.ImageType and ds.ConversionType == "SYN"
        assert str(ds.PatientName) == "SYNTHETIC^CXR-AUDIT"
        source = pydicom.dcmread(manifest.resolve_image(manifest.frame.set_index("image_id").loc[
            edit.source_image_id, "path"]))
        raw = path.read_bytes()
        # nothing identifying from the source header: names, ids, institution, UIDs
        for value in (str(source.PatientName), source.PatientID, source.InstitutionName, source.StudyInstanceUID,
                      source.SOPInstanceUID):
            assert value.encode() not in raw
        assert not any(name.encode() in raw for name in map(str, MADE_UP_NAMES))
        assert ds.pixel_array.shape == (64, 64)


def test_swap_edits_are_synthesized_over_both_regions_and_scored_against_the_phantom_truth(
        tiny_generator, phantom_dataset, phantom_model, tmp_path):
    """A planned swap (effusion out, pneumothorax in) is carried out in one edit: its region covers both
    findings' regions, QC reads the checker both ways, and the phantom's exact counterfactual (the effusion
    removed and a pneumothorax drawn) is the ground truth it is scored against."""
    import numpy as np

    from cxr_audit.anatomy.masks import image_mask_folder, load_mask_folder
    from cxr_audit.anatomy.regions import edit_mask
    from cxr_audit.data import phantom
    from cxr_audit.data.phantom.dataset import study_of
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.planner import PlannedEdit
    from cxr_audit.synthesis.synthesize import _phantom_truth

    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    frame = manifest.frame
    rows = frame[(frame["Pleural Effusion"] == 1) & (frame["Pneumothorax"] == 0) & (frame["split"] == "train")].head(4)
    names = list(phantom.PHANTOM_FINDINGS)
    swap = {"op": "swap", "concept": "Pleural Effusion", "to": "Pneumothorax"}
    edits = [PlannedEdit(edit_id=f"S{k}", cell_id="PTX", source_image_id=row["image_id"], source_path=row["path"],
                         patient_id=row["patient_id"], operations=[swap],
                         source_vector={n: float(row[n]) for n in names},
                         target_vector={n: float(row[n]) for n in names} | {"Pleural Effusion": 0.0, "Pneumothorax": 1.0},
                         regions=["costophrenic_angles", "apical_lateral_pleura"], seed=k)
             for k, (_, row) in enumerate(rows.iterrows())]
    out = SynthesisLayout(tmp_path / "synthetic")
    summary = synthesize_into(out, PlanDocument(edits=edits), manifest, load_backend(tiny_generator),
                              load_model(phantom_model), SynthesisOptions(settings=EditSettings(steps=4, strength=0.5),
                                                                          progress=False, batch_size=4))
    assert summary.planned == 4 and summary.mean_ground_truth_mae is not None
    for edit, (_, row) in zip(edits, rows.iterrows()):
        record = json.loads(out.record(edit.edit_id).read_text())
        assert record["operations"] == [swap] and record["qc"]["ground_truth_mae"] is not None
        assert record["qc"]["alignment"] is not None  # the checker read both ways (the weaker margin kept)
        # the truth: the same patient with the effusion removed and a pneumothorax drawn
        truth = _phantom_truth(row, edits[0].operations, 64)
        drawn = phantom.render(phantom.counterfactual(phantom.counterfactual(study_of(row), remove="Pleural Effusion"),
                                                      add="Pneumothorax"), 64).image
        assert np.array_equal(truth, drawn)
        # the region holds both findings' regions
        region = load_image(out.mask(edit.edit_id)) > 0.5
        anatomy = load_mask_folder(image_mask_folder(manifest, row["path"]), 64)
        pleural_space, _ = edit_mask(["Pleural Effusion"], anatomy, side="both")
        apex, _ = edit_mask(["Pneumothorax"], anatomy, side="both")
        assert (region & pleural_space).any() and (region & apex).any()
