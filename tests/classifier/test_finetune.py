"""Fine-tuning a copy of the deployed model: balanced sampling, exact resume, torchvision backbones."""

import json

import numpy as np
import pytest
import torch
import yaml

from cxr_audit.classifier.card import card_file
from cxr_audit.classifier.finetune import Checkpoints, FinetuneConfig, TrainingImages, sample_weights
from cxr_audit.classifier.loading import load_model
from cxr_audit.data import phantom
from cxr_audit.data.readers import read_manifest
from cxr_audit.rundir import FinetuneLayout
from cxr_audit.spec import LabelPolicy
from cxr_audit.stages.finetune import file_checkpoints, finetune_into


@pytest.fixture(scope="module")
def phantom_splits(phantom_dataset):
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    names = list(phantom.PHANTOM_FINDINGS)
    train, validation = (TrainingImages.real(part.images(64), part.labels(names, LabelPolicy()))
                         for part in (manifest.split("train"), manifest.split("val")))
    return train, validation


def test_balanced_sampling_draws_rare_findings_more_often():
    labels = np.zeros((100, 2), np.float32)
    labels[:5, 0] = 1      # rare
    labels[5:50, 1] = 1    # common
    weights = sample_weights(labels)
    assert weights[0] > 5 * weights[10]
    assert weights.sum() == pytest.approx(1.0)
    # expected share of rare-positive draws rises from 5% to about a third
    assert weights[:5].sum() > 0.25


class Killed(Exception):
    """Stands in for a process killed right after a checkpoint."""


def _killed_after(layout, step):
    """Checkpoints in the layout's file that stop the fine-tune once the checkpoint of `step` is saved."""
    kept = file_checkpoints(layout.checkpoint)

    def save(state):
        kept.save(state)
        if json.loads(state["state"])["step"] >= step:
            raise Killed

    return Checkpoints(load=kept.load, save=save)


def _weights(path):
    return {k: v.clone() for k, v in torch.jit.load(str(path)).state_dict().items()}


def test_interrupted_finetune_resumes_to_the_same_weights(phantom_model, phantom_splits, tmp_path):
    train, validation = phantom_splits
    model = load_model(phantom_model)
    # one evaluation, at the end: the candidate is the final weights, so every step must have matched
    config = FinetuneConfig(steps=8, batch_size=8, eval_every=8, checkpoint_every=2, patience=10)
    whole, resumed_layout = FinetuneLayout(tmp_path / "whole"), FinetuneLayout(tmp_path / "resumed")
    record = finetune_into(whole, model, train, validation, config, "real_only", {"x": "1"}, progress=False)
    assert record["steps_run"] == 8
    with pytest.raises(Killed):
        finetune_into(resumed_layout, model, train, validation, config, "real_only", {"x": "1"}, progress=False,
                      checkpoints=_killed_after(resumed_layout, 4))
    assert resumed_layout.checkpoint.exists() and not resumed_layout.candidate_torchscript.exists()
    resumed = finetune_into(resumed_layout, model, train, validation, config, "real_only", {"x": "1"},
                            progress=False)
    assert resumed["steps_run"] == 8
    # a TorchScript model's candidate is TorchScript
    a, b = _weights(whole.candidate()), _weights(resumed_layout.candidate())
    assert whole.candidate() == whole.candidate_torchscript
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the deployed model itself is untouched, the candidate differs from it
    original = _weights(phantom_model)
    assert any(not torch.equal(original[k], a[k]) for k in a if a[k].is_floating_point())
    # the candidate's card inherits the preprocessing and loads as a model
    card = yaml.safe_load(card_file(whole.candidate()).read_text())
    assert card["input_size"] == 64 and card["output_names"] == list(phantom.PHANTOM_FINDINGS)
    candidate = load_model(whole.candidate())
    assert candidate.sha256 == record["candidate"]["sha256"]


def test_checkpoint_of_other_settings_is_refused(phantom_model, phantom_splits, tmp_path):
    from cxr_audit.errors import UserInputError

    train, validation = phantom_splits
    model = load_model(phantom_model)
    layout = FinetuneLayout(tmp_path)
    with pytest.raises(Killed):
        finetune_into(layout, model, train, validation, FinetuneConfig(steps=4, batch_size=4, checkpoint_every=2),
                      "a", {"x": "1"}, progress=False, checkpoints=_killed_after(layout, 2))
    with pytest.raises(UserInputError, match="other settings"):
        finetune_into(layout, model, train, validation, FinetuneConfig(steps=4, batch_size=4, lr=1e-2), "a",
                      {"x": "1"}, progress=False)


@pytest.mark.parametrize("architecture,size", [("densenet121", 32), ("resnet50", 32), ("efficientnet_b0", 32),
                                               ("convnext_tiny", 32),
                                               # a transformer at its native 224 px: 86M weights, 14 s
                                               pytest.param("vit_b_16", 224, marks=pytest.mark.slow)])
def test_torchvision_backbones_load_and_finetune(architecture, size, tmp_path):
    import torchvision
    from safetensors.torch import save_file

    from cxr_audit.classifier.backends.state_dict import first_conv_to_one_channel

    torch.manual_seed(0)
    net = torchvision.models.get_model(architecture, weights=None, num_classes=2)
    first_conv_to_one_channel(net)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    card = {"format": "torchvision", "architecture": architecture, "input_size": size, "channels": 1,
            "output_names": ["Cardiomegaly", "Pleural Effusion"]}
    (tmp_path / "model.safetensors.card.yaml").write_text(yaml.safe_dump(card))
    model = load_model(path)
    rng = np.random.default_rng(0)
    images = TrainingImages(rng.random((6, 1, size, size), dtype=np.float32),
                            np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]], np.float32), np.zeros(6, bool))
    layout = FinetuneLayout(tmp_path / "ft")
    record = finetune_into(layout, model, images, images, FinetuneConfig(steps=2, batch_size=2, eval_every=2),
                      "real_only", {"m": architecture}, progress=False)
    assert record["steps_run"] == 2
    # weights for a torchvision architecture: the candidate is a state dict of the same architecture
    assert layout.candidate() == layout.candidate_weights
    candidate = load_model(layout.candidate())
    with torch.inference_mode():
        probabilities = candidate.predict(torch.rand(2, 1, size, size))
    assert probabilities.shape == (2, 2) and torch.all((probabilities >= 0) & (probabilities <= 1))
