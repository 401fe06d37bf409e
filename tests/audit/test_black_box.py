"""A model known only by its predictions, audited to the end: the real CheXNet outputs on real NIH images give
audit.json, the report and a gate verdict, with the parts that need weights skipped and said so."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_audit.audit.document import load_audit
from cxr_audit.report.render import build_html
from cxr_audit.rundir import RunDir


@pytest.fixture(scope="module")
def black_box_run(shared_data, tmp_path_factory):
    from typer.testing import CliRunner

    from cxr_audit.cli import app

    nih = shared_data / "nih621"
    run = tmp_path_factory.mktemp("black-box") / "run"
    result = CliRunner().invoke(app, [str(a) for a in (
        "audit", "--predictions", nih / "chexnet_predictions.csv", "--data", nih / "labels.csv", "--format", "nih",
        "--spec", "coverage_specs/nih.yaml", "--out", run, "--bootstrap", 100)])
    assert result.exit_code == 0, result.output
    return run, nih


def test_the_audit_of_real_chexnet_predictions_is_written_with_what_it_skipped(black_box_run):
    run, nih = black_box_run
    audit = json.loads((run / "audit.json").read_text())
    assert audit["scope"]["black_box"] and list(audit["arms"]) == ["baseline", "recalibrated"] and audit["probe"] is None
    model = audit["inputs"]["model"]
    assert Path(model["path"]).resolve() == (nih / "chexnet_predictions.csv").resolve()
    assert model["format"] == "predictions csv" and model["card"] is None and len(model["sha256"]) == 64
    assert set(audit["skipped"]) == {"fine-tune arms", "synthesis", "probe"}
    # the vendor's file scores every image, the validation split's too: the black box is recalibrated
    assert set(audit["arms"]) == {"baseline", "recalibrated"}
    recalibrated = audit["arms"]["recalibrated"]["metrics"]
    assert recalibrated["model"]["recalibration"]["method"] == "temperature"
    baseline = audit["arms"]["baseline"]["metrics"]
    assert recalibrated["concepts"]["Cardiomegaly"]["auroc"]["value"] == pytest.approx(
        baseline["concepts"]["Cardiomegaly"]["auroc"]["value"], abs=1e-9)
    assert "--generator" in audit["skipped"]["synthesis"] and "weights" in audit["skipped"]["fine-tune arms"]
    assert {p.stem for p in RunDir(run).stages.glob("*.json")} == {"datasheet", "coverage", "evaluate_baseline",
                                                                   "evaluate_recalibrated", "plan",
                                                                   "assemble", "report"}
    # AUROC recomputed straight from the vendor's CSV on the audit's own test images
    predictions = np.load(RunDir(run).evaluation("baseline").predictions)
    vendor = pd.read_csv(nih / "chexnet_predictions.csv").set_index("Image Index").loc[predictions["image_id"]]
    j = list(predictions["concepts"]).index("Cardiomegaly")
    expected = roc_auc_score(predictions["labels"][:, j], vendor["prob_Cardiomegaly"])
    assert audit["arms"]["baseline"]["metrics"]["concepts"]["Cardiomegaly"]["auroc"]["value"] == \
        pytest.approx(expected, abs=1e-6)
    # request.json records what the run's stages read, nothing a black box cannot use
    recorded = json.loads(RunDir(run).request.read_text())["config"]
    assert not {"models", "card", "allow_pickle", "mc_samples", "arms", "finetune", "generator_training", "edit",
                "checker", "gallery_size"} & set(recorded)
    assert recorded["predictions"].endswith("chexnet_predictions.csv") and recorded["bootstrap"] == 100
    # the report says what the audit could not do, and why
    assert (run / "report.pdf").read_bytes()[:5] == b"%PDF-"
    html = build_html(load_audit(run / "audit.json"), [])
    assert "known only by its predictions" in html and "Not probed" in html and "Not in this audit" in html


def test_the_gate_judges_a_black_box_on_its_subgroup_gaps(black_box_run, run_cli, tmp_path):
    run, _ = black_box_run
    gap = json.loads((run / "audit.json").read_text())["arms"]["baseline"]["metrics"]["subgroup_gaps"][
        "Pleural Effusion"]["sex"]["auroc"]
    policy = tmp_path / "policy.yaml"

    def gate(maximum: float, variables: str = "[sex]"):
        policy.write_text(f"version: 1\nrules:\n  - {{type: max_subgroup_gap, concepts: [Pleural Effusion], "
                          f"variables: {variables}, max: {maximum}}}\n")
        return run_cli("gate", "--candidate", run, "--policy", policy, "--junit", tmp_path / "junit.xml",
                       "--summary", tmp_path / "summary.md")

    upper = gap["ci"][1]
    assert gate(min(1.0, round(upper + 0.01, 3))).exit_code == 0  # the gap's upper bound is within the limit
    assert gate(round(upper - 0.01, 3)).exit_code == 1              # and beyond a tighter one
    assert "Pleural Effusion, sex" in (tmp_path / "summary.md").read_text()
    absent = gate(0.5, "[manufacturer]")  # PNG data has no DICOM header: no manufacturer subgroups
    assert absent.exit_code == 2 and "no subgroup variable manufacturer" in absent.output


def test_a_black_box_cannot_be_fine_tuned_and_the_refusal_records_nothing(black_box_run, run_cli):
    run, nih = black_box_run
    before = RunDir(run).request.read_bytes()
    result = run_cli("audit", "--out", run, "--predictions", nih / "chexnet_predictions.csv", "--arms", "cars")
    assert result.exit_code == 2 and "--arms" in result.output and "weights" in result.output
    assert RunDir(run).request.read_bytes() == before


def test_a_black_box_scored_on_the_test_split_only_is_not_recalibrated_and_says_why(shared_data, tmp_path,
                                                                                    open_test_run):
    nih = shared_data / "nih621"
    full = open_test_run(tmp_path / "full", predictions=nih / "chexnet_predictions.csv", data=nih / "labels.csv",
                         format="nih", spec=Path("coverage_specs/nih.yaml"))
    assert full.arms == ["baseline", "recalibrated"]
    test_ids = set(full.frontal("test").frame["image_id"].astype(str))
    scores = pd.read_csv(nih / "chexnet_predictions.csv")
    partial = tmp_path / "test_only.csv"
    scores[scores["Image Index"].isin(test_ids)].to_csv(partial, index=False)
    only_test = open_test_run(tmp_path / "partial", predictions=partial, data=nih / "labels.csv", format="nih",
                              spec=Path("coverage_specs/nih.yaml"))
    assert only_test.arms == ["baseline"]
    from cxr_audit.stages.assemble import AssembleStage

    assert "validation split" in AssembleStage(only_test)._skipped()["recalibrated arm"]
