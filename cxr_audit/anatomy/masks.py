"""Anatomy masks on disk: where an image's masks live under the dataset root, and reading them.

Layout (the phantom writes it, `cxr-audit segment` writes it, synthesis and generator training read it):
masks/<image path without suffix>/{lung_right,lung_left,heart,mediastinum}.png, a leading images/ dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError

ANATOMY = ("lung_right", "lung_left", "heart", "mediastinum")


def mask_folder(rel_image_path: str) -> Path:
    """Where an image's anatomy masks live, relative to the dataset root: masks/<image path without suffix>,
    a leading images/ dropped (the phantom's layout: masks/<patient>/<study>/<view>/ beside
    images/<patient>/<study>/<view>.png). `cxr-audit segment` writes this layout and synthesis reads it."""
    parts = Path(rel_image_path).with_suffix("").parts
    return Path("masks", *(parts[1:] if parts[0] == "images" and len(parts) > 1 else parts))


def load_mask_folder(folder: str | Path, size: int | None = None) -> dict[str, np.ndarray]:
    """Anatomy masks saved as PNGs named after ANATOMY (the phantom's layout); lungs are required."""
    folder = Path(folder)
    masks = {}
    for name in ANATOMY:
        path = folder / f"{name}.png"
        if path.exists():
            with Image.open(path) as image:
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.NEAREST)
                masks[name] = np.asarray(image) > 127
    if "lung_right" not in masks or "lung_left" not in masks:
        raise UserInputError(f"Anatomy masks in {folder} lack lung_right.png / lung_left.png.")
    return masks


def image_mask_folder(manifest: Manifest, rel_path: str) -> Path:
    """The absolute mask folder of one image of `manifest`."""
    return manifest.resolve_image(str(mask_folder(rel_path)))  # inside the dataset root, like the images


class DatasetAnatomy(Sequence):
    """Anatomy masks of every image of a manifest, by position, read from disk when asked for: a generator
    training on a large archive touches only its batches' masks, so memory does not grow with the archive
    (the last `keep` images' masks are kept, since training draws the same images again)."""

    def __init__(self, folders: list[Path], size: int, keep: int = 4096):
        from functools import lru_cache

        self.folders, self.size = folders, size
        self._load = lru_cache(maxsize=keep)(self._read)

    def _read(self, index: int) -> dict[str, np.ndarray]:
        return load_mask_folder(self.folders[index], self.size)

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._load(int(index))


def dataset_anatomy(manifest: Manifest, size: int) -> DatasetAnatomy | None:
    """Anatomy masks of every image (phantom layout, or written by `cxr-audit segment`), or None when the
    data has none (the generator then trains without regions). Every image's lung masks must exist (checked
    now); the masks are read as they are used."""
    paths = list(manifest.frame["path"])
    if not paths or not (image_mask_folder(manifest, paths[0]) / "lung_right.png").exists():
        return None
    folders = []
    for path in paths:
        folder = image_mask_folder(manifest, path)
        if not (folder / "lung_right.png").exists():
            raise UserInputError(f"No anatomy masks for {path} (looked in {folder}); other images have them. Write "
                                 "masks for every image with `cxr-audit segment`.")
        folders.append(folder)
    return DatasetAnatomy(folders, size)
