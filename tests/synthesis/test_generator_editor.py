"""The generator (save, load, pinned hashes, resume) and the masked editor (anatomy outside the region is
the source, exactly; the unconstrained ablation changes it)."""

import json

import numpy as np
import pytest
import torch

from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.editor import EditSettings, edit, sample
from cxr_audit.synthesis.generator.store import load_generator
from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

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


def test_prediction_type_travels_from_training_to_the_editor(tiny_generator, tmp_path):
    """New generators predict v; cards written before the field existed predicted the noise, and must still
    be sampled that way (a v model read as an epsilon model gives garbage, silently)."""
    import shutil

    out, card, _, _ = tiny_generator
    assert card.prediction_type == "v_prediction"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    model, _ = load_generator(out)
    assert model.prediction_type == "v_prediction"
    older = tmp_path / "gen"
    shutil.copytree(out, older)
    saved = json.loads((older / "generator_card.json").read_text())
    del saved["prediction_type"]
    (older / "generator_card.json").write_text(json.dumps(saved))
    as_epsilon, _ = load_generator(older)
    assert as_epsilon.prediction_type == "epsilon"
    settings = EditSettings(steps=6, strength=1.0)
    labels = np.array([[1, 0]], np.float32)
    # the same weights read the other way denoise to another image
    assert not np.allclose(sample(model, labels, settings, seed=0, size=32),
                           sample(as_epsilon, labels, settings, seed=0, size=32))


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


def test_inpainting_generator_trains_on_anatomical_regions_and_edits(phantom_dataset, tmp_path):
    """With anatomy masks the generator learns to fill one concept's region given the image around it."""
    from cxr_audit.anatomy.masks import dataset_anatomy as training_anatomy
    from cxr_audit.anatomy.regions import edit_mask
    from cxr_audit.data.images import load_resized
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.generator.regions import RegionSampler

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    train.frame = train.frame.head(12)
    images = np.stack([load_resized(train.resolve_image(p), 64) for p in train.frame["path"]])[:, None]
    labels = train.frame[CONCEPTS].to_numpy(np.float32)
    anatomy = training_anatomy(train, 64)
    assert anatomy is not None and len(anatomy) == 12
    sampler = RegionSampler(anatomy, CONCEPTS)
    regions = sampler.sample(np.arange(12), labels, torch.Generator().manual_seed(0))
    assert regions.shape == (12, 1, 64, 64)
    covered = regions.mean(dim=(1, 2, 3))
    assert ((covered > 0.01) & (covered < 0.6)).sum() >= 8  # mostly anatomical regions, some whole images
    card = train_generator(images, labels, CONCEPTS, tmp_path, TrainConfig(steps=3, batch_size=4), "d", (8, 16),
                           progress=False, regions=sampler)
    assert card.inpainting and card.one_side_share == sampler.p_one_side
    model, loaded = load_generator(tmp_path)
    assert loaded.inpainting and model.inpainting
    hard, soft = edit_mask(["Cardiomegaly"], anatomy[0])
    edited = edit(model, images[:1, 0], np.array([[1, 0]], np.float32), hard[None], soft[None],
                  EditSettings(steps=6, strength=0.8), seed=0)
    assert np.abs(edited[0, ~hard] - images[0, 0, ~hard]).max() < 1e-5  # float rounding only
    assert np.abs(edited[0, hard] - images[0, 0, hard]).mean() > 0.01


def test_one_sided_concepts_hide_one_side_at_random_whatever_the_label(phantom_dataset):
    """Effusion inserts edit one costophrenic angle with the other in view, so training must show that case;
    the side drawn must not follow the label, or the region would give the label away."""
    from cxr_audit.anatomy.masks import dataset_anatomy as training_anatomy
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.generator.regions import RegionSampler

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    train.frame = train.frame.head(8)
    anatomy = training_anatomy(train, 64)
    sampler = RegionSampler(anatomy, ["Pleural Effusion"], p_whole=0.0)
    shares = []
    for effusion in (0.0, 1.0):
        labels = np.full((8, 1), effusion, np.float32)
        regions = sampler.sample(np.arange(8).repeat(25), labels, torch.Generator().manual_seed(1))[:, 0].numpy()
        assert (regions.sum(axis=(1, 2)) > 0).all() and (regions.mean(axis=(1, 2)) < 0.4).all()  # a region, not the image
        # the patient's right is the image's left half (a one-sided region's dilation may cross the midline
        # by a pixel or two, into the mediastinum)
        right_share = regions[:, :, :32].sum(axis=(1, 2)) / regions.sum(axis=(1, 2))
        only_right, only_left = right_share > 0.9, right_share < 0.1
        assert only_right.any() and only_left.any() and (~only_right & ~only_left).any()
        shares.append((only_right | only_left).mean())
    assert all(0.35 < share < 0.65 for share in shares), shares  # about half one-sided, label or not


def test_timestep_draws_favour_the_noisy_steps_when_asked():
    from cxr_audit.synthesis.generator.training import _draw_timesteps

    uniform = _draw_timesteps(20000, 1000, 1.0, torch.Generator().manual_seed(0)).float()
    noisy = _draw_timesteps(20000, 1000, 0.5, torch.Generator().manual_seed(0)).float()
    assert 0 <= noisy.min() and noisy.max() <= 999
    assert abs(uniform.mean().item() - 500) < 15 and abs(noisy.mean().item() - 667) < 15  # E[T*sqrt(u)] = 2T/3
