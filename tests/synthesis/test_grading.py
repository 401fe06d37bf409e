"""A checker fit to grade: temperature scaling recovers a planted temperature, a concept the checker cannot see
is ungradable, and a checker trained on shuffled labels makes every edit ungradable (rejected, or kept and
counted with --accept-ungradable)."""

import json

import numpy as np
import pytest

from cxr_audit.classifier.small_cnn import predict_probabilities, save_classifier, train_checker
from cxr_audit.classifier.loading import load_model
from cxr_audit.data import phantom
from cxr_audit.data.readers import read_manifest
from cxr_audit.rundir import RunDir, SynthesisLayout
from cxr_audit.stages.synthesize import synthesize_into
from cxr_audit.synthesis.backends import load_backend
from cxr_audit.synthesis.editor import EditSettings
from cxr_audit.synthesis.grading import (
    apply_temperature,
    fit_temperature,
    grade_concepts,
    ungradable_concepts,
)
from cxr_audit.synthesis.planner import PlanDocument
from cxr_audit.synthesis.synthesize import SynthesisOptions


def test_temperature_scaling_recovers_a_planted_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, 20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    overconfident = 1 / (1 + np.exp(-2.5 * z))          # logits 2.5x too large
    temperature = fit_temperature(overconfident, y)
    assert temperature == pytest.approx(2.5, rel=0.05)
    calibrated = apply_temperature(overconfident, temperature)
    assert np.abs(calibrated - 1 / (1 + np.exp(-z))).max() < 0.05
    assert (np.diff(calibrated[np.argsort(overconfident, kind="stable")]) >= 0).all()   # the ranking is kept
    assert np.array_equal(apply_temperature(overconfident, 1.0), overconfident)


def test_a_concept_the_checker_cannot_see_or_has_too_few_positives_is_ungradable():
    rng = np.random.default_rng(1)
    n = 600
    patients = np.arange(n).astype(str)
    labels = np.c_[rng.random(n) < 0.3, rng.random(n) < 0.3, np.r_[np.ones(5), np.zeros(n - 5)]].astype(float)
    seen = np.clip(labels[:, 0] * 0.6 + rng.random(n) * 0.4, 0, 1)      # separates its concept
    blind = rng.random(n)                                                # noise
    rare = np.clip(labels[:, 2] * 0.9 + rng.random(n) * 0.1, 0, 1)       # perfect, but only 5 positives
    labels[:50, 1] = np.nan                                              # unknowns are left out
    grades = grade_concepts(np.c_[seen, blind, rare], labels, patients, ["Cardiomegaly", "Edema", "Pneumothorax"],
                            replicates=300)
    assert grades["Cardiomegaly"]["gradable"] and grades["Cardiomegaly"]["auroc"]["ci"][0] >= 0.7
    assert not grades["Edema"]["gradable"] and "lower 95% bound" in grades["Edema"]["reason"]
    assert grades["Edema"]["positives"] + grades["Edema"]["negatives"] == n - 50
    assert not grades["Pneumothorax"]["gradable"] and "5 positive" in grades["Pneumothorax"]["reason"]
    assert ungradable_concepts(["Cardiomegaly", "Edema", "Nodule"], grades) == ["Edema", "Nodule"]
    assert ungradable_concepts(["Edema"], None) == []


@pytest.fixture(scope="module")
def shuffled_checker(phantom_dataset, tmp_path_factory):
    """A checker trained on the phantom with its labels shuffled across images: it sees nothing."""
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    train, val = manifest.split("train"), manifest.split("val")
    names = list(phantom.PHANTOM_FINDINGS)
    labels = train.frame[names].to_numpy(np.float32)
    shuffled = labels[np.random.default_rng(0).permutation(len(labels))]
    net = train_checker(train.images(64), shuffled, seed=0)
    grading = grade_concepts(predict_probabilities(net, val.images(64)), val.frame[names].to_numpy(np.float32),
                             val.frame["patient_id"].astype(str).to_numpy(), names, replicates=200)
    path = tmp_path_factory.mktemp("shuffled") / "checker.safetensors"
    save_classifier(net, path, names, 64, grading=grading)
    return path


def _plan(phantom_dataset, tmp_path):
    from typer.testing import CliRunner

    from cxr_audit.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(open("coverage_specs/phantom.yaml").read() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    result = CliRunner().invoke(app, ["plan", "--data", str(phantom_dataset / "labels.csv"), "--format", "chexpert",
                                      "--spec", str(spec), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    return PlanDocument.model_validate(json.loads(RunDir(tmp_path / "run").plan.read_text()))


@pytest.mark.parametrize("accept", [False, True])
def test_a_checker_trained_on_shuffled_labels_makes_every_edit_ungradable(shuffled_checker, phantom_dataset,
                                                                          tiny_generator, tmp_path, accept):
    checker = load_model(shuffled_checker)
    grading = checker.card.grading
    assert not any(entry["gradable"] for entry in grading.values()), grading
    plan = _plan(phantom_dataset, tmp_path)
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    options = SynthesisOptions(settings=EditSettings(steps=4, strength=0.5), progress=False, batch_size=4,
                               grading=grading, accept_ungradable=accept)
    layout = SynthesisLayout(tmp_path / "synthetic")
    summary = synthesize_into(layout, plan, manifest, load_backend(tiny_generator), checker, options)
    records = [json.loads(p.read_text()) for p in sorted(layout.records.glob("*.json"))]
    assert records and all(r["qc"]["ungradable"] for r in records)
    assert summary.ungradable == len(records) and summary.accept_ungradable == accept
    assert summary.checker_grading == grading
    ungradable_reason = [r for r in records if any(x.startswith("ungradable") for x in r["qc"]["reasons"])]
    assert len(ungradable_reason) == (0 if accept else len(records))
    # the checker's word is not taken on what it cannot see: no alignment is recorded
    assert all(r["qc"]["alignment"] is None for r in records)
