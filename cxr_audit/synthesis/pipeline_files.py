"""A diffusers pipeline folder on disk: whether a folder is one, its files, and its identity (a hash over every
weight and config file). Shared by the text-conditioned backend and the LoRA adapters trained for such a base."""

from __future__ import annotations

import functools
from pathlib import Path

from cxr_audit.provenance import sha256_files

PIPELINE_INDEX = "model_index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")


def is_text_pipeline(folder: str | Path) -> bool:
    return (Path(folder) / PIPELINE_INDEX).exists()


def pipeline_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def text_pipeline_sha256(folder: str | Path) -> str:
    """One identity for a pipeline folder: a hash over every weight and config file, in path order. Hashed
    once per process while no file's size or time changes (a base pipeline is gigabytes, and a LoRA run checks
    its base at planning and again at loading)."""
    stats = [(str(path), path.stat()) for path in pipeline_files(Path(folder))]
    return _hash_files(tuple((path, stat.st_size, stat.st_mtime_ns) for path, stat in stats))


@functools.lru_cache(maxsize=8)
def _hash_files(signature: tuple[tuple[str, int, int], ...]) -> str:
    return sha256_files(Path(path) for path, _, _ in signature)
