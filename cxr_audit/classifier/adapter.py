"""The adapter that feeds a loaded classifier images and maps its outputs: one interface, whatever the format
(images in [0, 1], (N, 1, H, W) -> probabilities per named concept). The format's own work (running a batch,
stochastic inference, devices) is its backend's (classifier/backends/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedModel:
    """A deployed classifier behind one interface: images in [0, 1] (N, 1, H, W) -> probabilities."""

    path: Path
    sha256: str
    card: ModelCard
    backend: Any  # a classifier.backends.ClassifierBackend

    @property
    def format(self) -> str:
        return self.backend.format

    @property
    def module(self) -> nn.Module | None:
        """The torch module when the model can be fine-tuned, else None."""
        return self.backend.module

    @property
    def notes(self) -> list[str]:
        return self.backend.notes

    @property
    def concepts(self) -> list[str]:
        """Concepts the model predicts (outputs named in the card), in output order."""
        return [n for n in self.card.output_names if n]

    @property
    def output_index(self) -> list[int]:
        return [i for i, n in enumerate(self.card.output_names) if n]

    @property
    def has_dropout(self) -> bool:
        return self.backend.has_dropout()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] grayscale at the card's size -> the model's input (channels, normalisation)."""
        x = images
        if self.card.normalization == "xrv":
            x = x * 2048.0 - 1024.0
        if self.card.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.card.normalization == "imagenet":
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x.expand(-1, 3, -1, -1) - mean) / std
        return x

    def raw_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own output for a batch: one (batch, outputs) tensor, or a user error saying what came."""
        out = self.backend.forward(self.preprocess(images))
        if not isinstance(out, torch.Tensor):
            raise UserInputError(f"Model {self.path} returned a {type(out).__name__}, not one tensor of shape (batch, "
                                 "outputs). Export a model whose forward returns the logits (or probabilities) alone.")
        if out.ndim != 2 or out.shape[0] != len(images):
            raise UserInputError(f"Model {self.path} returned shape {tuple(out.shape)} for {len(images)} images; "
                                 "(batch, outputs) expected.")
        return out

    def predict(self, images: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
        """Probabilities for the named outputs, (N, len(concepts)), checked: never NaN or infinite, and in
        [0, 1] where the card says the model outputs probabilities (`names` name the images in errors)."""
        out = self.raw_outputs(images)[:, self.output_index].float()
        bad = ~torch.isfinite(out).all(dim=1)
        if self.card.outputs == "probabilities":
            bad |= ((out < 0) | (out > 1)).any(dim=1)
        if bad.any():
            k = int(torch.nonzero(bad)[0])
            where = f"image {names[k]}" if names else f"image {k + 1} of a batch"
            kind = "values outside [0, 1] (the card says 'outputs: probabilities')" \
                if self.card.outputs == "probabilities" and torch.isfinite(out[k]).all() else "NaN or infinite values"
            raise UserInputError(f"Model {self.path} returned {kind} for {int(bad.sum())} of {len(out)} images of a "
                                 f"batch, e.g. {where}: {[round(float(v), 4) for v in out[k][:4]]}. No metric is "
                                 "computed from invalid outputs; check the model (and 'outputs' in its card).")
        return torch.sigmoid(out) if self.card.outputs == "logits" else out

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Probabilities for in-memory images (N, H, W) in [0, 1], resized to the card's input size."""
        size = self.card.input_size
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.tensor(images[start:start + batch_size], dtype=torch.float32)[:, None]
            if x.shape[-2:] != (size, size):
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            out.append(self.predict(x).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.concepts)), np.float32)

    def set_mc_dropout(self, enabled: bool) -> None:
        """Dropout on at inference (MC dropout) while batch norm stays in eval mode."""
        self.backend.set_stochastic(enabled)

    def to(self, device: torch.device) -> LoadedModel:
        self.backend.to(device)
        return self
