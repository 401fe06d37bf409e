"""The synthesize stages: the CARS edits (masked, anatomy-preserving), the unconstrained ablation (the
whole image regenerated) and the null edits (the CARS regions regenerated under the source's own vector: the
texture control), each with QC by the independent checker."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import FinetuneLayout
from cxr_audit.stages.checker import checker_path
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.generator import generator_folder
from cxr_audit.stages.plan import read_plan

STAGE_NAMES = {"cars": "synthetic", "unconstrained": "unconstrained", "null_edits": "null_edits"}


class SynthesizeStage:
    def __init__(self, ctx: RunContext, mode: str = "cars"):
        self.ctx, self.mode = ctx, mode
        self.name = STAGE_NAMES[mode]
        self.layout = ctx.run.synthesis(mode)
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        return [self.layout.summary, self.layout.manifest]

    def inputs(self) -> dict:
        from cxr_audit.synthesis.backends import backend_sha256
        from cxr_audit.synthesis.qc import QCThresholds

        ctx = self.ctx
        checker = checker_path(ctx)
        card = FinetuneLayout.card_for(checker)
        return {"plan": sha256_file(ctx.run.plan), "data": ctx.data_sha256, "format": ctx.manifest.format,
                "generator": backend_sha256(generator_folder(ctx)), "checker": sha256_file(checker),
                "checker_card": sha256_file(card) if card.is_file() else None, "edit": ctx.config.edit,
                "qc": asdict(QCThresholds()), "mode": self.mode}

    def run(self) -> None:
        from cxr_audit.classifier.loading import load_model
        from cxr_audit.synthesis.backends import load_backend
        from cxr_audit.synthesis.synthesize import SynthesisOptions, run_synthesis

        ctx = self.ctx
        run_synthesis(read_plan(ctx), ctx.frontal("all"), load_backend(generator_folder(ctx)), self.layout,
                      load_model(checker_path(ctx), pickle_option=None),
                      SynthesisOptions(settings=ctx.config.edit_settings, unconstrained=self.mode == "unconstrained",
                                       null_edits=self.mode == "null_edits",
                                       progress=ctx.progress))
