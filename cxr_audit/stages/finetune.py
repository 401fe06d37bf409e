"""The fine-tune stages: a copy of the deployed model trained on real images only (the control for extra
training), on real + CARS edits, on real + unconstrained regenerations (the prior approach), or on real + null
edits (the texture control: a gain from generator texture alone would show here too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_audit import distributed
from cxr_audit.classifier.card import card_file
from cxr_audit.classifier.micro_batches import fingerprint_config
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from cxr_audit.rundir import SYNTHESIS_FOLDERS, FinetuneLayout, SynthesisLayout
from cxr_audit.stages.context import RunContext


def synthesis_of(arm: str) -> str | None:
    """The synthesis an arm trains on: each synthesis mode has the fine-tune arm of its name."""
    return arm if arm in SYNTHESIS_FOLDERS else None


class FinetuneStage:
    shares_work = True  # under several processes, data-parallel (classifier/finetune.py)

    def __init__(self, ctx: RunContext, arm: str):
        self.ctx, self.arm = ctx, arm
        self.name = f"finetune_{arm}"
        mode = synthesis_of(arm)
        self.needs = (ctx.run.synthesis(mode).folder.name,) if mode else ()  # the synthesis it trains on
        self.layout = ctx.run.finetune(arm)
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        candidate = self.layout.candidate()
        return [self.layout.record, candidate, card_file(candidate)]

    @property
    def synthesis(self):
        mode = synthesis_of(self.arm)
        return self.ctx.run.synthesis(mode) if mode else None

    def inputs(self) -> dict:
        ctx = self.ctx
        return {**ctx.model_identity(), "data": ctx.data_sha256, "format": ctx.manifest.format,
                "spec": ctx.spec_sha256, "train": ctx.ids_sha256("train"), "val": ctx.ids_sha256("val"),
                "config": fingerprint_config(ctx.config.finetune_config, distributed.world_size()),
                "synthetic": sha256_file(self.synthesis.manifest) if self.synthesis else None}

    def run(self) -> None:
        from cxr_audit.classifier.finetune import TrainingImages

        ctx = self.ctx
        model = ctx.model
        outputs, size = model.concepts, model.card.input_size
        missing = [c for c in outputs if c not in ctx.manifest.concepts]
        if missing:
            raise UserInputError(f"fine-tuning needs labels for every model output; {ctx.path('data')} has none for "
                                 f"{', '.join(missing)}.")
        parts = [TrainingImages.real(ctx.images("train", size), ctx.labels("train", outputs))]
        if self.synthesis:
            parts.append(read_synthetic_training_images(self.synthesis, outputs, size))
        validation = TrainingImages.real(ctx.images("val", size), ctx.labels("val", outputs))
        finetune_into(self.layout, model, TrainingImages.concatenate(parts), validation, ctx.config.finetune_config,
                      self.arm, self.inputs(), ctx.progress, base_model_path=ctx.run.relative(model.path))


def finetune_into(layout: FinetuneLayout, model, train, validation, config, arm: str, inputs_sha256: dict,
                  progress: bool = True, checkpoints=None, base_model_path: str | None = None) -> dict:
    """Fine-tune a copy of `model` into `layout` (resuming from its checkpoint); returns finetune.json's record.
    `base_model_path`: the model as the run records it (relative to the run inside it: a copied run names its
    own copy)."""
    from cxr_audit.classifier.finetune import finetune

    if distributed.is_main():
        layout.folder.mkdir(parents=True, exist_ok=True)
    candidate, record = finetune(model, train, validation, config, arm, inputs_sha256,
                                 checkpoints or file_checkpoints(layout.checkpoint), progress)
    if base_model_path is not None:
        record["base_model"]["path"] = base_model_path
    if candidate is not None:
        return save_candidate(layout, candidate, record)
    return record


def file_checkpoints(path: Path):
    """A fine-tune's checkpoints kept in one file (replaced whole at each save, never half-written)."""
    import torch

    from cxr_audit.classifier.finetune import Checkpoints

    def load():
        return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None

    def save(state: dict) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    return Checkpoints(load=load, save=save, where=str(path))


def save_candidate(layout: FinetuneLayout, candidate, record: dict) -> dict:
    """The fine-tuned candidate, its card and finetune.json (which names the candidate's file)."""
    import yaml

    path = layout.candidate_weights if candidate.kind == "weights" else layout.candidate_torchscript
    atomic_write_bytes(path, candidate.content)
    atomic_write_text(card_file(path), yaml.safe_dump(candidate.card.model_dump(mode="json"), sort_keys=False))
    record = {**record, "candidate": {"path": path.name, "sha256": sha256_file(path)}}
    atomic_write_json(layout.record, record)
    return record


def read_synthetic_training_images(layout: SynthesisLayout, concepts: list[str], size: int):
    """The accepted edits of a synthesize run as training images."""
    import pandas as pd

    from cxr_audit.classifier.finetune import synthetic_training_images
    from cxr_audit.data.images import load_resized

    if not layout.manifest.exists():
        raise UserInputError(f"{layout.manifest} does not exist: run `cxr-audit synthesize` first.")
    if layout.manifest.stat().st_size < 5:  # nothing accepted: an empty CSV
        return synthetic_training_images(pd.DataFrame(), np.zeros((0, size, size), np.float32), concepts, size)
    frame = pd.read_csv(layout.manifest)
    images = np.stack([load_resized(layout.manifest_image(p), size) for p in frame["Path"]])
    return synthetic_training_images(frame, images, concepts, size)
