"""The evaluate stage, on a real trained model and on a real black-box model's predictions."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_audit.classifier.adapter import LoadedModel
from cxr_audit.rundir import RunDir as run_dir
from cxr_audit.stages.evaluate import EvaluateStage
from cxr_audit.stages.pipeline import run_stages

REQUIRED = ("n", "positives", "auprc", "auroc", "ece", "ace", "mce", "brier", "entropy")


def test_black_box_chexnet_predictions_on_real_nih_images(shared_data, tmp_path, run_cli):
    nih = shared_data / "nih621"
    result = run_cli("evaluate", "--predictions", nih / "chexnet_predictions.csv", "--data", nih / "labels.csv",
                     "--format", "nih", "--spec", "coverage_specs/nih.yaml", "--out", tmp_path, "--bootstrap", 100)
    assert result.exit_code == 0, result.output
    assert "Cardiomegaly" in result.output and "AUROC" in result.output
    document = json.loads(run_dir(tmp_path).evaluation("baseline").metrics.read_text())
    assert document["schema_version"] == "2.0" and document["data"]["split"] == "all"
    assert len(document["concepts"]) == 14
    for metrics in document["concepts"].values():
        assert all(key in metrics for key in REQUIRED)
        low, high = metrics["auroc"]["ci"]
        assert low <= metrics["auroc"]["value"] <= high
    # independent check straight from the two CSVs
    labels = pd.read_csv(nih / "labels.csv")
    predictions = pd.read_csv(nih / "chexnet_predictions.csv").set_index("Image Index").loc[labels["Image Index"]]
    truth = labels["Finding Labels"].str.contains("Effusion").astype(int)
    expected = roc_auc_score(truth, predictions["prob_Effusion"])
    assert document["concepts"]["Pleural Effusion"]["auroc"]["value"] == pytest.approx(expected, abs=1e-6)
    assert document["concepts"]["Cardiomegaly"]["auroc"]["value"] > 0.85  # a real CheXNet finds cardiomegaly
    cell = document["cells"]["NIH-COV-001"]
    assert cell["evaluated"] and cell["positives"] == int(
        (labels["Finding Labels"].str.contains("Cardiomegaly") & labels["Finding Labels"].str.contains("Effusion")).sum())


def test_predictions_missing_images_exit_2(shared_data, tmp_path, run_cli):
    nih = shared_data / "nih621"
    partial = tmp_path / "partial.csv"
    pd.read_csv(nih / "chexnet_predictions.csv").iloc[:100].to_csv(partial, index=False)
    result = run_cli("evaluate", "--predictions", partial, "--data", nih / "labels.csv", "--format", "nih",
                     "--out", tmp_path / "run")
    assert result.exit_code == 2 and "no prediction for 521 of 621 images" in result.output


def _evaluate(open_test_run, out, **given) -> dict:
    ctx = open_test_run(out, evaluate_split="auto", **given)
    run_stages(ctx, [EvaluateStage(ctx, "baseline")])
    return json.loads(ctx.run.evaluation("baseline").metrics.read_text())


def test_model_evaluation_writes_metrics_with_uncertainty_and_uses_the_cache(
        phantom_dataset, phantom_model, tmp_path, monkeypatch, open_test_run):
    given = dict(data=phantom_dataset / "labels.csv", models=[phantom_model], spec="coverage_specs/phantom.yaml",
                 bootstrap=200, mc_samples=4, cache_dir=tmp_path / "cache")
    document = _evaluate(open_test_run, tmp_path / "run", **given)
    assert document["data"]["split"] == "test" and document["uncertainty"]["method"] == "mc_dropout"
    concepts = document["concepts"]
    assert set(concepts) == {"Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema",
                             "Atelectasis", "Nodule", "Support Devices"}
    assert all("mutual_information" in m for m in concepts.values())
    assert concepts["Cardiomegaly"]["threshold"]["source"] == "validation split (max F1)"
    assert concepts["Cardiomegaly"]["auroc"]["value"] > 0.75  # really trained (chance is 0.5)
    stored = np.load(run_dir(tmp_path / "run").evaluation("baseline").predictions)
    assert stored["probabilities"].shape == (document["n_images"], 8)
    assert document["reliability"]["Cardiomegaly"]["count"] and document["pr_curves"]["Cardiomegaly"]["recall"]

    # Second run on the same images: every prediction comes from the cache, the model is never called.
    def refuse(*args, **kwargs):
        raise AssertionError("the model ran although every prediction was cached")

    monkeypatch.setattr(LoadedModel, "predict", refuse)
    again = _evaluate(open_test_run, tmp_path / "run2", **{**given, "mc_samples": 0})
    assert again["concepts"]["Cardiomegaly"]["auroc"] == concepts["Cardiomegaly"]["auroc"]


def test_model_and_predictions_are_mutually_exclusive(phantom_dataset, tmp_path, run_cli):
    result = run_cli("evaluate", "--data", phantom_dataset / "labels.csv", "--format", "chexpert",
                     "--out", tmp_path)
    assert result.exit_code == 2 and "exactly one of --model" in result.output


def test_an_ensemble_averages_members_and_reports_their_disagreement(phantom_dataset, phantom_model, tmp_path,
                                                                     run_cli):
    import shutil

    import torch

    from cxr_audit.classifier.small_cnn import SmallCXRNet

    other = tmp_path / "other.ts"
    torch.manual_seed(3)
    torch.jit.script(SmallCXRNet(8, width=8).eval()).save(str(other))  # an untrained member disagrees
    shutil.copy(phantom_model.with_name(phantom_model.name + ".card.yaml"), other.with_name("other.ts.card.yaml"))
    result = run_cli("evaluate", "--model", phantom_model, "--model", other, "--data", phantom_dataset / "labels.csv",
                     "--format", "chexpert", "--out", tmp_path / "run", "--bootstrap", 200, "--workers", 0)
    assert result.exit_code == 0, result.output
    document = json.loads(run_dir(tmp_path / "run").evaluation("baseline").metrics.read_text())
    assert document["uncertainty"] == {"method": "ensemble", "samples": 2}
    assert len(document["model"]["ensemble"]) == 2
    record = json.loads(run_dir(tmp_path / "run").stage_record("evaluate_baseline").read_text())
    assert len(record["inputs"]["models"]) == 2  # both members are inputs of the stage
    assert document["concepts"]["Cardiomegaly"]["mutual_information"]["value"] > 0.01
