"""Saving and loading a trained generator: diffusers' layout (`unet/`, `scheduler/`) plus
`concept_encoder.safetensors` and `generator_card.json`, which pins every weight file's SHA-256; loading
refuses files that do not match. Nothing is fetched from a hub: weights load from local paths only."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cxr_audit import __version__, concepts
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, sha256_file
from cxr_audit.synthesis.generator.model import ConceptConditionedUNet, make_scheduler

GENERATOR_CARD = "generator_card.json"


@dataclass
class GeneratorCard:
    concepts: list[str]
    image_size: int
    block_out_channels: list[int]
    layers_per_block: int
    training_data_sha256: str
    training_images: int
    steps: int
    seed: int
    inpainting: bool = False       # trained to fill an anatomical region given the image around it
    processes: int = 1             # data-parallel training processes (GPUs)
    batch_size: int | None = None  # images per step, over all processes
    mixed_precision: str = "no"
    timestep_exponent: float = 1.0  # TrainConfig.timestep_exponent (cards written before it: uniform draws)
    prediction_type: str = "epsilon"  # TrainConfig.prediction_type (cards written before it: the noise)
    one_side_share: float | None = None  # RegionSampler.p_one_side (None: not recorded, or no regions)
    tool_version: str = __version__
    weights_sha256: dict[str, str] = field(default_factory=dict)


def save_generator(model: ConceptConditionedUNet, card: GeneratorCard, out: Path) -> None:
    from safetensors.torch import save_file

    model.unet.save_pretrained(out / "unet", safe_serialization=True)
    make_scheduler("ddpm", card.prediction_type).save_pretrained(out / "scheduler")
    encoder_state = {f"encoder.{k}": v.contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(encoder_state, str(out / "concept_encoder.safetensors"))
    card.weights_sha256 = {
        "unet/diffusion_pytorch_model.safetensors": sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
        "concept_encoder.safetensors": sha256_file(out / "concept_encoder.safetensors"),
    }
    atomic_write_json(out / GENERATOR_CARD, asdict(card))


def is_generator(folder: str | Path) -> bool:
    return (Path(folder) / GENERATOR_CARD).is_file()


def generator_sha256(folder: str | Path) -> str:
    """A saved generator's identity: the hash of its card, which pins the hashes of its weight files."""
    return sha256_file(Path(folder) / GENERATOR_CARD)


def load_generator(folder: str | Path, device: str | torch.device | None = None
                   ) -> tuple[ConceptConditionedUNet, GeneratorCard]:
    """(model, card) of a saved generator, from local files, refusing weights whose SHA-256 differs from the
    card; on the GPU when there is one (edits run where the model is)."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from cxr_audit.classifier.adapter import default_device

    folder = Path(folder)
    card = GeneratorCard(**json.loads((folder / GENERATOR_CARD).read_text()))
    for relative, expected in card.weights_sha256.items():
        actual = sha256_file(folder / relative)
        if actual != expected:
            raise UserInputError(f"{folder / relative} has SHA-256 {actual[:16]}..., but the generator card pins "
                                 f"{expected[:16]}...: the weights were changed or corrupted. Retrain or restore them.")
    model = ConceptConditionedUNet([concepts.resolve(c) for c in card.concepts], card.image_size,
                                   tuple(card.block_out_channels), card.layers_per_block, card.inpainting,
                                   card.prediction_type)
    model.unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True)
    state = load_file(str(folder / "concept_encoder.safetensors"))
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    return model.to(device or default_device()).eval(), card
