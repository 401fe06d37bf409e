"""The hostile-input suite: every case of fuzz_cases.py exits 2, prints no traceback, names the culprit, and
leaves every file that existed before it ran unchanged."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuzz_cases import CASES
from typer.testing import CliRunner

from cxr_audit.cli import app
from cxr_audit.rundir import RunDir
from cxr_audit.stages.pipeline import open_run, run_audit

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Base:
    data: Path
    spec: Path
    model: Path
    card: Path
    run: Path


@pytest.fixture(scope="session")
def base(phantom_dataset, phantom_model, tiny_generator, tmp_path_factory) -> Base:
    """Valid inputs, and a finished audit run (tiny budgets) that the document cases copy and damage."""
    folder = tmp_path_factory.mktemp("fuzz-base")
    spec = folder / "spec.yaml"
    spec.write_text((REPO / "coverage_specs" / "phantom.yaml").read_text() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    run = folder / "run"
    options = {"models": [phantom_model], "data": phantom_dataset / "labels.csv", "spec": spec,
               "generator": tiny_generator, "edit": {"steps": 3, "strength": 0.5}, "bootstrap": 100,
               "mc_samples": 0, "arms": ["baseline", "real_only"],
               "finetune": {"steps": 2, "batch_size": 8, "eval_every": 2, "checkpoint_every": 2}}
    run_audit(open_run(RunDir(run), options, False, progress=False, log=lambda message: None, workers=0))
    return Base(phantom_dataset / "labels.csv", spec, phantom_model,
                phantom_model.with_name(phantom_model.name + ".card.yaml"), run)


def _hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders if folder.exists()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_suite_is_large_and_covers_every_command():
    counts = Counter(case.kind for case in CASES)
    print("fuzz cases per class:", dict(counts), "total", len(CASES))
    assert len(CASES) >= 150
    assert len({case.id for case in CASES}) == len(CASES)
    commands = {name for case in CASES for name in ("coverage", "plan", "evaluate", "synthesize", "gate", "compare",
                                                     "report", "audit", "finetune", "train-generator", "phantom",
                                                     "segment") if case.name.startswith(name) or f"{name}:" in case.id}
    assert len(commands) >= 10, commands


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_is_refused_cleanly(case, base, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_AUDIT_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "case"
    folder.mkdir()
    args, culprit = case.build(folder, base)
    before = _hashes(folder, base.run, base.data.parent)
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{case.id}: raised {type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == 2, f"{case.id}: exit {result.exit_code}\n{output}"
    assert "Traceback" not in output, output
    flat = " ".join(output.split())
    assert " ".join(str(culprit).split()) in flat, f"{case.id}: {culprit!r} not named in:\n{output}"
    after = _hashes(folder, base.run, base.data.parent)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"{case.id} changed or removed {changed[:3]}"


def test_a_damaged_prediction_cache_is_scored_again_with_a_note(base, tmp_path, monkeypatch):
    """The prediction cache is only a cache: a torn write, a foreign file or arrays of the wrong shape in it are
    set aside with a note, the images are scored again, and the result is the one an undamaged cache gives."""
    import io
    import json

    import numpy as np

    monkeypatch.setenv("CXR_AUDIT_CACHE", str(tmp_path / "cache"))
    args = ["evaluate", "--data", base.data, "--spec", base.spec, "--model", base.model, "--bootstrap", 100,
            "--mc-samples", 0, "--workers", 0]

    def evaluate(out: str) -> dict:
        result = CliRunner().invoke(app, [str(a) for a in args + ["--out", tmp_path / out]])
        assert result.exit_code == 0, result.output
        return {"output": result.output,
                "metrics": json.loads(RunDir(tmp_path / out).evaluation("baseline").metrics.read_text())["concepts"]}

    first = evaluate("first")
    (cache,) = (tmp_path / "cache" / "predictions").glob("*.npz")
    wrong_shape = io.BytesIO()
    np.savez(wrong_shape, image_sha256=np.array(["a", "b"]), probabilities=np.zeros((2, 3)))
    for damage, content in (("truncated", cache.read_bytes()[:100]), ("not an npz", b"garbage"),
                            ("wrong shape", wrong_shape.getvalue())):
        cache.write_bytes(content)
        again = evaluate(damage)
        assert "prediction cache" in again["output"] and "scored again" in again["output"], damage
        assert again["metrics"] == first["metrics"], damage
        assert np.load(cache)["probabilities"].shape[0] > 2, damage  # the cache was written anew


def test_probe_on_a_run_whose_probe_was_removed_makes_it_again(base, tmp_path, monkeypatch):
    """A user deletes RUN/probe and its stage record to redo the probe: the command makes it again (the
    stages after it are judged when their turn comes), with the same result, never a traceback."""
    import shutil

    monkeypatch.setenv("CXR_AUDIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(base.run, run)
    original = RunDir(run).probe.read_bytes()
    shutil.rmtree(RunDir(run).probe.parent)
    RunDir(run).stage_record("probe").unlink()
    result = CliRunner().invoke(app, ["probe", "--run", str(run)])
    assert result.exit_code == 0, result.output
    assert RunDir(run).probe.read_bytes() == original


def _evaluate_predictions(tmp_path, labels: str, predictions: str, spec: str) -> tuple[object, dict]:
    for name, text in (("labels.csv", labels), ("predictions.csv", predictions), ("spec.yaml", spec)):
        (tmp_path / name).write_text(text)
    result = CliRunner().invoke(app, [str(a) for a in (
        "evaluate", "--data", tmp_path / "labels.csv", "--predictions", tmp_path / "predictions.csv", "--spec",
        tmp_path / "spec.yaml", "--split", "all", "--out", tmp_path / "run", "--bootstrap", 100)])
    assert result.exit_code == 0, result.output
    import json

    return result, json.loads(RunDir(tmp_path / "run").evaluation("baseline").metrics.read_text())


def test_a_concept_with_one_class_has_no_ranking_metric_and_a_gate_cannot_pass_on_it(tmp_path):
    """Every test image positive: AUPRC would read a perfect 1.000 [1.000, 1.000]. Ranking needs both classes,
    so AUPRC and AUROC are not estimable, and a min_metric rule on them fails (never passes)."""
    rows = "".join(f"i{k}.png,p{k},PA,1,{k % 2}\n" for k in range(30))
    scores = "".join(f"i{k}.png,{0.2 + 0.02 * k:.2f},{0.1 + 0.02 * k:.2f}\n" for k in range(30))
    _, metrics = _evaluate_predictions(tmp_path, "path,patient_id,view,Cardiomegaly,Pleural Effusion\n" + rows,
                                       "path,prob_Cardiomegaly,prob_Effusion\n" + scores,
                                       "version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells: []\n")
    every_positive = metrics["concepts"]["Cardiomegaly"]
    assert every_positive["positives"] == every_positive["n"] == 30
    assert every_positive["auprc"]["value"] is None and every_positive["auroc"]["value"] is None
    assert metrics["concepts"]["Pleural Effusion"]["auprc"]["value"] is not None  # both classes: estimable
    assert every_positive["ece"]["value"] is not None  # calibration is still defined on one class


def test_spec_concepts_the_model_does_not_output_are_noted_with_their_cells(tmp_path):
    labels = "path,patient_id,view,Cardiomegaly,Pleural Effusion\n" + "".join(
        f"i{k}.png,p{k},PA,{k % 2},{k % 3 == 0:d}\n" for k in range(30))
    scores = "path,prob_Cardiomegaly\n" + "".join(f"i{k}.png,{0.3 + 0.01 * k:.2f}\n" for k in range(30))
    spec = "version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n  - {id: HF, all_of: [Cardiomegaly, Effusion], min_count: 5}\n"
    result, metrics = _evaluate_predictions(tmp_path, labels, scores, spec)
    note = next(n for n in metrics["notes"] if n.startswith("spec concepts the model does not output"))
    assert "Pleural Effusion" in note and "HF" in note
    assert "does not output" in " ".join(result.output.split())
    assert not metrics["cells"]["HF"]["evaluated"]


def test_a_cell_whose_subgroup_has_no_test_image_is_not_evaluated_and_says_why(tmp_path):
    """Labels without sex or age (as labels made from report text often are) and a cell for women 60-80: no
    test image is in its subgroup, so the cell is not evaluated (with the reason), never a crash."""
    labels = "path,patient_id,view,Cardiomegaly,Pleural Effusion\n" + "".join(
        f"i{k}.png,p{k},PA,{k % 2},{k % 3 == 0:d}\n" for k in range(30))
    scores = "path,prob_Cardiomegaly,prob_Effusion\n" + "".join(
        f"i{k}.png,{0.3 + 0.01 * k:.2f},{0.2 + 0.01 * k:.2f}\n" for k in range(30))
    spec = ("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n  - {id: HF-F, all_of: [Cardiomegaly, "
            "Effusion], min_count: 5, subgroup: {sex: F, age: [60, 80]}}\n")
    _, metrics = _evaluate_predictions(tmp_path, labels, scores, spec)
    cell = metrics["cells"]["HF-F"]
    assert not cell["evaluated"] and "no test image in the cell's subgroup" in cell["reason"]
