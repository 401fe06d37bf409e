"""kill -9 in the middle of a stage, then run the same command again: the result equals an uninterrupted run.

The audit runs as a user runs it (a separate process, `python -m cxr_audit.cli audit`); it is killed while a
chosen stage is in progress (its record says 'running'), then started again, and its audit.json and
synthetic manifest are compared with those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr_audit.rundir import RunDir

REPO = Path(__file__).resolve().parents[2]
# Where to kill, and the stage whose record must say 'running' first; synthesis also waits for a finished edit.
POINTS = {"synthesis": "synthetic", "fine-tune": "finetune_cars", "evaluate": "evaluate_real_only",
          "report": "report"}
DIFFERS = ("created", "stage_seconds", "command_line")  # when, how long, and the --out typed


@pytest.fixture(scope="module")
def inputs(phantom_dataset, tiny_generator, phantom_checker, tmp_path_factory):
    """A deployed model saved as safetensors (its fine-tuned copies then have reproducible bytes), a spec."""
    import numpy as np

    from cxr_audit.classifier.small_cnn import save_classifier, train_small_classifier
    from cxr_audit.data import phantom
    from cxr_audit.data.readers import read_manifest

    folder = tmp_path_factory.mktemp("kill")
    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    names = list(phantom.PHANTOM_FINDINGS)
    net = train_small_classifier(train.images(64), train.frame[names].to_numpy(np.float32), epochs=1, width=4)
    save_classifier(net, folder / "model.safetensors", names, 64)
    spec = folder / "spec.yaml"
    spec.write_text((REPO / "coverage_specs" / "phantom.yaml").read_text() + "synthesis: {budget_per_cell: 6, attempts_per_edit: 1}\n")
    return {"model": folder / "model.safetensors", "data": phantom_dataset / "labels.csv", "spec": spec,
            "generator": tiny_generator, "checker": phantom_checker, "folder": folder}


def _command(inputs: dict, out: Path, report: bool) -> list[str]:
    """The audit; the PDF only where the kill is during the report (every result compared is in audit.json)."""
    return [sys.executable, "-m", "cxr_audit.cli", "audit", "--out", str(out), "--model", str(inputs["model"]),
            "--data", str(inputs["data"]), "--spec", str(inputs["spec"]), "--generator", str(inputs["generator"]),
            "--checker", str(inputs["checker"]), "--arms", "baseline,real_only,cars", "--bootstrap", "100",
            "--mc-samples", "2", "--finetune-steps", "20", "--edit-steps", "8", *([] if report else ["--no-report"])]


def _environment(inputs: dict) -> dict:
    return {**os.environ, "CXR_AUDIT_CACHE": str(inputs["folder"] / "cache"), "PYTHONHASHSEED": "0"}


def _audit(inputs: dict, out: Path, report: bool = False) -> None:
    result = subprocess.run(_command(inputs, out, report), capture_output=True, text=True, env=_environment(inputs),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _kill_during(inputs: dict, out: Path, stage: str) -> None:
    process = subprocess.Popen(_command(inputs, out, report=stage == "report"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=_environment(inputs))
    record = RunDir(out).stage_record(stage)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        running = record.exists() and json.loads(record.read_text() or "{}").get("status") == "running"
        edited = stage != "synthetic" or any(RunDir(out).synthesis("cars").records.glob("*.json"))
        if running and edited:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"the audit finished or timed out before stage {stage} could be interrupted")


def _result(out: Path) -> tuple[dict, bytes]:
    document = json.loads(RunDir(out).audit.read_text())
    for key in DIFFERS:
        document.pop(key)
    for arm in document["arms"].values():
        if arm["finetune"]:
            arm["finetune"].pop("seconds_this_call")
    return document, RunDir(out).synthesis("cars").manifest.read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    out = inputs["folder"] / "uninterrupted"
    _audit(inputs, out)
    return _result(out)


@pytest.mark.slow  # an audit killed and resumed, against an uninterrupted one (about 40 s each)
@pytest.mark.parametrize("point", ["synthesis", "fine-tune", "evaluate", "report"])
def test_killed_audit_resumes_to_the_uninterrupted_result(inputs, uninterrupted, point):
    out = inputs["folder"] / f"killed-{point}"
    _kill_during(inputs, out, POINTS[point])
    assert json.loads(RunDir(out).stage_record(POINTS[point]).read_text())["status"] == "running"
    _audit(inputs, out, report=point == "report")  # the same command again
    assert _result(out) == uninterrupted
