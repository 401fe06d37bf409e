"""The coverage stage: count each spec cell on the training data, with deficits and the charts."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.coverage import CoverageReport, analyse_coverage
from cxr_audit.data.splits import coverage_split
from cxr_audit.provenance import atomic_write_json, read_document
from cxr_audit.report import figures
from cxr_audit.stages.context import RunContext


class CoverageStage:
    name = "coverage"
    needs = ()

    def __init__(self, ctx: RunContext):
        self.ctx, self.requested_split = ctx, ctx.config.coverage_split
        self.layout = ctx.run.coverage
        self.folder = self.layout.folder

    @property
    def split(self) -> str:
        return coverage_split(self.ctx.manifest, self.requested_split)

    def outputs(self) -> list[Path]:
        return [self.layout.document, self.layout.cooccurrence_png, self.layout.cells_png]

    def inputs(self) -> dict:
        ctx = self.ctx
        ctx.require_spec()
        return {"data": ctx.data_sha256, "format": ctx.manifest.format, "spec": ctx.spec_sha256, "split": self.split,
                "images": ctx.ids_sha256(self.split)}

    def run(self) -> None:
        ctx = self.ctx
        report = analyse_coverage(ctx.part(self.split), ctx.require_spec(), ctx.run.relative(ctx.path("spec")),
                                  {"data": ctx.data_sha256, "spec": ctx.spec_sha256}, split=self.split,
                                  data_path=ctx.run.relative(ctx.path("data")),
                                  notes=ctx.notes if self.split != "all" else ctx.manifest.notes)
        self.layout.folder.mkdir(parents=True, exist_ok=True)
        figures.save_png(figures.cooccurrence_figure(report.cooccurrence, report.dataset.n_images),
                         self.layout.cooccurrence_png)
        figures.save_png(figures.coverage_figure(report.cells, split=report.dataset.split),
                         self.layout.cells_png)
        atomic_write_json(self.layout.document, report.model_dump(mode="json"))


def read_coverage(ctx: RunContext) -> CoverageReport:
    return read_document(ctx.run.coverage.document, CoverageReport, "coverage document",
                         "Run the coverage stage first (`cxr-audit coverage --out RUN`).")
