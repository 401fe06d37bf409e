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
    spec.write_text((REPO / "coverage_specs" / "phantom.yaml").read_text() + "synthesis: {budget_per_cell: 2}\n")
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
