"""Hostile input under torchrun: a refusal on the main process reaches every process as the same clear error,
never as a half-finished exchange (a process unpacking an error message as if it were data)."""

import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.slow
def test_an_image_missing_under_two_processes_with_the_cache_on_is_named_by_both(phantom_model, tmp_path):
    from PIL import Image

    rows = ["path,patient_id,split,Cardiomegaly,Pleural Effusion"]
    (tmp_path / "images").mkdir()
    for k in range(24):
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(tmp_path / f"images/{k}.png")
        rows.append(f"images/{k}.png,p{k},test,{k % 2},{(k // 2) % 2}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "images" / "17.png").unlink()
    (tmp_path / "spec.yaml").write_text("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells: []\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "cxr_audit.cli", "evaluate", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "labels.csv"),
               "--model", str(phantom_model), "--spec", str(tmp_path / "spec.yaml"), "--bootstrap", "100",
               "--mc-samples", "0", "--workers", "0"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CXR_AUDIT_CACHE": str(tmp_path)})
    output = result.stdout + result.stderr
    assert result.returncode != 0  # the launcher turns each process's exit 2 into 1 (README, Scaling)
    # (the launcher prints its own traceback when a process fails; none comes from a process of the tool)
    assert "ValueError" not in output and 'cxr_audit/' not in output, output[-6000:]
    assert output.count("exitcode  : 2") == 2, output[-6000:]  # each process ended on the refusal (exit 2)
    assert "17.png does not exist" in output, output[-6000:]  # the main process names the image
    assert not (tmp_path / "run").exists()  # nothing made: the refused run is rolled back
