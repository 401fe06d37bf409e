"""Fine-tuning and inference on two CPU processes under torchrun (gloo), as on several GPUs or nodes: the
results must be those of one process."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cxr_audit.errors import UserInputError

SETUP = textwrap.dedent("""
    import json
    import os
    import sys
    from pathlib import Path
    import numpy as np
    import torch
    from cxr_audit.classifier.small_cnn import SmallCXRNet, save_classifier

    def setup(folder: Path):
        '''A small CNN (BatchNorm and dropout: what makes data-parallel training differ) and random images.'''
        model = folder / "model.safetensors"
        if not model.exists():
            torch.manual_seed(0)
            save_classifier(SmallCXRNet(2, width=4), model, ["Cardiomegaly", "Pleural Effusion"], 32)
        rng = np.random.default_rng(0)
        images = rng.random((40, 1, 32, 32)).astype(np.float32)
        labels = (rng.random((40, 2)) < 0.3).astype(np.float32)
        labels[::7, 1] = np.nan  # unknown labels: the loss's normaliser must be the global batch's
        return model, images, labels
""")

FINETUNE = SETUP + textwrap.dedent("""
    from cxr_audit.classifier.finetune import Checkpoints, FinetuneConfig, TrainingImages
    from cxr_audit.classifier.loading import load_model
    from cxr_audit.rundir import FinetuneLayout
    from cxr_audit.stages.finetune import file_checkpoints, finetune_into

    folder, micro_batches = Path(sys.argv[1]), int(sys.argv[2])
    killed_after = int(sys.argv[3]) if len(sys.argv) > 3 else None
    model_path, images, labels = setup(folder.parent)
    train = TrainingImages.real(images[:32], labels[:32])
    validation = TrainingImages.real(images[32:], labels[32:])
    config = FinetuneConfig(steps=6, batch_size=8, lr=1e-2, eval_every=3, checkpoint_every=2, patience=10,
                            micro_batches=micro_batches)
    layout = FinetuneLayout(folder)
    kept = file_checkpoints(layout.checkpoint)

    def save(state):  # the main process dies right after the checkpoint of step `killed_after`
        kept.save(state)
        if killed_after is not None and json.loads(state["state"])["step"] >= killed_after:
            os._exit(3)

    finetune_into(layout, load_model(model_path), train, validation, config, "real_only", {"x": "1"},
                  progress=False, checkpoints=Checkpoints(load=kept.load, save=save))
""")


def _launch(script_text: str, folder, *args, processes: int = 2, killed: bool = False) -> None:
    script = folder / "script.py"
    script.write_text(script_text)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    result = subprocess.run([sys.executable, *launcher, str(script), *map(str, args)], check=False, capture_output=True,
                            text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if killed:  # the main process died on purpose (exit 3); the launcher ends the others
        assert result.returncode != 0 and "exitcode  : 3" in result.stderr, result.stderr[-12000:]
        return
    assert result.returncode == 0, result.stderr[-12000:]


def _candidate_weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "candidate.safetensors")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """The same fine-tune on one process (two micro-batches per step) and on two processes."""
    root = tmp_path_factory.mktemp("distributed")
    _launch(FINETUNE, root, root / "one", 2, processes=1)
    _launch(FINETUNE, root, root / "two", 1, processes=2)
    return root


@pytest.mark.slow  # two torchrun launches (about 14 s); CI runs the slow suite too
def test_two_processes_fine_tune_to_the_weights_of_one(finetuned):
    import json

    one, two = _candidate_weights(finetuned / "one"), _candidate_weights(finetuned / "two")
    base = _candidate_weights_of_base(finetuned)
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name].float(), two[name].float(), atol=1e-5, rtol=1e-4), name
    # the BatchNorm running averages are merged as one process updates them, and training moved the weights
    assert torch.equal(one["features.0.1.num_batches_tracked"], two["features.0.1.num_batches_tracked"])
    assert not torch.allclose(one["features.0.1.running_mean"], base["features.0.1.running_mean"])
    assert not torch.allclose(one["head.weight"], base["head.weight"])
    record_one, record_two = (json.loads((finetuned / n / "finetune.json").read_text()) for n in ("one", "two"))
    assert record_two["processes"] == 2 and record_two["micro_batches"] == 2 and record_one["processes"] == 1
    for a, b in zip(record_one["history"], record_two["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["val_mean_auprc"] == pytest.approx(b["val_mean_auprc"], abs=1e-6)


def _candidate_weights_of_base(root) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(root / "model.safetensors")


@pytest.mark.slow  # several torchrun launches
def test_a_killed_two_process_fine_tune_resumes_exactly_and_only_with_two(finetuned):
    root = finetuned
    resumed = root / "resumed"
    _launch(FINETUNE, root, resumed, 1, 2, processes=2, killed=True)  # killed after 2 of 6 steps, checkpoint left
    assert (resumed / "checkpoint.pt").exists() and not (resumed / "candidate.safetensors").exists()
    with pytest.raises(UserInputError, match="number of processes"):  # one process, one micro-batch
        _finetune_in_this_process(root, resumed)
    _launch(FINETUNE, root, resumed, 1, processes=2)
    whole, again = _candidate_weights(root / "two"), _candidate_weights(resumed)
    assert all(torch.equal(whole[k], again[k]) for k in whole)


def _finetune_in_this_process(root, folder) -> None:
    """The launched script's fine-tune, run by this (one) process with one micro-batch."""
    from cxr_audit.classifier.finetune import FinetuneConfig, TrainingImages
    from cxr_audit.classifier.loading import load_model
    from cxr_audit.rundir import FinetuneLayout
    from cxr_audit.stages.finetune import finetune_into

    namespace: dict = {}
    exec(SETUP, namespace)  # the same model and images as the launched processes
    model_path, images, labels = namespace["setup"](root)
    config = FinetuneConfig(steps=6, batch_size=8, lr=1e-2, eval_every=3, checkpoint_every=2, patience=10,
                            micro_batches=1)
    finetune_into(FinetuneLayout(folder), load_model(model_path), TrainingImages.real(images[:32], labels[:32]),
                  TrainingImages.real(images[32:], labels[32:]), config, "real_only", {"x": "1"}, progress=False)


def test_micro_batches_must_split_the_batch_among_the_processes():
    from cxr_audit.classifier.micro_batches import effective_micro_batches
    from cxr_audit.errors import UserInputError

    assert effective_micro_batches(1, 32, 1) == 1
    assert effective_micro_batches(1, 32, 4) == 4      # at least one per process
    assert effective_micro_batches(8, 32, 4) == 8
    with pytest.raises(UserInputError, match="micro-batches"):
        effective_micro_batches(1, 30, 4)
    with pytest.raises(UserInputError, match="multiple of the 4"):
        effective_micro_batches(6, 48, 4)


def test_a_micro_batch_loss_summed_and_divided_by_the_batch_s_known_labels_is_the_mean_loss():
    """What makes micro-batches add up to the global batch: each contributes its summed loss over the known
    labels, divided by the known labels of the whole batch (here, one micro-batch per half)."""
    from cxr_audit.classifier.small_cnn import masked_bce

    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(8, 3)), dtype=torch.float32)
    targets = torch.tensor((rng.random((8, 3)) < 0.5).astype(np.float32))
    targets[0, 1] = targets[5, 2] = float("nan")
    known = int((~torch.isnan(targets)).sum())
    halves = sum(masked_bce(logits[part], targets[part], reduction="sum") for part in (slice(0, 4), slice(4, 8)))
    assert known == 22 and (halves / known).item() == pytest.approx(masked_bce(logits, targets).item(), rel=1e-6)


INFERENCE = SETUP + textwrap.dedent("""
    from cxr_audit import distributed
    from cxr_audit.classifier.inference import predict, stochastic_predictions
    from cxr_audit.classifier.loading import load_model

    out, cache = Path(sys.argv[1]), (None if sys.argv[2] == "-" else Path(sys.argv[2]))
    images = sorted(Path(sys.argv[3]).glob("*.png"))[:37]  # 5 batches of 8, the last one short
    model = load_model(setup(out.parent)[0])
    probabilities = predict(model, images, batch_size=8, workers=1, cache_dir=cache, progress=False)
    passes = stochastic_predictions(model, images, samples=3, batch_size=8, workers=1, seed=5, progress=False)
    if distributed.is_main():
        np.save(out.with_suffix(".predict.npy"), probabilities)
        np.save(out.with_suffix(".mc.npy"), passes.samples)
""")


@pytest.mark.slow  # several torchrun launches
def test_sharded_inference_is_bit_identical_to_one_process(shared_data, tmp_path):
    images = shared_data / "nih621" / "images"
    _launch(INFERENCE, tmp_path, tmp_path / "one", "-", images, processes=1)
    # two processes, the prediction cache on: written once by the main process
    _launch(INFERENCE, tmp_path, tmp_path / "two", tmp_path / "cache", images, processes=2)
    for kind in ("predict", "mc"):
        one, two = np.load(tmp_path / f"one.{kind}.npy"), np.load(tmp_path / f"two.{kind}.npy")
        assert one.shape == two.shape and np.array_equal(one, two), kind
    assert np.load(tmp_path / "one.mc.npy").shape == (3, 37, 2)
    assert len(list((tmp_path / "cache" / "predictions").glob("*.npz"))) == 1
    # then every image comes from it
    _launch(INFERENCE, tmp_path, tmp_path / "again", tmp_path / "cache", images, processes=2)
    assert np.array_equal(np.load(tmp_path / "again.predict.npy"), np.load(tmp_path / "one.predict.npy"))


@pytest.mark.slow  # a torchrun launch of the evaluate command (about 17 s)
def test_the_evaluate_command_on_two_processes_writes_what_one_process_writes(phantom_dataset, phantom_model,
                                                                              tmp_path):
    import json

    from cxr_audit.rundir import RunDir

    def evaluate(out, processes: int) -> dict:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        command = [sys.executable, *(launcher if processes > 1 else []), "-m", "cxr_audit.cli", "evaluate",
                   "--out", str(out), "--data", str(phantom_dataset / "labels.csv"), "--model", str(phantom_model),
                   "--spec", "coverage_specs/phantom.yaml", "--bootstrap", "100", "--mc-samples", "3", "--no-cache",
                   "--workers", "0"]
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                                env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "CXR_AUDIT_CACHE": str(tmp_path)})
        assert result.returncode == 0, result.stderr[-8000:]
        return json.loads(RunDir(out).evaluation("baseline").metrics.read_text())

    one, two = evaluate(tmp_path / "one", 1), evaluate(tmp_path / "two", 2)
    assert one == two
    assert np.array_equal(*(np.load(RunDir(tmp_path / run).evaluation("baseline").predictions)["probabilities"]
                            for run in ("one", "two")))
    # the main process alone recorded the stage
    record = json.loads(RunDir(tmp_path / "two").stage_record("evaluate_baseline").read_text())
    assert record["status"] == "done"


def test_micro_batches_that_do_not_split_the_batch_are_refused_before_any_work(phantom_dataset, phantom_model,
                                                                               tmp_path, run_cli):
    result = run_cli("audit", "--out", tmp_path / "run", "--model", phantom_model, "--data",
                     phantom_dataset / "labels.csv", "--spec", "coverage_specs/phantom.yaml", "--micro-batches", "3")
    assert result.exit_code == 2 and "micro-batches" in result.stderr and "(32)" in result.stderr
    assert not (tmp_path / "run").exists()
