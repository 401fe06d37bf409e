"""The plan stage: CARS edits for every under-covered cell, from training images one edit away."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, read_document, sha256_file
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.coverage import read_coverage
from cxr_audit.synthesis.planner import PlanDocument, plan_edits


class PlanStage:
    name = "plan"
    needs = ("coverage",)

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.plan.parent

    def outputs(self) -> list[Path]:
        return [self.ctx.run.plan]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"coverage": sha256_file(ctx.run.coverage.document), "data": ctx.data_sha256,
                "format": ctx.manifest.format, "spec": ctx.spec_sha256, "images": ctx.ids_sha256("train"),
                "seed": ctx.config.seed}

    def run(self) -> None:
        ctx = self.ctx
        coverage = read_coverage(ctx)
        if coverage.dataset.split != "train":
            raise UserInputError(f"{ctx.run.coverage.document} counts the {coverage.dataset.split!r} images; the "
                                 "plan needs the coverage of the training split. Re-run coverage with --split train "
                                 "(or --force).")
        plan = plan_edits(ctx.frontal("train"), ctx.require_spec(), coverage, ctx.config.seed)
        plan.data = {"path": ctx.run.relative(ctx.path("data")), "sha256": ctx.data_sha256,
                     "format": ctx.manifest.format}
        plan.spec = {"path": ctx.run.relative(ctx.path("spec")), "sha256": ctx.spec_sha256}
        atomic_write_json(ctx.run.plan, plan.model_dump(mode="json"))


def read_plan(ctx: RunContext) -> PlanDocument:
    return read_document(ctx.run.plan, PlanDocument, "edit plan", "Run `cxr-audit plan --out RUN` first.")
