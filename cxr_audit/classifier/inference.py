"""Batched inference over a manifest, with a prediction cache and stochastic passes for uncertainty.

Images are decoded in DataLoader workers (or read from the decoded-image store: data/decoded.py), batched,
and run under `torch.inference_mode`. Predictions are cached by (model SHA-256, preprocessing signature,
image content SHA-256): a re-run, or another run on the same images, reuses them. Under several processes
(torchrun) the batches are shared out and the results gathered in the images' order, bit-identical to one
process. Memory stays flat in the number of images: only one batch of pixels is held per process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr_audit import distributed
from cxr_audit.classifier.adapter import LoadedModel, default_device
from cxr_audit.data.decoded import DecodedImageStore, decoded_batches, image_loader, image_sha256
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_bytes


def default_cache_dir() -> Path:
    """Where predictions and decoded images are cached: $CXR_AUDIT_CACHE, else ~/.cache/cxr-audit."""
    folder = Path(os.environ.get("CXR_AUDIT_CACHE", Path.home() / ".cache" / "cxr-audit"))
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"The cache folder {folder} (CXR_AUDIT_CACHE) is a file. Point CXR_AUDIT_CACHE at a "
                             "folder, or pass --no-cache.")
    return folder


def _sharded(paths: list[Path], size: int, batch_size: int, workers: int | None, cache_dir: Path | None,
             desc: str, progress: bool, score, hashes: list[str] | None = None) -> np.ndarray:
    """`score(images, batch_index)` -> (batch, ...) array for every batch of `paths`, concatenated in `paths`'
    order. Under several processes, batch b is scored by process b mod N (the same batches as one process
    makes, so the same numbers) and the results are gathered on every process."""
    world, rank = distributed.world_size(), distributed.rank()
    count = (len(paths) + batch_size - 1) // batch_size
    mine = [b for b in range(count) if b % world == rank]
    picked = [i for b in mine for i in range(b * batch_size, min((b + 1) * batch_size, len(paths)))]
    store = DecodedImageStore(cache_dir, size) if cache_dir is not None else None
    loader = image_loader([paths[i] for i in picked], size, batch_size, workers, store,
                          [hashes[i] for i in picked] if hashes else None)
    scored, error = {}, None
    try:
        batches = decoded_batches(loader)
        bar = progress_bar(zip(mine, batches), total=len(mine), desc=desc, unit="batch",
                           disable=not (progress and distributed.is_main()))
        for b, images in bar:
            scored[b] = score(images, b)
    except UserInputError as stopped:  # every process must learn of it, or the others wait forever
        error = str(stopped)
    shares = distributed.gather((scored, error))
    failed = [e for _, e in shares if e]
    if failed:
        raise UserInputError(failed[0])
    for part, _ in shares:
        scored.update(part)
    return np.concatenate([scored[b] for b in range(count)]) if count else np.zeros((0,), np.float32)


class PredictionCache:
    """Probabilities per image content hash, one .npz per (model, preprocessing)."""

    def __init__(self, directory: Path, model: LoadedModel):
        key = f"{model.sha256[:16]}-{model.card.preprocessing_signature()[:16]}"
        self.path = Path(directory) / "predictions" / f"{key}.npz"
        self.entries: dict[str, np.ndarray] = {}
        if self.path.exists():
            self.entries = self._read(len(model.concepts))

    def _read(self, outputs: int) -> dict[str, np.ndarray]:
        """The stored entries; a damaged file (a torn write, a full disk, an edit) is only a cache: it is set
        aside with a note on stderr, its images are scored again, and the next save replaces it."""
        import sys
        import zipfile

        try:
            with np.load(self.path, allow_pickle=False) as stored:
                hashes, values = stored["image_sha256"], stored["probabilities"]
                if hashes.size == 0:
                    return {}
                if hashes.ndim != 1 or values.shape != (len(hashes), outputs) or not np.isfinite(values).all():
                    raise ValueError(f"arrays of shape {hashes.shape} and {values.shape}")
                return dict(zip(hashes.tolist(), values))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            print(f"note: the prediction cache {self.path} is damaged ({type(error).__name__}: {str(error)[:80]}); "
                  "its images are scored again and the cache is rewritten.", file=sys.stderr)
            return {}

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
    """Probabilities (N, len(model.concepts)) for images at `paths`, reusing cached predictions and decoded
    images. Sharded over the processes of a multi-process run; the main process keeps the cache."""
    cache, hashes, todo = None, None, list(range(len(paths)))

    def look_up_cache() -> None:  # without a cache nothing is keyed by content
        nonlocal cache, hashes, todo
        if cache_dir is not None:
            hashes = [image_sha256(p) for p in paths]  # a missing or unreadable image is named here
            cache = PredictionCache(cache_dir, model)
            todo = [i for i, h in enumerate(hashes) if h not in cache.entries]

    distributed.on_main(look_up_cache)  # its refusal is raised on every process, never half-broadcast
    hashes, todo = distributed.broadcast((hashes, todo))  # every process scores the same images
    probabilities = np.zeros((0, len(model.concepts)), np.float32)
    if todo:
        device = default_device()
        model.to(device)
        model.set_mc_dropout(False)

        def score(images: torch.Tensor, b: int) -> np.ndarray:
            names = [str(paths[i]) for i in todo[b * batch_size:(b + 1) * batch_size]]
            return model.predict(images.to(device, non_blocking=True), names).float().cpu().numpy()

        probabilities = _sharded([paths[i] for i in todo], model.card.input_size, batch_size, workers, cache_dir,
                                 "inference", progress, score, [hashes[i] for i in todo] if hashes else None)
    if cache_dir is None:
        return probabilities
    if distributed.is_main():
        cache.entries.update({hashes[i]: row for i, row in zip(todo, probabilities)})
        if todo:
            cache.save()
        probabilities = np.stack([cache.entries[h] for h in hashes]).astype(np.float32)
    return distributed.broadcast(probabilities)


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
                           workers: int | None = None, seed: int = 0, progress: bool = True,
                           cache_dir: Path | None = None) -> StochasticPredictions:
    """T stochastic passes: MC dropout where the model has dropout, test-time augmentation otherwise. Each
    batch's dropout masks come from (seed, batch index), whichever process scores it."""
    device = default_device()
    model.to(device)
    method = "mc_dropout" if model.has_dropout else "tta"
    model.set_mc_dropout(method == "mc_dropout")

    def score(images: torch.Tensor, b: int) -> np.ndarray:
        torch.manual_seed(seed * 1_000_003 + b)
        images = images.to(device)
        views = [images if method == "mc_dropout" else _tta_view(images, t) for t in range(samples)]
        return np.stack([model.predict(v).float().cpu().numpy() for v in views], axis=1)  # (batch, T, K)

    try:
        passes = _sharded(paths, model.card.input_size, batch_size, workers, cache_dir,
                          f"uncertainty ({method}, T={samples})", progress, score)
    finally:
        model.set_mc_dropout(False)
    return StochasticPredictions(method, passes.transpose(1, 0, 2))
