"""Batched inference over a manifest, with a prediction cache and stochastic passes for uncertainty.

Images are decoded in DataLoader workers, batched, and run under `torch.inference_mode`. Predictions are
cached by (model SHA-256, preprocessing signature, image content SHA-256): a re-run, or another run on
the same images, reuses them. Memory stays flat in the number of images: only one batch of pixels is held.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_audit.classifier.adapter import LoadedModel, default_device
from cxr_audit.data.images import load_resized
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_bytes


def default_cache_dir() -> Path:
    return Path(os.environ.get("CXR_AUDIT_CACHE", Path.home() / ".cache" / "cxr-audit"))


def image_sha256(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Image {path} {'is a folder' if path.is_dir() else 'does not exist'}. Check the "
                             "dataset root (--root) and the labels file's paths.")
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ImageFiles(Dataset):
    """Decoded, resized images in [0, 1] as (1, size, size) tensors, each with the error that stopped its
    decoding ('' when none): an error travels back from a DataLoader worker as data, so the user sees the
    message, not the worker's traceback."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        try:
            return torch.from_numpy(load_resized(self.paths[index], self.size)).unsqueeze(0), ""
        except UserInputError as error:
            return torch.zeros(1, self.size, self.size), str(error)


def _batches(loader: DataLoader, desc: str, progress: bool):
    """(images, first index) per batch; an image that could not be decoded stops the run with its message."""
    start = 0
    for images, errors in progress_bar(loader, desc=desc, unit="batch", disable=not progress):
        failed = [message for message in errors if message]
        if failed:
            raise UserInputError(failed[0])
        yield images, start
        start += len(images)


def _loader(paths: list[Path], size: int, batch_size: int, workers: int | None) -> DataLoader:
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    return DataLoader(ImageFiles(paths, size), batch_size=batch_size, shuffle=False,
                      num_workers=workers if len(paths) > batch_size else 0,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


class PredictionCache:
    """Probabilities per image content hash, one .npz per (model, preprocessing)."""

    def __init__(self, directory: Path, model: LoadedModel):
        key = f"{model.sha256[:16]}-{model.card.preprocessing_signature()[:16]}"
        self.path = Path(directory) / "predictions" / f"{key}.npz"
        self.entries: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as stored:
                self.entries = dict(zip(stored["image_sha256"].tolist(), stored["probabilities"]))

    def save(self) -> None:
        import io

        hashes = np.array(sorted(self.entries))
        values = np.stack([self.entries[h] for h in hashes]) if len(hashes) else np.zeros((0, 0), np.float32)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, image_sha256=hashes, probabilities=values)
        atomic_write_bytes(self.path, buffer.getvalue())


@torch.inference_mode()
def predict(model: LoadedModel, paths: list[Path], batch_size: int = 32, workers: int | None = None,
            cache_dir: Path | None = None, progress: bool = True) -> np.ndarray:
    """Probabilities (N, len(model.concepts)) for images at `paths`, reusing cached predictions."""
    hashes = [image_sha256(p) for p in paths]
    cache = PredictionCache(cache_dir, model) if cache_dir is not None else None
    todo = [i for i, h in enumerate(hashes) if cache is None or h not in cache.entries]
    results: dict[int, np.ndarray] = {}
    if todo:
        device = default_device()
        model.to(device)
        model.set_mc_dropout(False)
        loader = _loader([paths[i] for i in todo], model.card.input_size, batch_size, workers)
        for batch, start in _batches(loader, "inference", progress):
            names = [str(paths[todo[start + k]]) for k in range(len(batch))]
            probabilities = model.predict(batch.to(device, non_blocking=True), names).float().cpu().numpy()
            for k, row in enumerate(probabilities):
                results[todo[start + k]] = row
    if cache is not None:
        for i, row in results.items():
            cache.entries[hashes[i]] = row
        if results:
            cache.save()
        return np.stack([cache.entries[h] for h in hashes]).astype(np.float32)
    return np.stack([results[i] for i in range(len(paths))]).astype(np.float32)


@dataclass
class StochasticPredictions:
    method: str              # 'mc_dropout' | 'tta' | 'ensemble'
    samples: np.ndarray      # (T, N, K)


def _tta_view(batch: torch.Tensor, t: int) -> torch.Tensor:
    """Mild, label-preserving test-time augmentation: small shifts and exposure changes (no flips: the
    heart's side matters)."""
    shift = [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2), (2, 2), (-2, -2), (1, -1)][t % 8]
    gain = (0.95, 1.0, 1.05, 1.0)[t % 4]
    return torch.roll(batch, shifts=shift, dims=(2, 3)).mul(gain).clamp(0, 1)


@torch.inference_mode()
def stochastic_predictions(model: LoadedModel, paths: list[Path], samples: int = 10, batch_size: int = 32,
                           workers: int | None = None, seed: int = 0, progress: bool = True) -> StochasticPredictions:
    """T stochastic passes: MC dropout where the model has dropout, test-time augmentation otherwise."""
    torch.manual_seed(seed)
    device = default_device()
    model.to(device)
    method = "mc_dropout" if model.has_dropout else "tta"
    model.set_mc_dropout(method == "mc_dropout")
    out = []
    try:
        loader = _loader(paths, model.card.input_size, batch_size, workers)
        for batch, _ in _batches(loader, f"uncertainty ({method}, T={samples})", progress):
            batch = batch.to(device)
            views = [batch if method == "mc_dropout" else _tta_view(batch, t) for t in range(samples)]
            out.append(np.stack([model.predict(v).float().cpu().numpy() for v in views]))
    finally:
        model.set_mc_dropout(False)
    return StochasticPredictions(method, np.concatenate(out, axis=1))
