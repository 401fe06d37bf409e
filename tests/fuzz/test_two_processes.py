"""Hostile input under torchrun: a refusal on the main process reaches every process as the same clear error,
never as a half-finished exchange (a process unpacking an error message as if it were data)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

# Each process calls the inference with an image missing and the cache on, and writes what it raised (the
# launcher would otherwise stop the other process as soon as one fails, so what it raised could not be seen).
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from cxr_audit import distributed
    from cxr_audit.classifier.inference import predict
    from cxr_audit.classifier.loading import load_model

    model, folder, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    images = [folder / f"{k}.png" for k in range(24)]
    try:
        predict(load_model(model), images, batch_size=8, workers=0, cache_dir=out / "cache", progress=False)
        raised = "nothing"
    except Exception as error:
        raised = f"{type(error).__name__}: {error}"
    (out / f"rank{distributed.rank()}.txt").write_text(raised)
    import torch.distributed as dist
    if dist.is_initialized():  # a clean end of the process group (else gloo may abort at exit)
        dist.barrier()
        dist.destroy_process_group()
""")


@pytest.mark.slow
def test_an_image_missing_under_two_processes_with_the_cache_on_is_named_by_both(phantom_model, tmp_path):
    from PIL import Image

    (tmp_path / "images").mkdir()
    for k in range(24):
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(tmp_path / f"images/{k}.png")
    (tmp_path / "images" / "17.png").unlink()
    (tmp_path / "script.py").write_text(SCRIPT)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(tmp_path / "script.py"), str(phantom_model), str(tmp_path / "images"), str(tmp_path)],
                            check=False, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-6000:]
    for rank in (0, 1):
        raised = (tmp_path / f"rank{rank}.txt").read_text()
        assert raised.startswith("UserInputError: Image ") and "17.png does not exist" in raised, (rank, raised)
