"""The fine-tune stages: a copy of the deployed model trained on real images only (the control for extra
training), on real + CARS edits, on real + unconstrained regenerations (the prior approach), or on real + null
edits (the texture control: a gain from generator texture alone would show here too)."""

from __future__ import annotations

from pathlib import Path

from cxr_audit import distributed
from cxr_audit.classifier.micro_batches import fingerprint_config
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file
from cxr_audit.stages.context import RunContext

SYNTHETIC_SOURCE = {"cars": "cars", "unconstrained": "unconstrained", "null_edits": "null_edits"}  # arm -> the synthesis it trains on


class FinetuneStage:
    shares_work = True  # under several processes, data-parallel (classifier/finetune.py)

    def __init__(self, ctx: RunContext, arm: str):
        self.ctx, self.arm = ctx, arm
        self.name = f"finetune_{arm}"
        self.layout = ctx.run.finetune(arm)
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        candidate = self.layout.candidate()
        return [self.layout.record, candidate, self.layout.card_for(candidate)]

    @property
    def synthesis(self):
        mode = SYNTHETIC_SOURCE.get(self.arm)
        return self.ctx.run.synthesis(mode) if mode else None

    def inputs(self) -> dict:
        ctx = self.ctx
        return {**ctx.model_identity(), "data": ctx.data_sha256, "format": ctx.manifest.format,
                "spec": ctx.spec_sha256, "train": ctx.ids_sha256("train"), "val": ctx.ids_sha256("val"),
                "config": fingerprint_config(ctx.config.finetune_config, distributed.world_size()),
                "synthetic": sha256_file(self.synthesis.manifest) if self.synthesis else None}

    def run(self) -> None:
        from cxr_audit.classifier.finetune import TrainingImages, finetune, synthetic_training_images

        ctx = self.ctx
        model = ctx.model
        outputs, size = model.concepts, model.card.input_size
        missing = [c for c in outputs if c not in ctx.manifest.concepts]
        if missing:
            raise UserInputError(f"fine-tuning needs labels for every model output; {ctx.path('data')} has none for "
                                 f"{', '.join(missing)}.")
        parts = [TrainingImages.real(ctx.images("train", size), ctx.labels("train", outputs))]
        if self.synthesis:
            parts.append(synthetic_training_images(self.synthesis, outputs, size))
        validation = TrainingImages.real(ctx.images("val", size), ctx.labels("val", outputs))
        finetune(model, TrainingImages.concatenate(parts), validation, self.layout, ctx.config.finetune_config,
                 self.arm, self.inputs(), ctx.progress)
