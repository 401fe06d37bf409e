"""Training from the decoded-image store: rows read a batch at a time give what training from memory gives,
bit for bit (fine-tune with resume, checker, generator), and the readers say what is wrong with a damaged
store."""

import numpy as np
import pytest
import torch

from cxr_audit.classifier.finetune import FinetuneConfig, TrainingImages
from cxr_audit.classifier.loading import load_model
from cxr_audit.data import phantom
from cxr_audit.data.image_rows import ArrayImages, ConcatenatedImages, StoredImages, read_ahead
from cxr_audit.data.readers import read_manifest
from cxr_audit.errors import UserInputError
from cxr_audit.rundir import FinetuneLayout
from cxr_audit.spec import LabelPolicy
from cxr_audit.stages.finetune import finetune_into

NAMES = list(phantom.PHANTOM_FINDINGS)


@pytest.fixture(scope="module")
def splits(phantom_dataset, tmp_path_factory):
    """The phantom's train and val splits twice: in memory, and as rows of a fresh store."""
    cache = tmp_path_factory.mktemp("cache")
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    parts = {split: manifest.split(split) for split in ("train", "val")}
    memory = {s: p.image_rows(64) for s, p in parts.items()}
    stored = {s: p.image_rows(64, cache_dir=cache, workers=2) for s, p in parts.items()}
    labels = {s: p.labels(NAMES, LabelPolicy()) for s, p in parts.items()}
    return memory, stored, labels


def test_stored_rows_are_the_decoded_images(splits):
    memory, stored, _ = splits
    train = stored["train"]
    assert isinstance(train, StoredImages) and isinstance(memory["train"], ArrayImages)
    assert train.shape == memory["train"].shape
    rows = np.array([5, 0, 5, len(train) - 1])  # any order, repeats
    assert np.array_equal(train.take(rows), memory["train"].to_array()[rows])
    both = ConcatenatedImages([stored["train"], memory["val"]])
    picks = np.array([len(train) + 2, 3, len(train), 1])
    expected = np.concatenate([memory["train"].to_array(), memory["val"].to_array()])[picks]
    assert np.array_equal(both.take(picks), expected)
    # read ahead by a worker process, in order
    batches = [np.array([1, 2]), np.array([7]), np.array([3, 3, 0])]
    for rows, read in zip(batches, read_ahead(train, iter(batches)), strict=True):
        assert torch.equal(read, torch.from_numpy(memory["train"].to_array()[rows]))


def _weights(layout):
    return {k: v.clone() for k, v in torch.jit.load(str(layout.candidate())).state_dict().items()}


def test_finetune_from_the_store_equals_memory_and_resumes_exactly(splits, phantom_model, tmp_path):
    from tests.classifier.test_finetune import Killed, _killed_after

    memory, stored, labels = splits
    model = load_model(phantom_model)
    config = FinetuneConfig(steps=8, batch_size=8, eval_every=4, checkpoint_every=2, patience=10)

    def run(images, name, **kwargs):
        layout = FinetuneLayout(tmp_path / name)
        train = TrainingImages.real(images["train"], labels["train"])
        validation = TrainingImages.real(images["val"], labels["val"])
        return layout, finetune_into(layout, model, train, validation, config, "real_only", {"x": "1"},
                                     progress=False, **kwargs)

    from_memory, record = run(memory, "memory")
    from_store, stored_record = run(stored, "store")
    assert stored_record["history"] == record["history"]
    a, b = _weights(from_memory), _weights(from_store)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # killed after step 4 while the worker had read batches ahead: the resumed run still ends the same
    layout = FinetuneLayout(tmp_path / "resumed")
    with pytest.raises(Killed):
        run(stored, "resumed", checkpoints=_killed_after(layout, 4))
    _, resumed_record = run(stored, "resumed")
    assert resumed_record["history"] == record["history"]
    c = _weights(layout)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_checker_and_generator_from_the_store_equal_memory(splits, phantom_dataset, tmp_path):
    from cxr_audit.anatomy.masks import dataset_anatomy
    from cxr_audit.classifier.small_cnn import predict_probabilities, train_small_classifier
    from cxr_audit.synthesis.generator.regions import RegionSampler
    from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

    memory, stored, labels = splits
    nets = [train_small_classifier(images["train"], labels["train"], epochs=1, width=4) for images in (memory, stored)]
    assert all(torch.equal(p, q) for p, q in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    assert np.array_equal(predict_probabilities(nets[0], memory["val"]), predict_probabilities(nets[1], stored["val"]))

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    findings = [c for c in NAMES if c != "No Finding"]
    target = train.labels(findings, LabelPolicy())
    weights = []
    for name, images, keep in (("memory", memory, 8192), ("store", stored, 2)):  # keep=2: regions derived again
        regions = RegionSampler(dataset_anatomy(train, 64), findings, keep=keep)
        train_generator(images["train"], target, findings, tmp_path / name, TrainConfig(steps=3, batch_size=4),
                        "d", (8, 16), progress=False, regions=regions)
        weights.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_truncated_store_is_named(splits, tmp_path):
    _, stored, _ = splits
    pixels = tmp_path / "pixels.f32"
    pixels.write_bytes(b"\0" * (64 * 64 * 4 * 2))
    short = StoredImages(pixels, 64, np.array([0, 1, 2]))
    assert short.take([1]).shape == (1, 1, 64, 64)
    with pytest.raises(UserInputError, match="pixels.f32 is shorter than its index says.*Delete its folder"):
        short.take([2])
