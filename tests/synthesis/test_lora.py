"""LoRA fine-tuning of a pretrained text-to-image pipeline (`train-generator --base`), on a tiny random
Stable-Diffusion-layout pipeline the tests build and save with diffusers' own classes: the loss falls, a
resumed run is bit-exact, the card pins the base, synthesis through base + adapters keeps the outside of the
region exactly, and a wrong base is refused naming the file and the fix."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file

from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.backends import backend_sha256, load_backend
from cxr_audit.synthesis.editor import EditSettings
from cxr_audit.synthesis.lora_store import LORA_CARD, LORA_WEIGHTS, check_base_pipeline, read_lora_card
from cxr_audit.synthesis.lora_training import LoraTrainConfig, train_lora
from cxr_audit.synthesis.pipeline_files import text_pipeline_sha256
from cxr_audit.synthesis.text_backend import PROMPT_STYLE

NAMES = ["Cardiomegaly", "Pleural Effusion", "Edema"]


def _data(count: int = 24, size: int = 64):
    rng = np.random.default_rng(0)
    images = np.zeros((count, 1, size, size), np.float32)
    labels = rng.integers(0, 2, (count, len(NAMES))).astype(np.float32)
    yy, xx = np.mgrid[:size, :size] / size
    for image, row in zip(images, labels):  # a bright blob where Cardiomegaly is: something to learn
        image[0] = 0.3 + 0.1 * rng.random((size, size)) + 0.5 * row[0] * ((yy - 0.6) ** 2 + (xx - 0.5) ** 2 < 0.04)
    return images, labels


def _train(base, out, steps: int, **changes):
    images, labels = _data()
    config = LoraTrainConfig(steps=steps, batch_size=4, lr=2e-3, rank=4, checkpoint_every=3, **changes)
    return train_lora(images, labels, NAMES, base, out, config, "data-hash", progress=False)


@pytest.fixture(scope="module")
def lora(tiny_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    _train(tiny_pipeline, out, steps=12)
    return out


def test_training_lowers_the_loss_and_the_card_pins_the_base(lora, tiny_pipeline):
    card = read_lora_card(lora)
    assert card.eval_loss_after < card.eval_loss_before
    assert card.base_sha256 == text_pipeline_sha256(tiny_pipeline) and card.base == str(tiny_pipeline.resolve())
    assert (card.rank, card.steps, card.concepts, card.prompt_style) == (4, 12, NAMES, PROMPT_STYLE)
    assert card.image_size == 64 and card.prediction_type == "epsilon"
    weights = load_file(str(lora / LORA_WEIGHTS))
    assert weights and all(k.startswith("unet.") and (".lora.down." in k or ".lora.up." in k) for k in weights)
    assert any(np.abs(v).max() > 0 for k, v in weights.items() if ".lora.up." in k)  # up starts at zero: trained


def test_resume_is_bit_exact(tiny_pipeline, lora, tmp_path):
    """Six steps, stopped (its checkpoint kept), then resumed to twelve: the adapters of an uninterrupted run."""
    _train(tiny_pipeline, tmp_path, steps=6)
    (tmp_path / LORA_WEIGHTS).unlink()
    resumed = _train(tiny_pipeline, tmp_path, steps=12)
    assert (tmp_path / LORA_WEIGHTS).read_bytes() == (lora / LORA_WEIGHTS).read_bytes()
    assert resumed.eval_loss_before == read_lora_card(lora).eval_loss_before


def test_synthesis_through_base_and_adapters_edits_only_the_region(lora, tiny_pipeline):
    generator = load_backend(lora, device="cpu")
    base = load_backend(tiny_pipeline, device="cpu")
    assert generator.sha256 == backend_sha256(lora) != base.sha256
    assert generator.card()["lora"]["base_sha256"] == text_pipeline_sha256(tiny_pipeline)
    images, _ = _data(2)
    sources = images[:, 0]
    masks = np.zeros(sources.shape, bool)
    masks[:, 24:48, 16:48] = True
    targets = np.full((2, len(generator.concepts)), np.nan, np.float32)
    targets[:, generator.concepts.index("Cardiomegaly")] = 1
    settings = EditSettings(steps=4, strength=1.0, guidance=3.0)
    edited = generator.edit(sources, targets, masks, masks.astype(np.float32), settings, seed=1)
    assert np.array_equal(edited[~masks], sources[~masks])
    assert np.abs(edited[masks] - sources[masks]).mean() > 0.01
    unadapted = base.edit(sources, targets, masks, masks.astype(np.float32), settings, seed=1)
    assert not np.array_equal(edited, unadapted)  # the adapters take part in the edit


def test_train_generator_with_base_from_the_command_line(tiny_pipeline, phantom_dataset, run_cli, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(open("coverage_specs/phantom.yaml").read())
    out = tmp_path / "run"
    result = run_cli("train-generator", "--out", out, "--data", phantom_dataset / "labels.csv", "--format", "chexpert",
                     "--spec", spec, "--base", tiny_pipeline, "--steps", "4", "--batch-size", "2", "--lora-rank", "2")
    assert result.exit_code == 0, result.output
    card = json.loads((out / "generator" / LORA_CARD).read_text())
    assert card["rank"] == 2 and card["steps"] == 4 and card["lr"] == 1e-4 and card["training_images"] > 100
    assert "denoising loss on a fixed set" in result.output
    again = run_cli("train-generator", "--out", out, "--base", tiny_pipeline, "--size", "32")
    assert again.exit_code == 2 and "--size" in again.output


def test_a_folder_that_is_not_a_pipeline_is_refused(tmp_path, tiny_pipeline):
    with pytest.raises(UserInputError, match="not a folder"):
        check_base_pipeline(tmp_path / "absent")
    partial = tmp_path / "partial"
    shutil.copytree(tiny_pipeline, partial)
    shutil.rmtree(partial / "vae")
    with pytest.raises(UserInputError, match=r"no vae/.*save_pretrained"):
        check_base_pipeline(partial)
    (partial / "model_index.json").write_text("{not json")
    shutil.copytree(tiny_pipeline / "vae", partial / "vae")
    with pytest.raises(UserInputError, match="model_index.json is not readable JSON"):
        check_base_pipeline(partial)


def test_an_inpainting_unet_is_refused_before_loading(tmp_path):
    from tiny_diffusers import build_tiny_pipeline

    inpainting = build_tiny_pipeline(tmp_path / "inpainting", unet_in_channels=9)
    with pytest.raises(UserInputError, match=r"unet/config.json: the UNet takes 9 channels in .* latents have 4"):
        train_lora(*_data(4), NAMES, inpainting, tmp_path / "out", LoraTrainConfig(steps=1), "x", progress=False)
    assert not (tmp_path / "out").exists()


def test_adapters_on_a_changed_base_are_refused(tiny_pipeline, tmp_path):
    base = shutil.copytree(tiny_pipeline, tmp_path / "base")
    _train(base, tmp_path / "lora", steps=1)
    config = json.loads((base / "unet" / "config.json").read_text())
    (base / "unet" / "config.json").write_text(json.dumps({**config, "_note": "another base"}))
    for attempt in (backend_sha256, load_backend):
        with pytest.raises(UserInputError, match=rf"{LORA_CARD}: the adapters were trained on a base .* retrain"):
            attempt(tmp_path / "lora")


LORA_SCRIPT = """
import sys
import numpy as np
from cxr_audit.synthesis.lora_training import LoraTrainConfig, train_lora

rng = np.random.default_rng(0)
images = rng.random((16, 1, 64, 64)).astype(np.float32)
labels = (rng.random((16, 3)) < 0.5).astype(np.float32)
train_lora(images, labels, ["Cardiomegaly", "Pleural Effusion", "Edema"], sys.argv[2], sys.argv[1],
           LoraTrainConfig(steps=3, batch_size=2, rank=2, checkpoint_every=3), "datahash", progress=False)
"""


@pytest.mark.slow  # a torchrun launch of two processes
def test_two_processes_train_one_lora_through_torchrun(tiny_pipeline, tmp_path):
    """The same accelerate path as the native generator: data-parallel under torchrun (gloo on CPU)."""
    import subprocess
    import sys

    import torch

    script = tmp_path / "train.py"
    script.write_text(LORA_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               str(tmp_path / "lora"), str(tiny_pipeline)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-12000:]
    card = read_lora_card(tmp_path / "lora")
    assert (card.processes, card.batch_size, card.steps) == (2, 4, 3)
    state = torch.load(tmp_path / "lora" / "checkpoint.pt", weights_only=True)
    assert len(state["generators"]) == 2 and not torch.equal(state["generators"][0], state["generators"][1])
    assert load_backend(tmp_path / "lora", device="cpu").sha256 == backend_sha256(tmp_path / "lora")
