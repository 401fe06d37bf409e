"""The probe stage: the frozen deployed model on every accepted (source, edited) pair of the CARS edits."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.evaluation.documents import ProbeDocument
from cxr_audit.provenance import atomic_write_json, read_document, sha256_file
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.evaluate import read_metrics


class ProbeStage:
    name = "probe"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.probe.parent

    def outputs(self) -> list[Path]:
        return [self.ctx.run.probe]

    @property
    def null_edits(self):
        """The texture control's synthesis, when the run makes one: side effects are measured against it."""
        return self.ctx.run.synthesis("null_edits") if "null_edits" in self.ctx.config.arms else None

    def inputs(self) -> dict:
        ctx = self.ctx
        null_edits = self.null_edits
        return {**ctx.model_identity(), "synthesis": sha256_file(ctx.run.synthesis("cars").summary),
                **({"null_edits": sha256_file(null_edits.summary)} if null_edits else {}),
                "thresholds": sha256_file(ctx.run.evaluation("baseline").metrics), "data": ctx.data_sha256,
                "seed": ctx.config.seed, "bootstrap": ctx.config.bootstrap}

    def run(self) -> None:
        from cxr_audit.evaluation.probe import probe

        ctx = self.ctx
        baseline = read_metrics(ctx, "baseline")
        thresholds = {c: entry.threshold.value for c, entry in baseline.concepts.items()}
        document = probe(ctx.model, ctx.run.synthesis("cars"), ctx.frontal("all"), thresholds, seed=ctx.config.seed,
                         replicates=ctx.config.bootstrap, progress=ctx.progress, null_edits=self.null_edits)
        atomic_write_json(ctx.run.probe, document.model_dump(mode="json"))


def read_probe(ctx: RunContext) -> ProbeDocument:
    return read_document(ctx.run.probe, ProbeDocument, "probe document", "Run `cxr-audit probe --run RUN` first.")
