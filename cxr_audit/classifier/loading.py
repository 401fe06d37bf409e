"""Loading the deployed classifier safely.

Supported: TorchScript, ONNX (onnxruntime), a torchvision architecture (or the project's own small CNN) +
state_dict / safetensors, a torchxrayvision DenseNet state_dict (its op_norm undone so outputs are raw sigmoid
probabilities), and a pickled whole model only with an explicit `allow_pickle` (plain `torch.load` would run
arbitrary code). The card is checked against the model's real output shape at load time.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cxr_audit import concepts
from cxr_audit.classifier.adapter import LoadedModel
from cxr_audit.classifier.card import ModelCard, ModelFormat, load_card
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file


def detect_format(path: Path) -> ModelFormat:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".safetensors",):
        return "torchvision"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":  # torch.save and TorchScript both write zip archives
        raise UserInputError(f"Model {path}: not a TorchScript/torch.save zip archive, ONNX or safetensors "
                             "file. Set 'format' in the model card if it is another supported format.")
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise UserInputError(f"Model {path} is a damaged zip archive ({error}): a truncated or corrupted "
                             "TorchScript or torch.save file. Export it again.") from None
    if any(n.endswith("/code/__torch__.py") or "/code/" in n for n in names):
        return "torchscript"
    return "torchvision"  # a state_dict saved with torch.save; the keys decide torchvision vs xrv


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
        _first_conv_to_one_channel(model)
    return model


def _first_conv_to_one_channel(model: nn.Module) -> None:
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


def load_model(path: str | Path, card_path: str | Path | None = None, allow_pickle: bool = False,
               card: ModelCard | None = None, pickle_option: str | None = "--allow-pickle") -> LoadedModel:
    """Load a deployed classifier and check it against its card with one dummy forward pass.

    `pickle_option` is how the calling command lets a user allow pickled models (None: it does not)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"Model {path} does not exist or is not a file. Check --model.")
    card = card or load_card(card_path, path)
    notes: list[str] = []
    model_format = card.format or detect_format(path)
    module: nn.Module | None = None
    session = None
    if model_format == "onnx":
        session = _onnx_session(path)
    elif model_format == "torchscript":
        try:
            with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript; deployed models still use it
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as error:
            raise UserInputError(f"Model {path} cannot be loaded as TorchScript ({str(error).splitlines()[0][:160]}). "
                                 "Is the file complete? Export it again with torch.jit.save.") from None
    elif model_format == "pickle":
        if not allow_pickle:
            allow = f", or pass {pickle_option} if you trust the file" if pickle_option else ""
            raise UserInputError(
                f"Model {path} is a pickled Python object. Unpickling can run arbitrary code, so it is refused "
                f"by default (torch.load weights_only=True). Export TorchScript, ONNX or a state_dict{allow}.")
        module = torch.load(path, map_location="cpu", weights_only=False)
        if getattr(module, "op_threshs", None) is not None:  # a torchxrayvision model object
            module.op_threshs, module.apply_sigmoid = None, False
            notes.append("torchxrayvision model with op_threshs: op_norm disabled, outputs are raw sigmoid "
                         "probabilities")
            card = card.model_copy(update={"outputs": "logits"})
        notes.append("loaded with pickle (--allow-pickle)")
    else:
        state = _safe_state_dict(path, pickle_option if not allow_pickle else None)
        if _is_xrv_state_dict(state) and (card.format in (None, "torchxrayvision")) and not card.architecture:
            model_format = "torchxrayvision"
            module, card = _load_xrv(state, card, notes)
        else:
            if not card.architecture:
                raise UserInputError(f"Model {path} is a state_dict: the model card must name its torchvision "
                                     "'architecture' (e.g. densenet121) and 'output_names'.")
            n_outputs = len(card.output_names) or _guess_outputs(state)
            module = _torchvision_model(card.architecture, n_outputs, card.channels, state)
            _load_state(module, state, f"torchvision {card.architecture}")
    if module is not None:
        module.eval()
    loaded = LoadedModel(path=path, sha256=sha256_file(path), card=card, format=model_format, module=module,
                         onnx_session=session, notes=notes)
    _check_against_card(loaded)
    return loaded


def _onnx_session(path: Path):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types for bad files
        raise UserInputError(f"Model {path} is not a loadable ONNX model ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:160]}). Export it again.") from None


def _guess_outputs(state: dict[str, torch.Tensor]) -> int:
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else 1


@torch.inference_mode()
def _check_against_card(model: LoadedModel) -> None:
    dummy = torch.zeros(1, 1, model.card.input_size, model.card.input_size)
    try:
        out = model.raw_outputs(dummy)
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
