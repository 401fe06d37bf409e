"""The second generator backend: a text-conditioned latent diffusion pipeline on disk (RoentGen, or RadEdit's
weights in the Stable Diffusion layout), driven with prompts built from the concept vector.

The folder is a diffusers pipeline (`model_index.json`, `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`scheduler/`), loaded with `local_files_only=True`: nothing is fetched from a hub. The edit is diffusers'
`StableDiffusionInpaintPipeline`: with a plain 4-channel text-to-image UNet it does what the CARS editor does in
latent space (start from the source noised to `strength`, denoise under the prompt with classifier-free
guidance, and after every step put back the source, noised to the level just reached, outside the mask).
The result is then composited onto the source with the feathered mask, so outside the region the pixels are
the source's, exactly, as with the native generator. The safety checker is off: it is trained on photographs
and blanks radiographs it misreads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxr_audit import concepts
from cxr_audit.classifier.adapter import default_device
from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.pipeline_files import PIPELINE_INDEX, is_text_pipeline, pipeline_files, text_pipeline_sha256

PROMPT_STYLE = "cxr-audit-impression-v1"
NORMAL_PROMPT = "No acute cardiopulmonary process."

# The names radiology reports use (the prompts these models were trained on are report impressions).
REPORT_NAMES = {"Pleural Effusion": "pleural effusion", "Enlarged Cardiomediastinum": "enlarged cardiomediastinum",
                "Lung Opacity": "lung opacity", "Support Devices": "support devices"}


def prompt_for(labels: np.ndarray, concept_names: list[str]) -> tuple[str, str]:
    """(prompt, negative prompt) for one target vector: the present findings, in report words; the negative
    prompt names the findings the vector marks absent, so guidance steers away from them (a deletion's
    finding among them). Unknown concepts are left out of both."""
    present = [REPORT_NAMES.get(c, c.lower()) for c, v in zip(concept_names, labels) if v == 1]
    absent = [REPORT_NAMES.get(c, c.lower()) for c, v in zip(concept_names, labels) if v == 0]
    if not present:
        prompt = NORMAL_PROMPT
    else:
        listed = present[0] if len(present) == 1 else ", ".join(present[:-1]) + " and " + present[-1]
        prompt = f"{listed[0].upper()}{listed[1:]}."
    return prompt, ", ".join(absent)


@dataclass
class TextPipelineCard:
    """What the audit records about a text-conditioned generator (the pipeline folder has no card of ours).
    Its identity is generator_sha256 (a hash over `files`), recorded beside the card: hashing each file here
    too would read gigabytes of weights twice."""
    pipeline: str
    concepts: list[str]
    image_size: int
    prompt_style: str = PROMPT_STYLE
    backend: str = "text-conditioned latent diffusion (diffusers StableDiffusionInpaintPipeline)"
    files: list[str] = field(default_factory=list)
    lora: dict | None = None  # the LoRA card, when adapters trained by `train-generator --base` are applied


class TextConditionedGenerator:
    """Edits source images toward target concept vectors through a local text-conditioned pipeline."""

    def __init__(self, folder: str | Path, device: str | torch.device | None = None, lora: str | Path | None = None):
        """The pipeline in `folder`; with `lora`, a folder written by `train-generator --base`, its adapters
        applied to that pipeline (its base, as `load_backend` finds it from the LoRA's card)."""
        from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline

        folder = Path(folder)
        if not is_text_pipeline(folder):
            raise UserInputError(f"{folder} has no {PIPELINE_INDEX}: it is not a diffusers pipeline folder.")
        device = torch.device(device or default_device())
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        try:
            base = DiffusionPipeline.from_pretrained(folder, local_files_only=True, dtype=dtype,
                                                     safety_checker=None, requires_safety_checker=False)
        except (OSError, ValueError) as exc:
            raise UserInputError(f"Could not load the text-conditioned pipeline in {folder}: {exc}. It must be a "
                                 "complete diffusers Stable Diffusion folder (RoentGen, or RadEdit exported to "
                                 "that layout) on local disk.") from None
        lora_card = None
        if lora is not None:
            from cxr_audit.synthesis.lora_store import LORA_WEIGHTS, lora_sha256, read_lora_card

            base.load_lora_weights(Path(lora), weight_name=LORA_WEIGHTS)
            lora_card = asdict(read_lora_card(lora))
        self.pipe = StableDiffusionInpaintPipeline.from_pipe(base, safety_checker=None,
                                                             requires_safety_checker=False).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.concepts = [c.name for c in concepts.CONCEPTS if c.name != concepts.NO_FINDING]
        self.image_size = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        self._card = TextPipelineCard(pipeline=str(folder.name), concepts=self.concepts, image_size=self.image_size,
                                      files=[str(p.relative_to(folder)) for p in pipeline_files(folder)],
                                      lora=lora_card)
        # a LoRA's identity is its card's hash, which pins its weights and its base's hash
        self.sha256 = text_pipeline_sha256(folder) if lora is None else lora_sha256(lora)

    def card(self) -> dict:
        return asdict(self._card)

    @torch.inference_mode()
    def edit(self, sources: np.ndarray, target_labels: np.ndarray, masks: np.ndarray | None,
             soft_masks: np.ndarray | None, settings, seed: int) -> np.ndarray:
        """Same contract as editor.edit: (B, S, S) sources in [0, 1], (B, K) targets over `concepts`;
        masks None regenerates the whole image (the unconstrained ablation)."""
        count, size = len(sources), sources.shape[-1]
        prompts = [prompt_for(labels, self.concepts) for labels in target_labels]
        rgb = torch.tensor(sources, dtype=torch.float32)[:, None].expand(-1, 3, -1, -1)  # the VAE reads RGB
        region = np.ones_like(sources) if masks is None else masks.astype(np.float32)
        result = self.pipe(prompt=[p for p, _ in prompts], negative_prompt=[n for _, n in prompts],
                           image=rgb, mask_image=torch.tensor(region)[:, None], height=size, width=size,
                           strength=settings.strength, num_inference_steps=settings.steps,
                           guidance_scale=settings.guidance, output_type="np",
                           generator=torch.Generator().manual_seed(seed))
        edited = np.asarray(result.images, dtype=np.float32).reshape(count, size, size, -1).mean(axis=-1)
        if soft_masks is not None:
            edited = soft_masks * edited + (1 - soft_masks) * sources
        return edited.clip(0, 1).astype(np.float32)
