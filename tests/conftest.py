"""Shared fixtures: where the real data lives, and a helper to run the CLI as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr_audit.cli import app

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_AUDIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set CXR_AUDIT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def run_cli():
    """Invoke `cxr-audit ARGS...`; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A small phantom dataset (360 studies, 64 px) with train/val/test splits."""
    from cxr_audit.data.phantom_dataset import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom") / "dataset"
    write_phantom_dataset(out, 360, size=64, seed=21, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_model(phantom_dataset, tmp_path_factory) -> Path:
    """A SmallCXRNet really trained on the phantom's training split, saved as TorchScript with a card."""
    import numpy as np
    import torch
    import yaml

    from cxr_audit.data import phantom
    from cxr_audit.data.images import load_resized
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.train_classifier import train_small_classifier

    torch.set_num_threads(2)
    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    images = np.stack([load_resized(train.resolve_image(p), 64) for p in train.frame["path"]])[:, None]
    labels = train.frame[list(phantom.PHANTOM_FINDINGS)].to_numpy(np.float32)
    net = train_small_classifier(images, labels, epochs=6, seed=0, width=8)
    path = tmp_path_factory.mktemp("model") / "phantom_cnn.ts"
    torch.jit.script(net).save(str(path))
    card = {"input_size": 64, "channels": 1, "normalization": "unit", "outputs": "logits",
            "output_names": list(phantom.PHANTOM_FINDINGS)}
    path.with_name(path.name + ".card.yaml").write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="session")
def tiny_generator(phantom_dataset, tmp_path_factory) -> Path:
    """A concept-conditioned generator trained for 4 steps: real weights, no skill (for plumbing tests)."""
    import numpy as np

    from cxr_audit.data import phantom
    from cxr_audit.data.images import load_resized
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.generator import TrainConfig, train_generator

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    images = np.stack([load_resized(train.resolve_image(p), 64) for p in train.frame["path"][:32]])[:, None]
    labels = train.frame[list(phantom.PHANTOM_FINDINGS)].to_numpy(np.float32)[:32]
    out = tmp_path_factory.mktemp("generator")
    train_generator(images, labels, list(phantom.PHANTOM_FINDINGS), out, TrainConfig(steps=4, batch_size=4),
                    "d", (8, 16), progress=False)
    return out
