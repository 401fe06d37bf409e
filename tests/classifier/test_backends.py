"""A classifier format is one backend class and one registry line: a toy format whose model is a folder (a
weights file and a bias file in text), registered from this file alone, is loaded, run, hashed and probed like
any built-in format."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cxr_audit.classifier import backends
from cxr_audit.classifier.card import ModelCard
from cxr_audit.classifier.loading import load_model
from cxr_audit.errors import UserInputError


class LinearFolderBackend:
    """A model stored as a folder: `linear.txt` holds one weight row per output over the mean grey value,
    `bias.txt` one bias per output (a stand-in for a vendor's bundle or a SavedModel folder)."""

    formats = ("linear-folder",)
    saves_weights = False
    module = None
    folder = True

    def __init__(self, weights: torch.Tensor, bias: torch.Tensor):
        self.weights, self.bias, self.format, self.notes = weights, bias, "linear-folder", []

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and (path / "linear.txt").is_file()

    @classmethod
    def load(cls, path: Path, card: ModelCard, options):
        weights = torch.tensor(np.loadtxt(path / "linear.txt", ndmin=1), dtype=torch.float32)
        bias = torch.tensor(np.loadtxt(path / "bias.txt", ndmin=1), dtype=torch.float32)
        return cls(weights, bias), card

    def forward(self, x: torch.Tensor):
        return x.mean(dim=(1, 2, 3))[:, None] * self.weights[None] + self.bias[None]

    def has_dropout(self) -> bool:
        return False

    def set_stochastic(self, enabled: bool) -> None:
        pass

    def to(self, device) -> None:
        pass

    @classmethod
    def sha256(cls, path: Path) -> str:
        digest = hashlib.sha256()
        for file in sorted(path.iterdir()):
            digest.update(file.name.encode() + file.read_bytes())
        return digest.hexdigest()


@pytest.fixture()
def registered():
    backends.register_backend(LinearFolderBackend)
    yield
    backends.BACKENDS.remove(LinearFolderBackend)


def _folder_model(tmp_path: Path) -> Path:
    folder = tmp_path / "vendor_model"
    folder.mkdir()
    (folder / "linear.txt").write_text("8.0 -8.0\n")
    (folder / "bias.txt").write_text("-4.0 4.0\n")
    (tmp_path / "vendor_model.card.yaml").write_text(yaml.safe_dump(
        {"input_size": 32, "output_names": ["Cardiomegaly", "Pleural Effusion"]}))
    return folder


def test_a_toy_backend_registered_from_one_file_loads_a_folder_model(registered, tmp_path):
    model = load_model(_folder_model(tmp_path))
    assert model.format == "linear-folder" and model.module is None and not model.has_dropout
    bright, dark = np.full((1, 32, 32), 0.9, np.float32), np.full((1, 32, 32), 0.1, np.float32)
    scores = model.predict_arrays(np.concatenate([bright, dark]))
    assert scores.shape == (2, 2)
    assert scores[0, 0] > 0.9 and scores[1, 0] < 0.1 and scores[0, 1] < 0.1  # sigmoid(8 * mean - 4), its mirror
    assert model.sha256 == LinearFolderBackend.sha256(model.path)
    # the card may also name the format explicitly
    (tmp_path / "vendor_model.card.yaml").write_text(yaml.safe_dump(
        {"format": "linear-folder", "input_size": 32, "output_names": ["Cardiomegaly", "Pleural Effusion"]}))
    assert load_model(model.path).format == "linear-folder"


def test_without_its_backend_a_folder_model_is_a_clear_error(tmp_path):
    folder = _folder_model(tmp_path)
    with pytest.raises(UserInputError, match="is not a file|folder"):
        load_model(folder)
    (tmp_path / "vendor_model.card.yaml").write_text(yaml.safe_dump({"format": "linear-folder"}))
    with pytest.raises(UserInputError, match="linear-folder"):
        load_model(folder)


def test_the_built_in_formats_are_backends():
    assert {"torchscript", "onnx", "torchvision", "torchxrayvision", "pickle"} <= set(backends.known_formats())


def test_a_folder_model_is_evaluated_end_to_end(registered, phantom_dataset, tmp_path, run_cli):
    import json

    model = _folder_model(tmp_path)
    out = tmp_path / "run"
    result = run_cli("evaluate", "--out", out, "--data", phantom_dataset / "labels.csv", "--model", model,
                     "--spec", "coverage_specs/phantom.yaml", "--bootstrap", 100, "--mc-samples", 2, "--no-cache",
                     "--workers", 0)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "evaluate" / "baseline" / "metrics.json").read_text())
    assert metrics["model"]["format"] == "linear-folder"
    assert metrics["model"]["sha256"] == LinearFolderBackend.sha256(model)
    assert set(metrics["concepts"]) == {"Cardiomegaly", "Pleural Effusion"}
