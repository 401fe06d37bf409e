"""The generator (save, load, pinned hashes, resume) and the masked editor (anatomy outside the region is
the source, exactly; the unconstrained ablation changes it)."""

import json

import numpy as np
import pytest
import torch

from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.editor import EditSettings, edit, sample
from cxr_audit.synthesis.generator import TrainConfig, load_generator, train_generator

CONCEPTS = ["Cardiomegaly", "Pleural Effusion"]


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    rng = np.random.default_rng(0)
    images = rng.random((24, 1, 32, 32)).astype(np.float32)
    labels = (rng.random((24, 2)) < 0.5).astype(np.float32)
    out = tmp_path_factory.mktemp("gen")
    card = train_generator(images, labels, CONCEPTS, out, TrainConfig(steps=6, batch_size=4, checkpoint_every=3),
                           "datahash", (8, 16), progress=False)
    return out, card, images, labels


def test_saved_in_diffusers_layout_with_pinned_hashes(tiny_generator):
    out, card, _, _ = tiny_generator
    assert (out / "unet" / "config.json").exists() and (out / "scheduler" / "scheduler_config.json").exists()
    saved = json.loads((out / "generator_card.json").read_text())
    assert saved["concepts"] == CONCEPTS and saved["steps"] == 6 and saved["training_data_sha256"] == "datahash"
    model, loaded = load_generator(out)
    assert loaded.image_size == 32 and model.concept_names == CONCEPTS


def test_tampered_weights_are_refused(tiny_generator, tmp_path):
    import shutil

    out, *_ = tiny_generator
    copy = tmp_path / "gen"
    shutil.copytree(out, copy)
    with open(copy / "concept_encoder.safetensors", "r+b") as handle:
        handle.seek(-4, 2)
        handle.write(b"\x00\x01\x02\x03")
    with pytest.raises(UserInputError, match="pins"):
        load_generator(copy)


def test_training_resumes_from_its_checkpoint(tiny_generator, tmp_path):
    _, _, images, labels = tiny_generator
    first = train_generator(images, labels, CONCEPTS, tmp_path, TrainConfig(steps=3, batch_size=4), "d", (8, 16),
                            progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert first.steps == 3 and state["step"] == 3
    resumed = train_generator(images, labels, CONCEPTS, tmp_path, TrainConfig(steps=5, batch_size=4), "d", (8, 16),
                              progress=False)
    assert resumed.steps == 5 and torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 5


def test_masked_edit_keeps_everything_outside_the_region(tiny_generator):
    out, _, images, _ = tiny_generator
    model, _ = load_generator(out)
    sources = images[:3, 0]
    masks = np.zeros((3, 32, 32), bool)
    masks[:, 10:20, 8:24] = True
    soft = masks.astype(np.float32)
    targets = np.array([[1, 1]] * 3, np.float32)
    settings = EditSettings(steps=10, strength=0.6)
    edited = edit(model, sources, targets, masks, soft, settings, seed=1)
    assert np.array_equal(edited[:, ~masks[0]], sources[:, ~masks[0]])
    assert np.abs(edited - sources)[:, masks[0]].mean() > 0.01  # the region really changed
    again = edit(model, sources, targets, masks, soft, settings, seed=1)
    assert np.array_equal(edited, again)  # deterministic by seed
    ablation = edit(model, sources, targets, None, None, settings, seed=1)
    assert np.abs(ablation - sources)[:, ~masks[0]].mean() > 0.01  # unconstrained regeneration moves anatomy
    generated = sample(model, targets, settings, seed=1, size=32)
    assert generated.shape == (3, 32, 32) and 0 <= generated.min() and generated.max() <= 1
