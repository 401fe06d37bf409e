"""Classifier backends: one small class per model format, found through one registry.

A backend knows its files (`detect`), loads a model with its card (`load`), runs a batch (`forward`), switches
stochastic inference (MC dropout) on and off, moves to a device, and states the SHA-256 that identifies the
model. `LoadedModel` (classifier/adapter.py) puts the card's preprocessing and the output checks in front of
any of them. A new format is one module that defines its class and one line: in `BACKENDS` below for a built-in
format, or a `register_backend` call for one a user adds.
"""

from __future__ import annotations

from pathlib import Path

from cxr_audit.classifier.backends.base import ClassifierBackend, LoadOptions, TorchModuleBackend
from cxr_audit.classifier.backends.onnx import OnnxBackend
from cxr_audit.classifier.backends.pickled import PickleBackend
from cxr_audit.classifier.backends.state_dict import StateDictBackend
from cxr_audit.classifier.backends.torchscript import TorchScriptBackend
from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError

__all__ = ["BACKENDS", "ClassifierBackend", "LoadOptions", "TorchModuleBackend", "backend_for", "known_formats",
           "register_backend"]

# The registry, tried first to last: a backend registered later goes first, so it can claim its files.
BACKENDS: list[type[ClassifierBackend]] = [OnnxBackend, TorchScriptBackend, StateDictBackend, PickleBackend]


def register_backend(backend: type[ClassifierBackend]) -> type[ClassifierBackend]:
    """Add a backend (usable as a class decorator); a later one is tried first, so it can claim its files."""
    BACKENDS.insert(0, backend)
    return backend


def known_formats() -> list[str]:
    return sorted({name for backend in BACKENDS for name in backend.formats})


def backend_for(path: Path, card: ModelCard) -> type[ClassifierBackend]:
    """The backend of the card's format, or of whichever backend recognises the file."""
    if card.format:
        for backend in BACKENDS:
            if card.format in backend.formats:
                return backend
        raise UserInputError(f"Model {path}: its card's 'format' is {card.format!r}, not one this cxr-audit loads "
                             f"({', '.join(known_formats())}). Fix 'format' in the model card, or leave it out to "
                             "have the format detected.")
    if not path.exists():
        raise UserInputError(f"Model {path} does not exist or is not a file. Check --model.")
    for backend in BACKENDS:
        if backend.detect(path):
            return backend
    if path.is_dir():
        raise UserInputError(f"Model {path} is a folder that no model format recognises: name the model file "
                             "(TorchScript, ONNX, safetensors or torch.save weights). Check --model.")
    raise UserInputError(f"Model {path}: not a TorchScript/torch.save zip archive, ONNX or safetensors "
                         "file. Set 'format' in the model card if it is another supported format.")
