"""Hashes, atomic writes, and reading the JSON documents a user points at.

Writing goes to a temporary name in the same folder and is renamed into place, so a killed run never leaves
a half-written file. (Which results may be replaced is decided by the run directory: rundir.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cxr_audit.errors import UserInputError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One hash over several files (in the given order), for inputs that come as a set of files."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def dataset_sha256(data: str | Path) -> str:
    """The identity of a dataset's labels: the file's SHA-256, or for a folder (MIMIC) one hash over its label,
    metadata and split files."""
    data = Path(data)
    if data.is_dir():
        return sha256_files(sorted(p for p in data.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz"))))
    if not data.exists():
        raise UserInputError(f"Dataset labels {data} do not exist. Check --data.")
    return sha256_file(data)


def read_json(path: str | Path, missing_hint: str) -> Any:
    """A JSON document the user points at; missing or malformed is a clear error, not a traceback."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path} does not exist. {missing_hint}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}.") from None


def _new_file_mode() -> int:
    """The mode the umask gives a new file (mkstemp makes 0600, which other users, CI artefact steps and web
    servers could not read)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, document: Any) -> None:
    atomic_write_text(path, json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")


class Document(BaseModel):
    """A JSON document the tool writes and reads back: a key it does not know is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


def read_document(path: str | Path, model, what: str, missing_hint: str):
    """A JSON document validated by a pydantic `model`: missing, malformed or mistyped is a clear user error
    naming the file and the key (a document from another tool or an edited one), never a traceback."""
    from pydantic import ValidationError

    path = Path(path)
    document = read_json(path, missing_hint)
    try:
        return model.model_validate(document)
    except ValidationError as error:
        problems = [f"key '{'.'.join(map(str, e['loc'])) or '(top level)'}': {e['msg']}" for e in error.errors()[:5]]
        more = f" (and {error.error_count() - 5} more)" if error.error_count() > 5 else ""
        raise UserInputError(f"{path} is not a valid {what}: " + "; ".join(problems) + more +
                             ". Was it written by another version of cxr-audit, or edited?") from None
