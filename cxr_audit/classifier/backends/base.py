"""What every classifier backend is: the protocol, the load options, and the torch-module base that the
PyTorch formats share (stochastic inference, devices, the file's hash)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from cxr_audit.classifier.card import ModelCard


@dataclass(frozen=True)
class LoadOptions:
    allow_pickle: bool = False
    pickle_option: str | None = "--allow-pickle"  # how the calling command lets a user allow pickles (None: never)


class ClassifierBackend(Protocol):
    formats: ClassVar[tuple[str, ...]]   # the card's `format` values this backend loads
    saves_weights: ClassVar[bool]        # a fine-tuned copy is saved as a state dict of its architecture
    module: nn.Module | None             # the torch module when the model can be fine-tuned, else None
    format: str                          # what was loaded (one of `formats`)
    notes: list[str]                     # what loading decided (recorded with the model)

    @classmethod
    def detect(cls, path: Path) -> bool:
        """Whether `path` (a file or folder) holds a model of this format, when the card names none."""

    @classmethod
    def load(cls, path: Path, card: ModelCard, options: LoadOptions) -> tuple[ClassifierBackend, ModelCard]:
        """The loaded model and its card (a backend may complete the card from the file: output names, ...)."""

    def forward(self, x: torch.Tensor) -> Any:
        """The model's own output for a preprocessed batch (checked by LoadedModel)."""

    def set_stochastic(self, enabled: bool) -> None:
        """Dropout on at inference (MC dropout), batch norm kept in eval mode; a no-op without dropout."""

    def has_dropout(self) -> bool: ...

    def to(self, device: torch.device) -> None: ...

    @classmethod
    def sha256(cls, path: Path) -> str:
        """The model's identity (a file's SHA-256, or a folder's over its files), without loading it."""


def dropout_modules(module: nn.Module | None) -> list[nn.Module]:
    """Dropout layers, eager or TorchScript (scripted modules keep their class name in original_name)."""
    if module is None:
        return []
    return [m for m in module.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd)
            or getattr(m, "original_name", "") in ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout")]


class TorchModuleBackend:
    """What every backend with a torch module shares: stochastic inference, devices, the file's hash."""

    saves_weights: ClassVar[bool] = False

    def __init__(self, module: nn.Module, format: str, notes: list[str] | None = None):
        self.module, self.format, self.notes = module, format, notes or []
        module.eval()

    def forward(self, x: torch.Tensor) -> Any:
        if x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x)

    def has_dropout(self) -> bool:
        return bool(dropout_modules(self.module))

    def set_stochastic(self, enabled: bool) -> None:
        self.module.eval()
        for m in dropout_modules(self.module):
            m.train(enabled)

    def to(self, device: torch.device) -> None:
        self.module.to(device)
        if device.type == "cuda":
            self.module.to(memory_format=torch.channels_last)

    @classmethod
    def sha256(cls, path: Path) -> str:
        from cxr_audit.provenance import sha256_file

        return sha256_file(path)
