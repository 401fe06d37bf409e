"""Decode once: radiographs decoded and resized to a model's input size, kept in a memory-mapped store on disk
and reused across arms, reruns and stages (and by every process of a multi-process run on the machine).

Decoding dominates CPU inference (a 1024 px PNG takes longer to decode than a small CNN takes to score it),
and an audit reads the same test images once per arm. The store is keyed by the image file's content SHA-256
and the preprocessing (size and `PREPROCESSING`): a changed file, or another size, is another entry. Rows are
the exact float32 output of `load_resized`, so a cached image gives bit-identical results.

Layout: `pixels.f32` (rows of size x size float32, append-only) and `index.tsv` (hash, row). A row is
written and synced before its index line, under a file lock, so a killed process leaves at most an unindexed
partial row, which the next writer truncates. Rows are read with `pread` (data/image_rows.py says why not a
memory map).

Cost: 4 x size^2 bytes an image (16 KiB at 64 px, 64 KiB at 128, 196 KiB at 224). Rows stay float32: they are
the decoder's exact output, so an image read from the store and one decoded now are the same bits, and
nothing a run computes depends on whether the store was warm (a 16-bit store would halve the disk and read
time, but the model inputs would then depend on whether an image came from the store, or every input would
have to be rounded, changing every audit's numbers; benchmarks/bench_finetune_scale.py measures both errors).
"""

from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxr_audit.data.images import load_resized
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file

# Bump when load_resized's output changes (resampling, scaling, DICOM windowing): old entries are then unused.
PREPROCESSING = "load_resized-v1"
_INDEX_LINE = re.compile(r"^([0-9a-f]{64})\t(\d+)$")


def image_sha256(path: Path) -> str:
    """An image file's content hash (what caches key on); a missing file is a user error naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Image {path} {'is a folder' if path.is_dir() else 'does not exist'}. Check the "
                             "dataset root (--root) and the labels file's paths.")
    return sha256_file(path)


class DecodedImageStore:
    """Decoded images at one size, by content hash."""

    def __init__(self, cache_dir: Path, size: int):
        self.size = size
        self.folder = Path(cache_dir) / "decoded" / f"{size}px-{PREPROCESSING}"
        self.pixels_path, self.index_path = self.folder / "pixels.f32", self.folder / "index.tsv"
        self._row_bytes = size * size * 4
        self.rows: dict[str, int] = {}
        self._index_read = 0  # bytes of the index already parsed into `rows`
        self._read_new_index_lines()
        self._fd: int | None = None
        self._fd_pid = -1

    def _complete_rows(self) -> int:
        return self.pixels_path.stat().st_size // self._row_bytes if self.pixels_path.exists() else 0

    def _read_new_index_lines(self) -> None:
        """Add the index entries written since the last read (by any process): only the new bytes are parsed,
        so adding batch after batch stays linear in the store's size."""
        if not self.index_path.exists():
            return
        with open(self.index_path, "rb") as index:
            index.seek(self._index_read)
            new = index.read()
        end = new.rfind(b"\n") + 1  # a torn last line waits; the next writer ends it, and it parses as invalid
        complete = self._complete_rows()
        for line in new[:end].decode("utf-8", errors="replace").splitlines():
            match = _INDEX_LINE.match(line)
            if match and int(match[2]) < complete:  # a torn line, or a row never finished, is ignored
                self.rows[match[1]] = int(match[2])
        self._index_read += end

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.rows

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": -1}  # a worker process opens the file itself

    def get(self, sha256: str) -> np.ndarray:
        from cxr_audit.data.image_rows import read_store_rows

        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.pixels_path, os.O_RDONLY), os.getpid()
        return read_store_rows(self._fd, self.pixels_path, self.size, np.array([self.rows[sha256]]))[0, 0]

    def images(self, hashes: list[str]):
        """The stored images of these hashes (every one stored), as rows read on demand."""
        from cxr_audit.data.image_rows import StoredImages

        return StoredImages(self.pixels_path, self.size, np.array([self.rows[sha] for sha in hashes], np.int64))

    def _index_ends_mid_line(self) -> bool:
        """A killed writer's torn last line: the next entry must start on a line of its own."""
        if not self.index_path.exists() or not self.index_path.stat().st_size:
            return False
        with open(self.index_path, "rb") as index:
            index.seek(-1, os.SEEK_END)
            return index.read(1) != b"\n"

    @contextmanager
    def _locked(self):
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / "lock", "w")  # noqa: SIM115 - closed below, after the unlock
        except OSError as error:
            raise UserInputError(f"The image cache {self.folder} cannot be written ({error.strerror}). Point "
                                 "CXR_AUDIT_CACHE at a writable folder, or pass --no-cache.") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, entries: dict[str, np.ndarray]) -> None:
        """Store decoded images (hash -> (size, size) float32); ones another process stored meanwhile are
        skipped."""
        if not entries:
            return
        with self._locked():
            self._read_new_index_lines()
            new = [(sha, pixels) for sha, pixels in entries.items() if sha not in self.rows]
            if not new:
                return
            first = self._complete_rows()
            with open(self.pixels_path, "ab") as handle:
                handle.truncate(first * self._row_bytes)  # drops a partial row a killed writer left
                handle.writelines(np.ascontiguousarray(pixels, np.float32).tobytes() for _, pixels in new)
                handle.flush()
                os.fsync(handle.fileno())
            torn = self._index_ends_mid_line()
            with open(self.index_path, "a") as index:
                index.write("\n" * torn + "".join(f"{sha}\t{first + k}\n" for k, (sha, _) in enumerate(new)))
                index.flush()
                os.fsync(index.fileno())
            self._read_new_index_lines()  # what this call wrote


class ImageFiles(Dataset):
    """Decoded, resized images in [0, 1] as (1, size, size) tensors, from the store where it holds them.

    Each item is (image, error, content hash, whether it was decoded now): an error travels back from a
    DataLoader worker as data, so the user sees the message, not the worker's traceback."""

    def __init__(self, paths: list[Path], size: int, store: DecodedImageStore | None = None,
                 hashes: list[str] | None = None):
        self.paths, self.size, self.store, self.hashes = paths, size, store, hashes

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str, str, bool]:
        try:
            sha = ""
            if self.store is not None:
                sha = self.hashes[index] if self.hashes else image_sha256(self.paths[index])
                if sha in self.store:
                    return torch.from_numpy(self.store.get(sha)).unsqueeze(0), "", sha, False
            pixels = np.require(load_resized(self.paths[index], self.size), requirements="W")  # torch wants writable
            return torch.from_numpy(pixels).unsqueeze(0), "", sha, True
        except UserInputError as error:
            return torch.zeros(1, self.size, self.size), str(error), "", False


def image_loader(paths: list[Path], size: int, batch_size: int, workers: int | None,
                 store: DecodedImageStore | None = None, hashes: list[str] | None = None) -> DataLoader:
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    return DataLoader(ImageFiles(paths, size, store, hashes), batch_size=batch_size, shuffle=False,
                      num_workers=workers if len(paths) > batch_size else 0,
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def decoded_batches(loader: DataLoader):
    """The loader's image batches, in order; newly decoded images go into its store. An image that could not
    be decoded stops the run with its message."""
    store = loader.dataset.store
    for images, errors, hashes, decoded_now in loader:
        failed = [message for message in errors if message]
        if failed:
            raise UserInputError(failed[0])
        if store is not None:
            store.add({sha: images[k, 0].numpy() for k, sha in enumerate(hashes) if decoded_now[k]})
        yield images


def store_images(paths: list[Path], size: int, cache_dir: Path, workers: int | None = None, progress: bool = False,
                 desc: str = "decoding images"):
    """Images at `paths` as rows of the decoded-image store under `cache_dir` (data/image_rows.StoredImages):
    those not stored yet are decoded into it first, a batch at a time, so memory stays flat however many there
    are."""
    from concurrent.futures import ThreadPoolExecutor

    from cxr_audit.progress import progress_bar

    store = DecodedImageStore(cache_dir, size)
    workers = min(4, os.cpu_count() or 1) if workers is None else max(workers, 1)
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL while it hashes
        hashes = list(pool.map(image_sha256, paths, chunksize=64))
    first_of = {}
    for k, sha in enumerate(hashes):
        if sha not in store:
            first_of.setdefault(sha, k)  # an image stored twice in the dataset is decoded once
    missing = sorted(first_of.values())
    if missing:
        with progress_bar(total=len(missing), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            loader = image_loader([paths[k] for k in missing], size, 64, workers, store, [hashes[k] for k in missing])
            for images in decoded_batches(loader):
                bar.update(len(images))
    return store.images(hashes)


def image_batches(paths: list[Path], size: int, cache_dir: Path | None = None, workers: int | None = None,
                  progress: bool = False, desc: str = "loading images"):
    """Images at `paths`, in order, a batch at a time as (n, 1, size, size) float32 in [0, 1]: decoded in
    parallel, from and into the decoded-image store under `cache_dir` when one is given. For work that needs
    each image once (hashes, scores), so memory does not grow with the number of images."""
    from cxr_audit.progress import progress_bar

    store = DecodedImageStore(cache_dir, size) if cache_dir is not None else None
    with progress_bar(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for images in decoded_batches(image_loader(paths, size, 64, workers, store)):
            bar.update(len(images))
            yield images.numpy()


def load_images(paths: list[Path], size: int, cache_dir: Path | None = None, workers: int | None = None,
                progress: bool = False, desc: str = "loading images") -> np.ndarray:
    """Images at `paths` as (N, 1, size, size) float32 in [0, 1], all in memory (for sets known to be small;
    `store_images` and `image_batches` for any size)."""
    out = np.empty((len(paths), 1, size, size), np.float32)
    start = 0
    if paths:
        for images in image_batches(paths, size, cache_dir, workers, progress, desc):
            out[start:start + len(images)] = images
            start += len(images)
    return out
