"""A pickled whole model (torch.save(model)): loaded only when the user allows pickles, since unpickling can run
arbitrary code. Chosen by the card's `format: pickle`, never detected."""

from __future__ import annotations

from pathlib import Path

import torch

from cxr_audit.classifier.backends.base import LoadOptions, TorchModuleBackend
from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError


class PickleBackend(TorchModuleBackend):
    formats = ("pickle",)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return False

    @classmethod
    def load(cls, path: Path, card: ModelCard, options: LoadOptions) -> tuple[PickleBackend, ModelCard]:
        if not options.allow_pickle:
            allow = f", or pass {options.pickle_option} if you trust the file" if options.pickle_option else ""
            raise UserInputError(
                f"Model {path} is a pickled Python object. Unpickling can run arbitrary code, so it is refused "
                f"by default (torch.load weights_only=True). Export TorchScript, ONNX or a state_dict{allow}.")
        module = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise UserInputError(f"Model {path} unpickled to a {type(module).__name__}, not a torch module. Save the "
                                 "model itself (torch.save(model)), or better a state_dict, TorchScript or ONNX.")
        notes = []
        if getattr(module, "op_threshs", None) is not None:  # a torchxrayvision model object
            module.op_threshs, module.apply_sigmoid = None, False
            notes.append("torchxrayvision model with op_threshs: op_norm disabled, outputs are raw sigmoid "
                         "probabilities")
            card = card.model_copy(update={"outputs": "logits"})
        notes.append("loaded with pickle (--allow-pickle)")
        return cls(module, "pickle", notes), card
