"""Weights for a known architecture: a torchvision model or the project's small CNN (the card names its
`architecture`), or a torchxrayvision DenseNet (recognised by its keys; its op_norm undone so outputs are raw
sigmoid probabilities). Read as safetensors, or with torch.load(weights_only=True): never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_audit import concepts
from cxr_audit.classifier.backends.base import LoadOptions, TorchModuleBackend
from cxr_audit.classifier.backends.torchscript import TorchScriptBackend, zip_names
from cxr_audit.classifier.card import ModelCard
from cxr_audit.errors import UserInputError


class StateDictBackend(TorchModuleBackend):
    formats = ("torchvision", "torchxrayvision")
    saves_weights = True

    @classmethod
    def detect(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        if path.suffix.lower() == ".safetensors":
            return True
        # a state_dict saved with torch.save (a zip without code); the keys decide torchvision vs xrv
        return path.suffix.lower() != ".onnx" and zip_names(path) is not None and not TorchScriptBackend.detect(path)

    @classmethod
    def load(cls, path: Path, card: ModelCard, options: LoadOptions) -> tuple[StateDictBackend, ModelCard]:
        state = _safe_state_dict(path, options.pickle_option if not options.allow_pickle else None)
        notes: list[str] = []
        if _is_xrv_state_dict(state) and card.format in (None, "torchxrayvision") and not card.architecture:
            module, card = _load_xrv(state, card, notes)
            return cls(module, "torchxrayvision", notes), card
        if not card.architecture:
            raise UserInputError(f"Model {path} is a state_dict: the model card must name its torchvision "
                                 "'architecture' (e.g. densenet121) and 'output_names'.")
        n_outputs = len(card.output_names) or _guess_outputs(state)
        module = _torchvision_model(card.architecture, n_outputs, card.channels, state)
        _load_state(module, state, f"torchvision {card.architecture}")
        return cls(module, "torchvision", notes), card


def _safe_state_dict(path: Path, pickle_option: str | None) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for bad headers
            raise UserInputError(f"Model {path} is not a valid safetensors file ({type(error).__name__}: "
                                 f"{str(error)[:120]}). Save the weights again.") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled classes: say what that means
        allow = f"; or, if you trust the file, pass {pickle_option}" if pickle_option else ""
        raise UserInputError(
            f"Model {path} is not a plain state_dict: loading it needs Python's pickle, which can run "
            f"arbitrary code, or the file is damaged ({type(exc).__name__}). Export a state_dict "
            f"(torch.save(model.state_dict())), TorchScript or ONNX instead{allow}."
        ) from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserInputError(f"Model {path} does not hold a state_dict of tensors.")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _is_xrv_state_dict(state: dict[str, torch.Tensor]) -> bool:
    return "features.conv0.weight" in state and "classifier.weight" in state and "features.norm5.weight" in state


def _torchvision_model(architecture: str, n_outputs: int, channels: int,
                       state: dict[str, torch.Tensor]) -> nn.Module:
    import torchvision

    from cxr_audit.classifier.small_cnn import SMALL_CNN_ARCHITECTURE, small_cnn_from_state

    if architecture == SMALL_CNN_ARCHITECTURE:  # the project's own small CNN (demo model, QC checkers)
        return small_cnn_from_state(state, n_outputs)
    try:
        builder = torchvision.models.get_model_builder(architecture)
    except ValueError:
        raise UserInputError(f"Unknown torchvision architecture {architecture!r} in the model card. Examples: "
                             "densenet121, resnet50, efficientnet_b0, convnext_tiny, vit_b_16.") from None
    model = builder(weights=None, num_classes=n_outputs)
    if channels == 1:
        first_conv_to_one_channel(model)
    return model


def first_conv_to_one_channel(model: nn.Module) -> None:
    """Grayscale torchvision models: the first convolution takes one channel."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            replacement = nn.Conv2d(1, module.out_channels, module.kernel_size, module.stride, module.padding,
                                    module.dilation, module.groups, module.bias is not None)
            setattr(parent, name.rsplit(".", 1)[-1], replacement)
            return


def _load_xrv(state: dict[str, torch.Tensor], card: ModelCard, notes: list[str]) -> tuple[nn.Module, ModelCard]:
    import torchxrayvision as xrv

    thresholds = state.pop("op_threshs", None)
    n_outputs = state["classifier.weight"].shape[0]
    model = xrv.models.DenseNet(num_classes=n_outputs, in_channels=state["features.conv0.weight"].shape[1],
                                op_threshs=None, apply_sigmoid=False)
    _load_state(model, state, "torchxrayvision DenseNet")
    updates: dict = {"outputs": "logits", "normalization": card.normalization, "channels": 1}
    if "normalization" not in card.model_fields_set:
        updates["normalization"] = "xrv"
    pathologies = xrv.datasets.default_pathologies  # the output order of torchxrayvision's 18-output models
    if not card.output_names and n_outputs == len(pathologies):
        updates["output_names"] = [concepts.try_resolve(n) for n in pathologies]
    if thresholds is not None:
        notes.append("torchxrayvision checkpoint with op_threshs: its op_norm is undone, outputs are raw sigmoid "
                     "probabilities; its operating points are used as thresholds where the card sets none")
        names = updates.get("output_names", card.output_names)
        card_thresholds = dict(card.thresholds)
        for name, value in zip(names, thresholds.tolist()):
            if name and np.isfinite(value):
                card_thresholds.setdefault(name, float(value))
        updates["thresholds"] = card_thresholds
    return model, card.model_copy(update=updates)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        problems = [f"{len(keys)} {kind} ({some(keys)})" for kind, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("keys of another shape", shapes))
                    if keys]
        raise UserInputError(f"The weights do not fit a {what}: {'; '.join(problems)}. Check 'architecture', "
                             "'channels' and 'output_names' in the model card.")
    model.load_state_dict(state, strict=True)


def _guess_outputs(state: dict[str, torch.Tensor]) -> int:
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else 1
