"""The checker stage: the independent concept checker that grades synthetic edits (QC), trained on the real
training split. Never the model under audit: a model grading its own edits would pass its own blind spots.
A run given --checker uses that one instead and has no checker stage."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.stages.context import RunContext


class CheckerStage:
    name = "checker"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.checker.parent

    def outputs(self) -> list[Path]:
        from cxr_audit.rundir import FinetuneLayout

        return [self.ctx.run.checker, FinetuneLayout.card_for(self.ctx.run.checker)]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"data": ctx.data_sha256, "format": ctx.manifest.format, "concepts": ctx.findings,
                "label_policy": ctx.label_policy.model_dump(mode="json"), "images": ctx.ids_sha256("train"),
                "size": ctx.config.generator_training.size, "seed": ctx.config.seed}

    def run(self) -> None:
        from cxr_audit.classifier.small_cnn import save_classifier, train_checker

        ctx = self.ctx
        size = ctx.config.generator_training.size
        net = train_checker(ctx.images("train", size), ctx.labels("train", ctx.findings), seed=ctx.config.seed,
                            progress=ctx.progress)
        save_classifier(net, ctx.run.checker, ctx.findings, size)


def checker_path(ctx: RunContext) -> Path:
    """The checker the run grades edits with: the one given with --checker, else the one trained in the run."""
    return ctx.path("checker") or ctx.run.checker
