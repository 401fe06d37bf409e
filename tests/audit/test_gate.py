"""The CI gate: every rule type passes and fails where it should, bad input exits 2, JUnit XML validates.

The audits compared here are built from real metric computations (evaluate + patient bootstrap) on
simulated scores, so the paired bootstrap is exercised exactly as the gate uses it on real runs.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import minimal_audit_document

from cxr_audit.evaluation.scoring import EvaluationInput, evaluate, save_replicates
from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import RunDir
from cxr_audit.spec import Cell

CONCEPTS = ["Cardiomegaly", "Pleural Effusion"]
CELL = Cell(id="HF", all_of=CONCEPTS, min_count=10)
JUNIT_XSD = Path(__file__).parent / "junit.xsd"


def _labels_and_scores(seed: int = 0, n: int = 400):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
    scores = np.clip(0.25 + 0.5 * labels + rng.normal(0, 0.12, labels.shape), 0.001, 0.999)
    return labels, scores


def _write_audit(folder: Path, scores: np.ndarray, labels: np.ndarray, test_set: str = "T" * 64,
                 coverage_count: int = 12, synthetic: int = 5, rejected: int = 2) -> Path:
    patients = np.array([f"p{i // 2}" for i in range(len(labels))])
    evaluation = evaluate(EvaluationInput(concepts=CONCEPTS, probabilities=scores, labels=labels, patient_ids=patients,
                                          thresholds={c: (0.5, "default") for c in CONCEPTS}, cells=[CELL]),
                          n_replicates=200, seed=0)
    run = RunDir(folder)
    save_replicates(run.evaluation("baseline").replicates, evaluation.replicates)
    document = minimal_audit_document(evaluation.scores, test_set, coverage_count, synthetic, rejected,
                                      sha256_file(run.evaluation("baseline").replicates), f"{folder.name}.pt")
    run.audit.write_text(json.dumps(document))
    return run.audit


@pytest.fixture(scope="module")
def audit_folders(tmp_path_factory):
    """The audits, evaluated once for the module (evaluation is the slow part)."""
    tmp_path = tmp_path_factory.mktemp("gate-audits")
    labels, scores = _labels_and_scores()
    made = {}
    positives = np.flatnonzero(labels[:, 0] == 1)
    variants = {"old": scores}
    small = scores.copy()
    small[positives[:3], 0] = 0.2          # three missed positives: a small regression
    variants["small_regression"] = small
    large = scores.copy()
    large[positives[:60], 0] = 0.2         # half the positives missed: a large one
    variants["large_regression"] = large
    variants["uncertain"] = 0.5 + 0.2 * (scores - 0.5)  # same ranking, pushed towards 0.5
    for name, values in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        made[name] = _write_audit(folder, values, labels)
    other = tmp_path / "other_test_set"
    other.mkdir()
    made["other_test_set"] = _write_audit(other, scores, labels, test_set="U" * 64)
    return made


@pytest.fixture()
def audits(audit_folders, tmp_path):
    """A fresh copy of the audits for each test (tests write gate results beside them, or damage them)."""
    import shutil

    copies = {}
    for name, path in audit_folders.items():
        shutil.copytree(path.parent, tmp_path / name)
        copies[name] = tmp_path / name / path.name
    return copies


def _policy(tmp_path: Path, rules: list[dict]) -> Path:
    import yaml

    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "rules": rules}))
    return path


def _gate(run_cli, candidate, policy, baseline=None):
    args = ["gate", "--candidate", candidate, "--policy", policy]
    if baseline:
        args += ["--baseline", baseline]
    return run_cli(*args)


@pytest.mark.parametrize("rule,passes", [
    ({"type": "min_metric", "metric": "auroc", "min": 0.8}, True),
    ({"type": "min_metric", "metric": "auroc", "min": 0.999}, False),
    ({"type": "min_metric", "metric": "auprc", "concepts": ["Cardiomegaly"], "min": 0.8}, True),
    ({"type": "max_ece", "max": 0.5}, True),
    ({"type": "max_ece", "max": 0.001}, False),
    ({"type": "max_smece", "max": 0.5}, True),
    ({"type": "max_smece", "max": 0.5, "use_upper_bound": True}, True),
    ({"type": "max_smece", "max": 0.001}, False),
    ({"type": "calibration_slope"}, False),            # nearly separated scores: the slope is not estimable
    ({"type": "cell_metric", "cells": ["HF"], "metric": "auprc", "min": 0.3}, True),
    ({"type": "cell_metric", "cells": ["HF"], "metric": "auprc", "min": 0.999}, False),
    ({"type": "coverage", "cells": ["HF"]}, False),                               # 12 real < 15
    ({"type": "coverage", "cells": ["HF"], "count_synthetic": True}, True),       # 12 + 5 synthetic >= 15
    ({"type": "coverage", "min_images": 10}, True),
    ({"type": "qc", "max_rejected_share": 0.5}, True),                            # 2 of 10 rejected
    ({"type": "qc", "max_rejected_share": 0.1}, False),
])
def test_single_audit_rules(audits, tmp_path, run_cli, rule, passes):
    result = _gate(run_cli, audits["old"], _policy(tmp_path, [rule]))
    assert result.exit_code == (0 if passes else 1), result.output
    xml = (audits["old"].parent / "gate-junit.xml").read_text()
    assert ("<failure" in xml) == (not passes)
    summary = (audits["old"].parent / "gate-summary.md").read_text()
    assert ("PASSED" in summary) == passes


def _with_realism(path: Path, modes: dict) -> Path:
    document = json.loads(path.read_text())
    document["realism"] = {"settings": {}, "modes": modes}
    path.write_text(json.dumps(document))
    return path


def _measured(value, low, high):
    return {"mode": "cars", "n_real": 40, "n_synthetic": 20,
            "discriminator": {"auroc": {"value": value, "ci": [low, high]}, "by_operation": {}, "by_concept": {},
                              "folds": 5, "most_confident": []}}


@pytest.mark.parametrize("modes,rule,passes,says", [
    ({"cars": _measured(0.55, 0.45, 0.66)}, {"max": 0.7}, True, "upper bound 0.660"),
    ({"cars": _measured(0.62, 0.52, 0.74)}, {"max": 0.7}, False, "upper bound 0.740"),   # the point passes, the bound not
    ({"cars": _measured(0.99, 0.97, 1.0)}, {"max": 0.9}, False, "AUROC 0.990"),
    ({"cars": {"mode": "cars", "n_real": 4, "n_synthetic": 1, "skipped": "1 accepted edit"}}, {"max": 0.9}, False,
     "not measured (1 accepted edit)"),
    ({"cars": _measured(0.5, 0.4, 0.6)}, {"max": 0.9, "modes": ["cars", "unconstrained"]}, False,
     "no realism measurement"),
    (None, {"max": 0.9}, False, "no realism measurement"),
])
def test_realism_rule_is_judged_on_the_upper_bound(audits, tmp_path, run_cli, modes, rule, passes, says):
    candidate = _with_realism(audits["old"], modes) if modes is not None else audits["old"]
    result = _gate(run_cli, candidate, _policy(tmp_path, [{"type": "max_realism_auroc", **rule}]))
    assert result.exit_code == (0 if passes else 1), result.output
    assert says in (candidate.parent / "gate-junit.xml").read_text()


def test_realism_rule_below_chance_is_refused(audits, tmp_path, run_cli):
    result = _gate(run_cli, audits["old"], _policy(tmp_path, [{"type": "max_realism_auroc", "max": 0.3}]))
    assert result.exit_code == 2 and "max" in result.output


@pytest.mark.parametrize("candidate,rule,passes", [
    ("old", {"type": "non_inferiority", "metric": "auprc", "margin": 0.02}, True),
    ("small_regression", {"type": "non_inferiority", "metric": "auprc", "concepts": ["Cardiomegaly"], "margin": 0.1}, True),
    ("large_regression", {"type": "non_inferiority", "metric": "auprc", "concepts": ["Cardiomegaly"], "margin": 0.1}, False),
    ("large_regression", {"type": "non_inferiority", "metric": "auroc", "concepts": [], "cells": ["HF"], "margin": 0.02}, False),
    ("small_regression", {"type": "max_uncertainty_rise", "max_rise": 0.05}, True),
    ("uncertain", {"type": "max_uncertainty_rise", "max_rise": 0.05}, False),
])
def test_rules_against_a_baseline(audits, tmp_path, run_cli, candidate, rule, passes):
    result = _gate(run_cli, audits[candidate], _policy(tmp_path, [rule]), audits["old"])
    assert result.exit_code == (0 if passes else 1), result.output


def test_the_small_regression_is_a_real_regression(audits):
    """The 'inside the margin' case must really be worse, or the test above would prove nothing."""
    old = json.loads(audits["old"].read_text())["arms"]["baseline"]["metrics"]["concepts"]["Cardiomegaly"]["auprc"]
    new = json.loads(audits["small_regression"].read_text())["arms"]["baseline"]["metrics"]["concepts"]["Cardiomegaly"]["auprc"]
    assert 0 < old["value"] - new["value"] < 0.1


def test_baseline_rules_need_a_baseline_or_an_explicit_first_release(audits, tmp_path, run_cli):
    only_baseline = _policy(tmp_path, [{"type": "non_inferiority", "margin": 0.02}])
    result = _gate(run_cli, audits["old"], only_baseline)  # a gate that would judge nothing never passes
    assert result.exit_code == 2 and "--baseline" in result.output
    assert not (audits["old"].parent / "gate-junit.xml").exists()
    mixed = _policy(tmp_path, [{"type": "non_inferiority", "margin": 0.02}, {"type": "min_metric", "min": 0.5}])
    assert _gate(run_cli, audits["old"], mixed).exit_code == 2
    result = run_cli("gate", "--candidate", audits["old"], "--policy", mixed, "--allow-missing-baseline")
    assert result.exit_code == 0, result.output
    assert "<skipped" in (audits["old"].parent / "gate-junit.xml").read_text()


def test_different_test_sets_are_refused(audits, tmp_path, run_cli):
    result = _gate(run_cli, audits["other_test_set"], _policy(tmp_path, [{"type": "non_inferiority", "margin": 0.02}]),
                   audits["old"])
    assert result.exit_code == 2
    assert "different test sets" in result.output


@pytest.mark.parametrize("text,message", [
    ("version: 1\nrules:\n  - type: min_metric\n    metric: auroc\n    min: 0.8\n  - type: max_eec\n    max: 0.1\n",
     "line 6"),
    ("version: 1\nrules:\n  - type: min_metric\n    min: 1.5\n", "min"),
    ("version: 1\nrules: []\n", "rules"),
    ("rules: [\n", "not valid YAML"),
])
def test_bad_policy_exits_2_and_names_the_place(audits, tmp_path, run_cli, text, message):
    policy = tmp_path / "bad.yaml"
    policy.write_text(text)
    result = _gate(run_cli, audits["old"], policy)
    assert result.exit_code == 2
    assert message in result.output
    assert not (audits["old"].parent / "gate-junit.xml").exists()


def test_unknown_concept_in_a_rule_exits_2(audits, tmp_path, run_cli):
    result = _gate(run_cli, audits["old"], _policy(tmp_path, [{"type": "min_metric", "concepts": ["Cardiomegally"],
                                                               "min": 0.5}]))
    assert result.exit_code == 2 and "Cardiomegally" in result.output


def test_tampered_replicates_are_refused(audits, tmp_path, run_cli):
    replicates = RunDir(audits["old"].parent).evaluation("baseline").replicates
    replicates.write_bytes(replicates.read_bytes() + b"x")
    result = _gate(run_cli, audits["small_regression"], _policy(tmp_path, [{"type": "non_inferiority", "margin": 0.1}]),
                   audits["old"])
    assert result.exit_code == 2 and "SHA-256" in result.output


def test_the_calibration_slope_rule_passes_a_calibrated_model_and_fails_an_overconfident_one(tmp_path, run_cli):
    rng = np.random.default_rng(5)
    scores = rng.uniform(0.05, 0.95, (600, 2))
    labels = (rng.uniform(size=scores.shape) < scores).astype(np.float32)
    calibrated = _write_audit(tmp_path / "calibrated", scores, labels)
    contains_one = _policy(tmp_path, [{"type": "calibration_slope"}, {"type": "max_smece", "max": 0.1,
                                                                      "use_upper_bound": True}])
    assert _gate(run_cli, calibrated, contains_one).exit_code == 0
    overconfident = 1 / (1 + np.exp(-3 * np.log(scores / (1 - scores))))
    extreme = _write_audit(tmp_path / "extreme", overconfident, labels)
    result = _gate(run_cli, extreme, _policy(tmp_path, [{"type": "calibration_slope"}]))
    assert result.exit_code == 1 and "calibration slope 0.3" in result.output
    within = _policy(tmp_path, [{"type": "calibration_slope", "min": 0.2, "max": 0.5}])
    assert _gate(run_cli, extreme, within).exit_code == 0


def test_junit_xml_validates_against_the_common_schema(audits, tmp_path, run_cli):
    import xmlschema

    rules = [{"type": "min_metric", "min": 0.5, "id": "auroc-floor"}, {"type": "max_ece", "max": 0.001},
             {"type": "non_inferiority", "margin": 0.1, "concepts": ["Cardiomegaly"]},
             {"type": "max_uncertainty_rise", "max_rise": 0.05}]
    result = _gate(run_cli, audits["large_regression"], _policy(tmp_path, rules), audits["old"])
    assert result.exit_code == 1
    path = audits["large_regression"].parent / "gate-junit.xml"
    xmlschema.XMLSchema(JUNIT_XSD).validate(path)
    import xml.etree.ElementTree as ET

    suite = ET.parse(path).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(rules) == int(suite.get("tests"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert int(suite.get("failures")) == len(failed) == 2
    assert all(c.find("failure").get("message") for c in failed)
    assert cases[0].get("name") == "auroc-floor"


def test_compare_prints_paired_differences(audits, run_cli):
    result = run_cli("compare", audits["old"], audits["large_regression"])
    assert result.exit_code == 0, result.output
    assert "Cardiomegaly" in result.output and "auprc" in result.output and "[" in result.output


def test_policy_arm_must_exist(audits, tmp_path, run_cli):
    policy = tmp_path / "arm.yaml"
    policy.write_text("version: 1\narm: cars\nrules:\n  - {type: max_ece, max: 0.1}\n")
    result = _gate(run_cli, audits["old"], policy)
    assert result.exit_code == 2 and "no arm 'cars'" in result.output


def test_policy_example_in_docs_is_valid():
    from cxr_audit.audit.policy import load_policy

    policy = load_policy(Path("docs/gates.example.yaml"))
    assert {rule.type for rule in policy.rules} >= {"min_metric", "max_ece", "non_inferiority", "coverage", "qc",
                                             "max_realism_auroc"}



@pytest.mark.parametrize("command", ["gate", "compare", "report"])
@pytest.mark.parametrize("damage,named", [
    (lambda d: d["arms"]["baseline"]["metrics"].pop("concepts"), "arms.baseline.metrics.concepts"),
    (lambda d: d["test_set"].update(sha256=7), "test_set.sha256"),
    (lambda d: d.update(schema_version="1.0"), "schema_version"),
    (lambda d: d.clear(), "schema_version"),
])
def test_a_malformed_audit_json_is_bad_input_never_a_regression(audits, tmp_path, run_cli, command, damage, named):
    """CI reads exit 1 as 'the model regressed': a broken audit.json must exit 2 and name the key."""
    path = audits["old"]
    document = json.loads(path.read_text())
    damage(document)
    path.write_text(json.dumps(document))
    args = {"gate": ["gate", "--candidate", path, "--policy", _policy(tmp_path, [{"type": "min_metric", "min": 0.5}])],
            "compare": ["compare", audits["small_regression"], path],
            "report": ["report", "--run", path.parent]}[command]
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert named in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["audit", "metrics", "plan", "coverage", "probe", "synthesis"])
def test_schema_prints_each_documents_json_schema(run_cli, name):
    result = run_cli("schema", name)
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["type"] == "object" and schema["properties"]


def test_a_gate_that_judged_nothing_does_not_pass(audits, tmp_path, run_cli):
    """Subgroup rules on an audit without subgroups, not-estimable checks skipped: every rule is skipped, and a
    gate that judged nothing fails unless the policy accepts that knowingly (allow_empty)."""
    import yaml

    policy = {"version": 1, "not_estimable": "skip", "rules": [{"type": "max_subgroup_gap", "max": 0.1}]}
    path = tmp_path / "gates.yaml"
    path.write_text(yaml.safe_dump(policy))
    result = _gate(run_cli, audits["old"], path)
    assert result.exit_code == 1, result.output
    assert "judged nothing" in result.output.replace("\n", " ")
    path.write_text(yaml.safe_dump({**policy, "allow_empty": True}))
    result = _gate(run_cli, audits["old"], path)
    assert result.exit_code == 0, result.output
