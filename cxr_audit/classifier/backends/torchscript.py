"""TorchScript models (torch.jit.save): a zip archive with code."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from cxr_audit.classifier.backends.base import LoadOptions, TorchModuleBackend
from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError


def zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive (torch.save and TorchScript both write one), None for another file."""
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UserInputError(f"Model {path} is a damaged zip archive ({error}): a truncated or corrupted "
                             "TorchScript or torch.save file. Export it again.") from None


class TorchScriptBackend(TorchModuleBackend):
    formats = ("torchscript",)

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() in (".onnx", ".safetensors"):
            return False
        names = zip_names(path)
        return names is not None and any(n.endswith("/code/__torch__.py") or "/code/" in n for n in names)

    @classmethod
    def load(cls, path: Path, card: ModelCard, options: LoadOptions) -> tuple[TorchScriptBackend, ModelCard]:
        try:
            with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; deployed models still use it
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as error:
            raise UserInputError(f"Model {path} cannot be loaded as TorchScript ({str(error).splitlines()[0][:160]}). "
                                 "Is the file complete? Export it again with torch.jit.save.") from None
        return cls(module, "torchscript"), card
