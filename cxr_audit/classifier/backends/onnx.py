"""ONNX models, run by onnxruntime on the CPU (no torch module: evaluated and probed, never fine-tuned)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_audit.classifier.backends.base import LoadOptions
from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError


class OnnxBackend:
    formats = ("onnx",)
    saves_weights = False
    module = None

    def __init__(self, session):
        self.session, self.format, self.notes = session, "onnx", []

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() == ".onnx"

    @classmethod
    def load(cls, path: Path, card: ModelCard, options: LoadOptions) -> tuple[OnnxBackend, ModelCard]:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
            raise UserInputError(f"Model {path} is not a loadable ONNX model ({type(error).__name__}: "
                                 f"{str(error).splitlines()[0][:160]}). Export it again.") from None
        return cls(session), card

    def forward(self, x: torch.Tensor) -> Any:
        name = self.session.get_inputs()[0].name
        out = self.session.run(None, {name: x.cpu().numpy().astype(np.float32)})
        return torch.from_numpy(np.asarray(out[0])) if len(out) == 1 else out

    def has_dropout(self) -> bool:
        return False

    def set_stochastic(self, enabled: bool) -> None:
        """An exported graph has no switchable dropout (uncertainty falls back to test-time augmentation)."""

    def to(self, device: torch.device) -> None:
        """onnxruntime runs on the CPU here."""

    @classmethod
    def sha256(cls, path: Path) -> str:
        from cxr_audit.provenance import sha256_file

        return sha256_file(path)
