"""Edit backends: what the synthesize stage edits with, behind one protocol.

Two backends exist: the project's concept-conditioned generator (a folder written by `train-generator`) and a
local diffusers text-to-image pipeline (RoentGen, or RadEdit's weights in that layout), as it is or with LoRA
adapters trained on the user's data (a folder written by `train-generator --base`, whose card names its base).
`load_backend` tells them apart by what the folder holds; the stage never asks which one it has.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.editor import EditSettings


class EditBackend(Protocol):
    """Edits (B, S, S) source images in [0, 1] toward (B, K) target vectors over `concepts`; masks None is the
    unconstrained ablation (the whole image regenerated)."""

    concepts: list[str]
    image_size: int
    sha256: str

    def card(self) -> dict: ...

    def edit(self, sources: np.ndarray, target_labels: np.ndarray, masks: np.ndarray | None,
             soft_masks: np.ndarray | None, settings: EditSettings, seed: int) -> np.ndarray: ...


class ConceptGeneratorBackend:
    """The project's concept-conditioned generator, edited through `editor.edit` (masked RePaint-style)."""

    def __init__(self, folder: Path, device=None):
        from cxr_audit.synthesis.generator.store import generator_sha256, load_generator

        self.model, self._card = load_generator(folder, device)
        self.concepts, self.image_size = list(self._card.concepts), self._card.image_size
        self.sha256 = generator_sha256(folder)

    def card(self) -> dict:
        return asdict(self._card)

    def edit(self, sources, target_labels, masks, soft_masks, settings, seed):
        from cxr_audit.synthesis.editor import edit

        return edit(self.model, sources, target_labels, masks, soft_masks, settings, seed)


def backend_sha256(folder: str | Path) -> str:
    """A backend folder's identity without loading it (the generator card's hash, or a hash over a pipeline's
    weight and config files)."""
    from cxr_audit.synthesis.generator.store import generator_sha256, is_generator
    from cxr_audit.synthesis.lora_store import is_lora, lora_sha256
    from cxr_audit.synthesis.pipeline_files import is_text_pipeline, text_pipeline_sha256

    folder = _existing(folder)
    if is_generator(folder):
        return generator_sha256(folder)
    if is_lora(folder):
        return lora_sha256(folder)  # checks its weights and its base against the card
    if is_text_pipeline(folder):
        return text_pipeline_sha256(folder)
    raise _not_a_backend(folder)


def load_backend(folder: str | Path, device=None) -> EditBackend:
    """The edit backend saved in `folder`, from local files only."""
    from cxr_audit.synthesis.generator.store import is_generator
    from cxr_audit.synthesis.lora_store import is_lora, verify_lora
    from cxr_audit.synthesis.pipeline_files import is_text_pipeline
    from cxr_audit.synthesis.text_backend import TextConditionedGenerator

    folder = _existing(folder)
    if is_generator(folder):
        return ConceptGeneratorBackend(folder, device)
    if is_lora(folder):
        return TextConditionedGenerator(verify_lora(folder).base, device, lora=folder)
    if is_text_pipeline(folder):
        return TextConditionedGenerator(folder, device)
    raise _not_a_backend(folder)


def _existing(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"Generator {folder} is not a folder. Pass --generator with a folder written by "
                             "`cxr-audit train-generator` (RUN/generator) or a local diffusers pipeline folder.")
    return folder


def _not_a_backend(folder: Path) -> UserInputError:
    return UserInputError(f"{folder} is not a cxr-audit generator (no generator_card.json), LoRA (no "
                          "lora_card.json) nor a diffusers pipeline (no model_index.json). Train one with "
                          "`cxr-audit train-generator` (with --base for LoRA on a pretrained pipeline).")
