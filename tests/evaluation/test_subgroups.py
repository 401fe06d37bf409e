"""Performance by subgroup: exact metrics per subgroup, gaps with paired intervals, DICOM device subgroups
(without any identifying header field), and the max_subgroup_gap gate rule."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from cxr_audit.evaluation.scoring import EvaluationInput, evaluate


def _evaluation(n=600, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 1)) < 0.3).astype(np.float32)
    sex = np.where(rng.random(n) < 0.5, "M", "F")
    noise = np.where(sex == "F", 0.35, 0.12)  # the model is much worse for women: a planted gap
    scores = np.clip(0.3 + 0.4 * labels[:, 0] + rng.normal(0, 1, n) * noise, 0.01, 0.99)[:, None]
    frame = pd.DataFrame({"sex": sex, "age": rng.integers(20, 90, n),
                          "view": np.where(rng.random(n) < 0.4, "AP", "PA")})  # view: no real difference
    evaluation = evaluate(EvaluationInput(concepts=["Edema"], probabilities=scores, labels=labels,
                                          patient_ids=np.arange(n).astype(str), thresholds={"Edema": (0.5, "t")},
                                          frame=frame), n_replicates=400)
    return evaluation, frame, scores, labels


def test_subgroup_metrics_equal_scikit_learn_and_the_planted_gap_is_found():
    evaluation, frame, scores, labels = _evaluation()
    for sex in ("F", "M"):
        rows = (frame["sex"] == sex).to_numpy()
        expected = roc_auc_score(labels[rows, 0], scores[rows, 0])
        assert evaluation.scores["subgroups"]["sex"][sex]["Edema"].auroc.value == pytest.approx(expected, abs=1e-6)
    gaps = evaluation.scores["subgroup_gaps"]["Edema"]
    sex_gap = gaps["sex"]["auroc"]
    assert (sex_gap.highest, sex_gap.lowest) == ("M", "F") and sex_gap.ci[0] > 0.05
    assert gaps["view"]["auroc"].ci[0] <= 0.0 <= gaps["view"]["auroc"].ci[1] + 1e-9 or gaps["view"]["auroc"].ci[0] < 0.05
    assert set(evaluation.scores["subgroups"]["age_band"]) <= {"18-40", "40-60", "60-80", "80-121"}


def test_dicom_device_subgroups_come_from_the_header_without_phi(phantom_model, tmp_path, run_cli):
    from cxr_audit.data.phantom.dataset import MADE_UP_NAMES, write_phantom_dataset
    from cxr_audit.rundir import RunDir

    data = tmp_path / "dicom"
    write_phantom_dataset(data, 160, size=64, seed=3, dicom=True, workers=1, progress=False)
    result = run_cli("evaluate", "--data", data / "labels.csv", "--model", phantom_model, "--split", "all",
                     "--out", tmp_path / "run", "--bootstrap", 100, "--mc-samples", 0, "--workers", 0, "--no-cache")
    assert result.exit_code == 0, result.output
    metrics = RunDir(tmp_path / "run").evaluation("baseline").metrics.read_text()
    document = json.loads(metrics)
    assert set(document["subgroups"]["model"]) == {"Phantom Imaging PX-100", "Phantom Imaging PX-200"}
    assert set(document["subgroups"]["manufacturer"]) == {"Phantom Imaging"}
    assert not any(name in metrics for name in MADE_UP_NAMES) and "MRN" not in metrics and "Phantom General" not in metrics


def test_the_gate_limits_the_subgroup_gap_on_its_upper_bound(tmp_path, run_cli):
    from conftest import minimal_audit_document

    from cxr_audit.evaluation.scoring import save_replicates
    from cxr_audit.provenance import sha256_file
    from cxr_audit.rundir import RunDir

    evaluation, *_ = _evaluation()
    scores = dict(evaluation.scores)
    scores["concepts"] = {**scores["concepts"], "Cardiomegaly": scores["concepts"]["Edema"],
                          "Pleural Effusion": scores["concepts"]["Edema"]}
    run = RunDir(tmp_path / "run")
    save_replicates(run.evaluation("baseline").replicates, evaluation.replicates)
    run.audit.write_text(json.dumps(minimal_audit_document(scores, replicates_sha256=sha256_file(
        run.evaluation("baseline").replicates))))
    policy = tmp_path / "policy.yaml"

    def gate(variables, maximum):
        policy.write_text(yaml.safe_dump({"version": 1, "rules": [
            {"type": "max_subgroup_gap", "concepts": ["Edema"], "variables": variables, "max": maximum}]}))
        return run_cli("gate", "--candidate", run.path, "--policy", policy)

    assert gate(["sex"], 0.1).exit_code == 1      # women are served worse: the gate stops it
    assert gate(["sex"], 0.9).exit_code == 0
    result = gate(["view"], 0.3)
    assert result.exit_code == 0, result.output
