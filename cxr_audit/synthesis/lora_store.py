"""LoRA adapters on a pretrained text-to-image pipeline: what a base pipeline must be, and how the adapters are
saved, identified and checked.

A LoRA folder (written by `train-generator --base`) holds diffusers' own LoRA file
(`pytorch_lora_weights.safetensors`, the format `load_lora_weights` reads) and `lora_card.json`, which names
the base pipeline's folder and pins its SHA-256 and the LoRA file's: adapters applied to another base than
they were trained on would edit with weights that mean nothing there, so loading refuses it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxr_audit import __version__
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, sha256_file
from cxr_audit.synthesis.pipeline_files import text_pipeline_sha256

LORA_CARD = "lora_card.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name: load_lora_weights finds it by default
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# The UNet's attention projections: where LoRA adapts a text-to-image model to new prompts (the diffusers
# training scripts' choice).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class LoraCard:
    base: str                   # the base pipeline's folder, absolute
    base_sha256: str            # text_pipeline_sha256 of that folder when the adapters were trained
    concepts: list[str]
    image_size: int
    rank: int
    steps: int
    seed: int
    batch_size: int             # images per step, over all processes
    lr: float
    prompt_style: str
    training_data_sha256: str
    training_images: int
    prediction_type: str        # what the base UNet predicts (its scheduler's setting)
    eval_loss_before: float     # the denoising loss on a fixed set of training images, noise and timesteps
    eval_loss_after: float
    processes: int = 1
    mixed_precision: str = "no"
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    tool_version: str = __version__
    weights_sha256: dict[str, str] = field(default_factory=dict)


def is_lora(folder: str | Path) -> bool:
    return (Path(folder) / LORA_CARD).is_file()


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserInputError(f"{path} is not readable JSON ({error}). The base pipeline is damaged: save it again "
                             "with diffusers' save_pretrained.") from None
    if not isinstance(config, dict):
        raise UserInputError(f"{path} is not a JSON object. The base pipeline is damaged: save it again with "
                             "diffusers' save_pretrained.")
    return config


def check_base_pipeline(folder: str | Path) -> Path:
    """`folder`, checked to be a diffusers text-to-image pipeline whose UNet can be fine-tuned with LoRA in its
    VAE's latent space, from its config files alone (no weights are read)."""
    folder = Path(folder)
    layout = ("Pass --base with a local diffusers text-to-image folder (model_index.json, unet/, vae/, "
              "text_encoder/, tokenizer/, scheduler/), as StableDiffusionPipeline.save_pretrained writes it.")
    if not folder.is_dir():
        raise UserInputError(f"--base {folder} is not a folder. {layout}")
    missing = [part for part in ("model_index.json", *(f"{p}/" for p in PIPELINE_PARTS))
               if not (folder / part.rstrip("/")).exists()]
    if missing:
        raise UserInputError(f"--base {folder} is not a diffusers pipeline: it has no {', '.join(missing)}. {layout}")
    read_config(folder / "model_index.json")
    unet = read_config(folder / "unet" / "config.json") if (folder / "unet" / "config.json").exists() else None
    vae = read_config(folder / "vae" / "config.json") if (folder / "vae" / "config.json").exists() else None
    if unet is None or vae is None:
        raise UserInputError(f"--base {folder}: unet/config.json or vae/config.json is missing. {layout}")
    latent = int(vae.get("latent_channels", 4))
    channels_in, channels_out = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
    if channels_in != latent or channels_out != latent:
        raise UserInputError(
            f"{folder / 'unet' / 'config.json'}: the UNet takes {channels_in} channels in and {channels_out} out, but "
            f"the VAE's latents have {latent}. LoRA fine-tuning needs a text-to-image UNet on those latents (an "
            "inpainting UNet takes extra mask channels): pass the text-to-image pipeline of that model as --base.")
    if not unet.get("cross_attention_dim"):
        raise UserInputError(f"{folder / 'unet' / 'config.json'}: the UNet has no cross-attention, so it cannot be "
                             "conditioned on prompts. Pass a text-to-image pipeline as --base.")
    return folder


def save_lora(unet, card: LoraCard, out: Path) -> None:
    """The UNet's adapters in diffusers' LoRA format, then the card pinning them and the base."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)
    card.weights_sha256 = {LORA_WEIGHTS: sha256_file(out / LORA_WEIGHTS)}
    atomic_write_json(out / LORA_CARD, asdict(card))


def read_lora_card(folder: str | Path) -> LoraCard:
    path = Path(folder) / LORA_CARD
    try:
        return LoraCard(**read_config(path))
    except TypeError as error:
        raise UserInputError(f"{path} is not a LoRA card cxr-audit wrote ({error}). Retrain the adapters with "
                             "`cxr-audit train-generator --base`.") from None


def verify_lora(folder: str | Path) -> LoraCard:
    """The card of the LoRA in `folder`, after checking that its weights and its base pipeline are the ones it
    pins (the base is hashed: seconds for a multi-gigabyte pipeline, once per process)."""
    folder = Path(folder)
    card = read_lora_card(folder)
    for relative, expected in card.weights_sha256.items():
        path = folder / relative
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != expected:
            raise UserInputError(f"{path} is {'missing' if actual == 'missing' else f'SHA-256 {actual[:16]}...'}, "
                                 f"but {folder / LORA_CARD} pins {expected[:16]}...: the adapters were changed or "
                                 "lost. Retrain them with `cxr-audit train-generator --base`, or restore the folder.")
    base = Path(card.base)
    if not base.is_dir():
        raise UserInputError(f"{folder / LORA_CARD} names the base pipeline {base}, which is not there. Put the base "
                             "pipeline back at that path (its hash is checked), or retrain the adapters on the base "
                             "you have with `cxr-audit train-generator --base`.")
    actual = text_pipeline_sha256(base)
    if actual != card.base_sha256:
        raise UserInputError(f"{folder / LORA_CARD}: the adapters were trained on a base pipeline with SHA-256 "
                             f"{card.base_sha256[:16]}..., but {base} now hashes to {actual[:16]}...: they would edit "
                             "with weights that mean nothing on this base. Restore the original base pipeline, or "
                             "retrain the adapters on this one with `cxr-audit train-generator --base`.")
    return card


def lora_sha256(folder: str | Path) -> str:
    """A LoRA's identity: the hash of its card, which pins its weights and its base (checked here)."""
    verify_lora(folder)
    return sha256_file(Path(folder) / LORA_CARD)
