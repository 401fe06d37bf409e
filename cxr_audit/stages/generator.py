"""The generator stage: train the concept-conditioned generator on the training split, or LoRA adapters for a
pretrained pipeline given as the base (each resumes from its checkpoint). A run given --generator uses that one
instead and has no generator stage."""

from __future__ import annotations

import os
from pathlib import Path

from cxr_audit.stages.context import RunContext


class GeneratorStage:
    name = "generator"
    needs = ()

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.generator

    def outputs(self) -> list[Path]:
        from cxr_audit.synthesis.generator.store import GENERATOR_CARD
        from cxr_audit.synthesis.lora_store import LORA_CARD

        return [self.ctx.run.generator / (LORA_CARD if self.ctx.config.generator_training.base else GENERATOR_CARD)]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"data": ctx.data_sha256, "format": ctx.manifest.format, "concepts": ctx.findings,
                "label_policy": ctx.label_policy.model_dump(mode="json"), "images": ctx.ids_sha256("train"),
                "seed": ctx.config.seed, "training": ctx.config.generator_training.declared(),
                # data-parallel training draws processes x batch images a step: another run
                "processes": int(os.environ.get("WORLD_SIZE", "1")), **self._base()}

    def _base(self) -> dict:
        """The base pipeline's identity, when the run fine-tunes one (a changed base is another generator)."""
        from cxr_audit.synthesis.lora_store import check_base_pipeline
        from cxr_audit.synthesis.pipeline_files import text_pipeline_sha256

        base = self.ctx.config.generator_training.base
        return {} if base is None else {"base_sha256": text_pipeline_sha256(check_base_pipeline(base))}

    def run(self) -> None:
        from cxr_audit.anatomy.masks import dataset_anatomy
        from cxr_audit.synthesis.generator.regions import RegionSampler
        from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

        ctx, options = self.ctx, self.ctx.config.generator_training
        names = ctx.findings
        if options.base is not None:
            self._train_lora(Path(options.base))
            return
        anatomy = dataset_anatomy(ctx.frontal("train"), options.size)
        if anatomy is None:
            ctx.log("note: no anatomy masks beside the images: training a whole-image generator, which learns the "
                    "concepts far more slowly. `cxr-audit segment` writes lung masks.")
        config = TrainConfig(steps=options.steps, batch_size=options.batch_size, seed=ctx.config.seed,
                             max_minutes=options.minutes, lr=options.lr, timestep_exponent=options.timestep_exponent,
                             prediction_type=options.prediction_type)
        train_generator(ctx.images("train", options.size), ctx.labels("train", names), names, ctx.run.generator,
                        config, ctx.data_sha256, tuple(options.channels), progress=ctx.progress,
                        regions=RegionSampler(anatomy, names) if anatomy else None)


    def _train_lora(self, base: Path) -> None:
        from cxr_audit.synthesis.lora_training import LoraTrainConfig, base_image_size, train_lora

        ctx, options = self.ctx, self.ctx.config.generator_training
        config = LoraTrainConfig(steps=options.steps, batch_size=options.batch_size, lr=options.lr,
                                 rank=options.lora_rank, seed=ctx.config.seed, max_minutes=options.minutes)
        size = base_image_size(base)
        train_lora(ctx.images("train", size), ctx.labels("train", ctx.findings), ctx.findings, base,
                   ctx.run.generator, config, ctx.data_sha256, progress=ctx.progress)


def generator_folder(ctx: RunContext) -> Path:
    """The generator the run edits with: the one given with --generator, else the one trained in the run."""
    return ctx.path("generator") or ctx.run.generator
