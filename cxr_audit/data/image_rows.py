"""Image sets that training and scoring read batch by batch: in memory (an array) or on disk (rows of the
decoded-image store, read when a batch needs them), so that a process's memory does not grow with the number
of images it trains on.

Every kind gives the same float32 pixels for the same image (the store's rows are `load_resized`'s exact
output), so a model trained from the store equals one trained from memory bit for bit.

Store rows are read with `pread`, not through a memory map: pages of a mapped file that a process has touched
count in its resident memory for as long as the map lives, so random batches over a 100k-image store would
grow the trainer's RSS by every image it ever saw; the page cache behind `pread` is the kernel's, shared and
reclaimable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_audit.errors import UserInputError


class ImageRows:
    """(N, 1, S, S) float32 images in [0, 1], read by row number."""

    size: int
    reads_disk = False  # whether reading ahead in a worker process pays (disk reads overlap compute)

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 1, self.size, self.size)

    def take(self, rows) -> np.ndarray:
        """The images at `rows` (any integer sequence, repeats allowed), in that order, as a new array."""
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Every image in order, `batch_size` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.take(np.arange(start, min(start + batch_size, len(self))))

    def to_array(self) -> np.ndarray:
        """Every image in memory (for sets known to be small)."""
        return self.take(np.arange(len(self)))


class ArrayImages(ImageRows):
    def __init__(self, array: np.ndarray):
        if array.ndim != 4 or array.shape[1] != 1 or array.shape[2] != array.shape[3]:
            raise ValueError(f"images must be (N, 1, S, S); got {array.shape}")
        self.array, self.size = array, int(array.shape[-1])

    def __len__(self) -> int:
        return len(self.array)

    def take(self, rows) -> np.ndarray:
        return np.asarray(self.array[np.asarray(rows, np.int64)], np.float32)

    def to_array(self) -> np.ndarray:
        return self.array


class StoredImages(ImageRows):
    """Images kept as rows of a decoded-image store's pixel file (data/decoded.py): `rows[i]` is image i's row.
    Picklable, so DataLoader workers read it too (each process opens the file itself)."""

    reads_disk = True

    def __init__(self, pixels_path: Path, size: int, rows: np.ndarray):
        self.pixels_path, self.size = Path(pixels_path), int(size)
        self.rows = np.asarray(rows, np.int64)
        self._row_bytes = self.size * self.size * 4
        self._fd: int | None = None
        self._fd_pid = -1

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}

    def __del__(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)

    def _file(self) -> int:
        if self._fd is None or self._fd_pid != os.getpid():  # a forked worker opens its own
            self._fd, self._fd_pid = os.open(self.pixels_path, os.O_RDONLY), os.getpid()
        return self._fd

    def take(self, rows) -> np.ndarray:
        store_rows = self.rows[np.asarray(rows, np.int64)]
        return read_store_rows(self._file(), self.pixels_path, self.size, store_rows)


def read_store_rows(fd: int, path: Path, size: int, store_rows: np.ndarray) -> np.ndarray:
    """Rows of a store's pixel file (open as `fd`) as (n, 1, size, size) float32."""
    out = np.empty((len(store_rows), 1, size, size), np.float32)
    row_bytes = size * size * 4
    for k, row in enumerate(store_rows):
        if os.preadv(fd, [out[k]], int(row) * row_bytes) != row_bytes:
            raise UserInputError(f"The decoded-image store {path} is shorter than its index says (row {row}): it "
                                 "was truncated or replaced while in use. Delete its folder; images are decoded "
                                 "again on the next run.")
    return out


class ConcatenatedImages(ImageRows):
    """Several image sets end to end (real training images from the store, then synthetic ones in memory)."""

    def __init__(self, parts: list[ImageRows]):
        sizes = {part.size for part in parts if len(part)}
        if len(sizes) > 1:
            raise ValueError(f"images of different sizes cannot be concatenated: {sorted(sizes)}")
        self.parts = [part for part in parts if len(part)] or parts[:1]
        self.size = sizes.pop() if sizes else parts[0].size
        self.starts = np.cumsum([0] + [len(part) for part in self.parts])
        self.reads_disk = any(part.reads_disk for part in self.parts)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, rows) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), 1, self.size, self.size), np.float32)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for p, part in enumerate(self.parts):
            mine = np.flatnonzero(which == p)
            if len(mine):
                out[mine] = part.take(rows[mine] - self.starts[p])
        return out


def as_image_rows(images: np.ndarray | ImageRows) -> ImageRows:
    return images if isinstance(images, ImageRows) else ArrayImages(images)


class _Take(Dataset):
    """A dataset whose items are whole batches: item `rows` is `images.take(rows)`."""

    def __init__(self, images: ImageRows):
        self.images = images

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.images.take(rows))


def read_ahead(images: ImageRows, row_batches: Iterable[np.ndarray]) -> Iterator[torch.Tensor]:
    """`images.take(rows)` for each batch of rows, in order, as tensors. Images on disk are read ahead by a
    DataLoader worker (the rows are drawn in this process as the worker asks for them, so a sampler's state
    must be recorded per batch, not read after the fact); images in memory are taken here.

    The loader gets a generator of its own: a DataLoader draws its workers' seed from torch's global random
    stream otherwise, which would shift every dropout mask drawn after it."""
    if not images.reads_disk:
        for rows in row_batches:
            yield torch.from_numpy(images.take(rows))
        return
    loader = DataLoader(_Take(images), sampler=row_batches, batch_size=None, num_workers=1, prefetch_factor=4,
                        generator=torch.Generator(), pin_memory=torch.cuda.is_available())
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        del iterator  # the consumer may stop early (early stopping): its worker goes now, not at exit
