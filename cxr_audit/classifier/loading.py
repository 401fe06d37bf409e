"""Loading the deployed classifier safely, through the format's backend (classifier/backends/).

Built in: TorchScript, ONNX (onnxruntime), a torchvision architecture (or the project's own small CNN) +
state_dict / safetensors, a torchxrayvision DenseNet state_dict (its op_norm undone so outputs are raw sigmoid
probabilities), and a pickled whole model only with an explicit `allow_pickle` (plain `torch.load` would run
arbitrary code). The card is checked against the model's real output shape at load time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxr_audit.classifier.adapter import LoadedModel
from cxr_audit.classifier.backends import LoadOptions, backend_for
from cxr_audit.classifier.card import ModelCard, load_card
from cxr_audit.errors import UserInputError


def load_model(path: str | Path, card_path: str | Path | None = None, allow_pickle: bool = False,
               card: ModelCard | None = None, pickle_option: str | None = "--allow-pickle") -> LoadedModel:
    """Load a deployed classifier and check it against its card with one dummy forward pass.

    `pickle_option` is how the calling command lets a user allow pickled models (None: it does not)."""
    path = Path(path)
    card = card or load_card(card_path, path)
    backend_class = _backend(path, card)
    backend, card = backend_class.load(path, card, LoadOptions(allow_pickle, pickle_option))
    loaded = LoadedModel(path=path, sha256=backend.sha256(path), card=card, backend=backend)
    _check_against_card(loaded)
    return loaded


def model_sha256(path: str | Path, card_path: str | Path | None = None) -> str:
    """A model's identity as its backend states it (a file's SHA-256, a model folder's), without loading it."""
    path = Path(path)
    return _backend(path, load_card(card_path, path)).sha256(path)


def _backend(path: Path, card: ModelCard):
    if not path.exists():
        raise UserInputError(f"Model {path} does not exist or is not a file. Check --model.")
    backend_class = backend_for(path, card)
    if path.is_dir() and not getattr(backend_class, "folder", False):
        raise UserInputError(f"Model {path} is a folder, and the {card.format or backend_class.formats[0]} format "
                             "is a file: name the model file. Check --model.")
    return backend_class


@torch.inference_mode()
def _check_against_card(model: LoadedModel) -> None:
    dummy = torch.zeros(1, 1, model.card.input_size, model.card.input_size)
    try:
        out = model.raw_outputs(dummy)
    except UserInputError:  # the model ran and returned something else than (batch, outputs): said as it is
        raise
    except Exception as exc:
        raise UserInputError(f"Model {model.path} failed on a {model.card.channels}-channel "
                             f"{model.card.input_size}px input ({type(exc).__name__}: {str(exc)[:200]}). Check "
                             "'input_size' and 'channels' in the model card.") from None
    n_outputs = int(out.shape[-1]) if out.ndim == 2 else -1
    names = model.card.output_names
    if not names:
        raise UserInputError(f"Model {model.path} has {n_outputs} outputs but the model card names none: set "
                             "'output_names' (one concept name per output, null to ignore one).")
    if n_outputs != len(names):
        raise UserInputError(f"Model {model.path} returns {n_outputs} outputs per image (shape "
                             f"{tuple(out.shape)}), but its card names {len(names)}. Fix 'output_names' in the "
                             "model card so there is one entry per output.")
