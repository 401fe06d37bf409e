"""The phantom: deterministic, anatomically consistent, learnable, with exact counterfactuals."""

import numpy as np
import pytest

from cxr_audit.coverage import analyse_coverage
from cxr_audit.data import phantom
from cxr_audit.data.images import load_image
from cxr_audit.data.phantom.dataset import (
    Combination,
    Prevalence,
    load_prevalence,
    plan_cohort,
    study_of,
    write_phantom_dataset,
)
from cxr_audit.data.readers import read_manifest
from cxr_audit.errors import UserInputError
from cxr_audit.spec import load_spec


def studies(n, present=(), seed=0):
    rng = np.random.default_rng(seed)
    return [phantom.make_study(f"p{i}", 1, "MF"[i % 2], int(rng.integers(2**31)), int(rng.integers(2**31)),
                               set(present)) for i in range(n)]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "ds"
    prevalence = Prevalence(combinations=[Combination(all_of=["Pleural Effusion", "Cardiomegaly"],
                                                      probability={"train": 0.0, "val": 0.3, "test": 0.3})])
    write_phantom_dataset(out, 120, size=64, seed=5, prevalence=prevalence, workers=1, progress=False)
    return out


def test_same_seed_same_dataset(small_dataset, tmp_path):
    prevalence = Prevalence(combinations=[Combination(all_of=["Pleural Effusion", "Cardiomegaly"],
                                                      probability={"train": 0.0, "val": 0.3, "test": 0.3})])
    write_phantom_dataset(tmp_path / "again", 120, size=64, seed=5, prevalence=prevalence, workers=2,
                          progress=False)
    assert (tmp_path / "again" / "labels.csv").read_bytes() == (small_dataset / "labels.csv").read_bytes()
    first = "images/patient00001/study1/view1_frontal.png"
    assert (tmp_path / "again" / first).read_bytes() == (small_dataset / first).read_bytes()


def test_ctr_from_masks_separates_cardiomegaly_from_normal():
    normal = [phantom.cardiothoracic_ratio(phantom.render(s, 128).masks) for s in studies(30)]
    enlarged = [phantom.cardiothoracic_ratio(phantom.render(s, 128).masks)
                for s in studies(30, {"Cardiomegaly"}, seed=1)]
    assert max(normal) < 0.5 < min(enlarged), (max(normal), min(enlarged))


@pytest.mark.parametrize("finding", phantom.PHANTOM_FINDINGS)
def test_counterfactual_pairs_differ_only_inside_the_finding_mask(finding):
    for study in studies(4, {"Nodule"} if finding != "Nodule" else set(), seed=2):
        source = phantom.render(study, 128)
        edited = phantom.render(phantom.counterfactual(study, add=finding), 128)
        mask = edited.masks[finding]
        difference = np.abs(edited.image - source.image)
        assert difference[~mask].max() == 0.0  # exactly identical outside the mask
        assert difference[mask].mean() > 0.005  # and the finding is really there
        assert 0.0005 < mask.mean() < 0.6
        back = phantom.render(phantom.counterfactual(phantom.counterfactual(study, add=finding),
                                                     remove=finding), 128)
        assert np.array_equal(back.image, source.image)


def test_findings_lie_in_their_anatomical_regions():
    for study in studies(6, {"Pleural Effusion", "Pneumothorax", "Nodule", "Consolidation"}, seed=3):
        masks = phantom.render(study, 128).masks
        lungs = masks["lung_right"] | masks["lung_left"]
        for finding in ("Pleural Effusion", "Pneumothorax", "Consolidation"):
            inside = (masks[finding] & lungs).sum() / masks[finding].sum()
            assert inside > 0.4, (finding, inside)  # the dilation for blur spreads past the lung edge
        rows = np.flatnonzero(masks["Pleural Effusion"].any(axis=1))
        lung_rows = np.flatnonzero(lungs.any(axis=1))
        assert rows.mean() > lung_rows.mean()  # effusion sits in the lower pleural space
        ptx_rows = np.flatnonzero(masks["Pneumothorax"].any(axis=1))
        assert ptx_rows.mean() < lung_rows.mean() + 5  # pneumothorax sits apically and laterally


def test_prevalence_makes_a_cell_rare_in_training_and_common_in_test():
    prevalence = Prevalence(combinations=[Combination(all_of=["Pleural Effusion", "Cardiomegaly"],
                                                      probability={"train": 0.01, "test": 0.25})])
    cohort = plan_cohort(6000, prevalence, seed=0)
    both = cohort["present"].apply(lambda p: {"Pleural Effusion", "Cardiomegaly"} <= set(p))
    rate = both.groupby(cohort["split"]).mean()
    assert rate["train"] < 0.02 and 0.2 < rate["test"] < 0.3
    assert cohort.groupby("patient_id")["split"].nunique().max() == 1
    assert cohort.groupby("patient_id").size().max() > 1  # several studies per patient


def test_output_reads_as_chexpert_and_obeys_the_clinical_rules(small_dataset, tmp_path):
    manifest = read_manifest(small_dataset / "labels.csv", "chexpert")
    assert len(manifest) == 120 and manifest.root == small_dataset
    assert set(manifest.frame["split"]) == {"train", "val", "test"}
    spec = load_spec("coverage_specs/phantom.yaml")
    report = analyse_coverage(manifest.split("train"), spec, "coverage_specs/phantom.yaml", {})
    assert report.cells[0].count == 0  # made absent from training by the prevalence file
    rules = spec.rule_set()
    frame = manifest.frame
    for _, row in frame.iterrows():
        positives = {c for c in manifest.concepts if row[c] == 1}
        negatives = {c for c in manifest.concepts if row[c] == 0}
        assert rules.violations(positives, negatives) == [], row["path"]
    image = load_image(manifest.resolve_image(frame["path"].iloc[0]))
    rebuilt = phantom.render(study_of(frame.iloc[0]), 64).image
    assert np.abs(image - rebuilt).max() <= 1 / 255 + 1e-6  # a row renders again from its seeds


def test_dicom_output_carries_made_up_identifiers(tmp_path):
    import pydicom

    write_phantom_dataset(tmp_path / "dcm", 3, size=64, seed=1, dicom=True, workers=1, progress=False)
    manifest = read_manifest(tmp_path / "dcm" / "labels.csv", "chexpert")
    path = manifest.resolve_image(manifest.frame["path"].iloc[0])
    header = pydicom.dcmread(path)
    assert header.Modality == "DX" and "^" in str(header.PatientName) and header.PatientID.startswith("PHANTOM")
    assert load_image(path).shape == (64, 64)


def test_samples_grid_and_refusal_to_overwrite(small_dataset):
    assert (small_dataset / "samples_grid.png").stat().st_size > 50_000
    with pytest.raises(UserInputError, match="never overwritten"):
        write_phantom_dataset(small_dataset, 10, size=64, progress=False)


def test_bad_prevalence_file_is_a_clear_error(tmp_path):
    path = tmp_path / "prevalence.yaml"
    path.write_text("findings: {Fracture: 0.2}\n")
    with pytest.raises(UserInputError, match="not a finding the phantom draws"):
        load_prevalence(path)
    path.write_text("findings: {Nodule: 1.5}\n")
    with pytest.raises(UserInputError, match="between 0 and 1"):
        load_prevalence(path)


def test_phantom_command_writes_a_dataset_the_coverage_command_reads(tmp_path, run_cli):
    prevalence = tmp_path / "prevalence.yaml"
    prevalence.write_text("combinations:\n  - all_of: [Pleural Effusion, Cardiomegaly]\n"
                          "    probability: {train: 0.0, test: 0.5}\n")
    result = run_cli("phantom", "--out", tmp_path / "ds", "--n", 40, "--size", 64, "--seed", 2,
                     "--prevalence", prevalence, "--workers", 1)
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and (tmp_path / "ds" / "phantom.json").exists()
    result = run_cli("coverage", "--data", tmp_path / "ds" / "labels.csv", "--format", "chexpert",
                     "--spec", "coverage_specs/phantom.yaml", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    again = run_cli("phantom", "--out", tmp_path / "ds", "--n", 40, "--size", 64)
    assert again.exit_code == 2 and "never overwritten" in again.output


def test_shipped_demo_generator_was_trained_on_the_demo_dataset(tmp_path):
    """`make demo` refuses a generator trained on other data: this catches a renderer change early."""
    import json

    from cxr_audit.provenance import sha256_file
    from cxr_audit.rundir import RunDir
    from cxr_audit.stages import demo
    from cxr_audit.stages.runner import run_stage

    stage = demo.PhantomStage(RunDir(tmp_path))
    run_stage(stage.rundir, stage, log=lambda message: None)
    labels = stage.outputs()[0]
    card = json.loads((demo.SHIPPED_GENERATOR / "generator_card.json").read_text())
    assert card["training_data_sha256"] == sha256_file(labels)
    assert card["inpainting"] and card["image_size"] == demo.DEMO_SIZE
    # the generator's training focus is exactly what the demo's plan edits
    from collections import Counter

    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import load_spec
    from cxr_audit.synthesis.planner import plan_edits

    spec = load_spec(demo.DEMO_SPEC)
    train = read_manifest(labels, "chexpert").frontal().split("train")
    plan = plan_edits(train, spec, analyse_coverage(train, spec, demo.DEMO_SPEC, {}), demo.DEMO_SEED)
    edited = Counter(c for e in plan.edits for o in e.operations for c in o.concepts)  # a swap edits two
    assert set(demo.DEMO_FOCUS) <= set(edited)
    assert {c for c, n in edited.items() if n >= 5} <= set(demo.DEMO_FOCUS)  # a concept edited a few times may be left out
