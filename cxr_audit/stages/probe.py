"""The probe stage: the frozen deployed model on every accepted (source, edited) pair of the CARS edits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import ProbeDocument
from cxr_audit.provenance import atomic_write_json, read_document, sha256_file
from cxr_audit.rundir import SynthesisLayout
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.evaluate import read_metrics
from cxr_audit.stages.synthesize import read_records, read_summary


class ProbeStage:
    name = "probe"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.probe.parent
        # the edits, the deployed model's thresholds, and the null edits its side effects are measured against
        self.needs = ("synthetic", "evaluate_baseline") + (("null_edits",) if self.null_edits else ())

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
        ctx = self.ctx
        baseline = read_metrics(ctx, "baseline")
        thresholds = {c: entry.threshold.value for c, entry in baseline.concepts.items()}
        document = probe_synthesis(ctx.model, ctx.run.synthesis("cars"), ctx.frontal("all"), thresholds,
                                   replicates=ctx.config.bootstrap, seed=ctx.config.seed, progress=ctx.progress,
                                   null_edits=self.null_edits)
        atomic_write_json(ctx.run.probe, document.model_dump(mode="json"))


def probe_synthesis(model, synthesis: SynthesisLayout, manifest: Manifest, thresholds: dict[str, float],
                    replicates: int = 1000, seed: int = 0, progress: bool = True,
                    null_edits: SynthesisLayout | None = None) -> ProbeDocument:
    """The probe of a synthesize run's accepted pairs (side effects against its null edits when given)."""
    from cxr_audit.evaluation.probe import probe

    summary = read_summary(synthesis)
    pairs = probe_pairs(synthesis, manifest, int(summary.generator["image_size"]), null_edits, progress)
    return probe(model, pairs, summary, thresholds, replicates=replicates, seed=seed)


def probe_pairs(synthesis: SynthesisLayout, manifest: Manifest, size: int, null_edits: SynthesisLayout | None,
                progress: bool = True, accepted_only: bool = True):
    """The accepted (source, edited) pairs of a synthesize run at the generator's `size`, with the null edit of
    each plan entry where the run has one. The source goes through the same resize as the edit (down to the
    generator's size and back up in the model), so resolution is not mistaken for the concept."""
    from cxr_audit.data.images import load_resized
    from cxr_audit.evaluation.probe import ProbePairs
    from cxr_audit.progress import progress_bar

    records = [r for r in read_records(synthesis) if r.qc.passed or not accepted_only]
    rows = manifest.frame.set_index("image_id", drop=False)
    sources, edits = [], []
    for record in progress_bar(records, desc="probe pairs", unit="pair", disable=not progress, leave=False):
        if record.source_image_id not in rows.index:
            raise UserInputError(f"probe: source {record.source_image_id!r} of edit {record.edit_id} is not "
                                 "in the data. Was the synthesis made from another dataset?")
        sources.append(load_resized(manifest.resolve_image(rows.loc[record.source_image_id, "path"]), size))
        edits.append(load_resized(synthesis.image(record.edit_id), size))
    null = None
    if null_edits is not None:
        available = {r.edit_id for r in read_records(null_edits)}
        null = {k: load_resized(null_edits.image(r.edit_id), size) for k, r in enumerate(records)
                if r.edit_id in available}
    empty = np.zeros((0, size, size), np.float32)
    return ProbePairs(records, np.stack(sources) if sources else empty, np.stack(edits) if edits else empty, null)


def read_probe(ctx: RunContext) -> ProbeDocument:
    return read_document(ctx.run.probe, ProbeDocument, "probe document", "Run `cxr-audit probe --run RUN` first.")
