"""Data-parallel generator training: two CPU processes under torchrun (gloo), as on several GPUs or nodes."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.generator.store import load_generator
from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

CONCEPTS = ["Cardiomegaly", "Pleural Effusion"]

TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

    rng = np.random.default_rng(0)
    images = rng.random((24, 1, 32, 32)).astype(np.float32)
    labels = (rng.random((24, 2)) < 0.5).astype(np.float32)
    train_generator(images, labels, ["Cardiomegaly", "Pleural Effusion"], sys.argv[1],
                    TrainConfig(steps=int(sys.argv[2]), batch_size=4, checkpoint_every=2), "datahash", (8, 16),
                    progress=False)
""")


def _torchrun(script, out, steps: int, processes: int = 2) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               str(script), str(out), str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-12000:]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    script = folder / "train.py"
    script.write_text(TRAIN_SCRIPT)
    _torchrun(script, folder / "gen", steps=4)
    return script, folder / "gen"


@pytest.mark.slow  # a torchrun launch (about 11 s)
def test_two_processes_train_one_generator_with_their_own_batches(two_process_run):
    _, out = two_process_run
    model, card = load_generator(out)
    assert card.processes == 2 and card.batch_size == 8 and card.steps == 4
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    # one batch-sampling stream per process, and they differ: the processes saw different images
    assert len(state["generators"]) == 2 and not torch.equal(state["generators"][0], state["generators"][1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow  # one more torchrun launch
def test_resume_needs_the_same_number_of_processes(two_process_run, tmp_path):
    import shutil

    script, out = two_process_run
    copy = tmp_path / "gen"
    shutil.copytree(out, copy)
    rng = np.random.default_rng(0)
    images = rng.random((24, 1, 32, 32)).astype(np.float32)
    labels = (rng.random((24, 2)) < 0.5).astype(np.float32)
    with pytest.raises(UserInputError, match="2 training process"):
        train_generator(images, labels, CONCEPTS, copy, TrainConfig(steps=6, batch_size=4), "datahash", (8, 16),
                        progress=False)
    _torchrun(script, copy, steps=6)
    assert load_generator(copy)[1].steps == 6
