"""The synthesize stages: the CARS edits (masked, anatomy-preserving), the unconstrained ablation (the
whole image regenerated) and the null edits (the CARS regions regenerated under the source's own vector: the
texture control), each with QC by the independent checker."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from cxr_audit.anatomy.segmenter import SHIPPED_SEGMENTER
from cxr_audit.classifier.card import card_file
from cxr_audit.data.images import png_bytes
from cxr_audit.provenance import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_document,
    sha256_file,
)
from cxr_audit.rundir import SYNTHESIS_FOLDERS, SynthesisLayout
from cxr_audit.stages.checker import GRADING, checker_grading, checker_path
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.generator import generator_folder
from cxr_audit.stages.plan import read_plan
from cxr_audit.synthesis.documents import EditRecord, SynthesisSummary


class SynthesizeStage:
    def __init__(self, ctx: RunContext, mode: str = "cars"):
        self.ctx, self.mode = ctx, mode
        self.name = SYNTHESIS_FOLDERS[mode]
        # the run's own generator and checker, when it trains them; the null edits redo the CARS arm's accepted
        # edits under the sources' own vectors, so they come after it when the run has it
        self.needs = ("plan", "generator", "checker") + ((SYNTHESIS_FOLDERS["cars"],) if mode == "null_edits" else ())
        self.layout = ctx.run.synthesis(mode)
        self.folder = self.layout.folder

    def outputs(self) -> list[Path]:
        return [self.layout.summary, self.layout.manifest] + (
            [self.layout.score_list] if self.mode != "unconstrained" else [])

    def inputs(self) -> dict:
        from cxr_audit.synthesis.backends import backend_sha256
        from cxr_audit.synthesis.qc import QCThresholds

        ctx = self.ctx
        checker = checker_path(ctx)
        card = card_file(checker)
        return {"plan": sha256_file(ctx.run.plan), "data": ctx.data_sha256, "format": ctx.manifest.format,
                "generator": backend_sha256(generator_folder(ctx)), "checker": sha256_file(checker),
                "checker_card": sha256_file(card) if card.is_file() else None, "edit": ctx.config.edit,
                "qc": asdict(QCThresholds()), "mode": self.mode, "val": ctx.ids_sha256("val"),
                "grading": GRADING, "accept_ungradable": ctx.config.accept_ungradable,
                "top_up": asdict(self._top_up()), **self._cars_edits_input(),
                "segmenter": sha256_file(SHIPPED_SEGMENTER)}

    def _top_up(self):
        from cxr_audit.synthesis.top_up import TopUpPolicy

        spec = self.ctx.require_spec().synthesis
        return TopUpPolicy(spec.tries_per_source, spec.attempts_per_edit)

    def _cars_edits_input(self) -> dict:
        """The null edits' own input: the CARS arm's summary, whose accepted edits they redo (when it exists)."""
        if self.mode != "null_edits":
            return {}
        summary = self.ctx.run.synthesis("cars").summary
        return {"cars": sha256_file(summary) if summary.is_file() else None}

    def _cars_accepted(self, plan):
        """The CARS arm's accepted edits as planned edits (retries rebuilt from their first try), or None when
        the run has no finished CARS arm (the null edits then follow the plan, as any arm does)."""
        from cxr_audit.synthesis.top_up import attempt_number, first_attempt_id, retry_of

        layout = self.ctx.run.synthesis("cars")
        if self.mode != "null_edits" or not layout.summary.is_file():
            return None
        by_id = {e.edit_id: e for e in [*plan.edits, *plan.reserves]}
        edits = []
        for record in read_records(layout):
            first = by_id.get(first_attempt_id(record.edit_id))
            if record.qc.passed and first is not None:
                number = attempt_number(record.edit_id)
                edits.append(first if number == 1 else retry_of(first, number))
        return edits

    def run(self) -> None:
        from cxr_audit.anatomy.segmenter import LungSegmenter
        from cxr_audit.classifier.loading import load_model
        from cxr_audit.synthesis.backends import load_backend
        from cxr_audit.synthesis.synthesize import SynthesisOptions

        ctx = self.ctx
        checker = load_model(checker_path(ctx), pickle_option=None)
        options = SynthesisOptions(settings=ctx.config.edit_settings, unconstrained=self.mode == "unconstrained",
                                   null_edits=self.mode == "null_edits", progress=ctx.progress,
                                   grading=checker_grading(ctx, checker),
                                   accept_ungradable=ctx.config.accept_ungradable, top_up=self._top_up(),
                                   segmenter=LungSegmenter(SHIPPED_SEGMENTER))
        plan = read_plan(ctx)
        options.attempts = self._cars_accepted(plan)
        synthesize_into(self.layout, plan, ctx.frontal("all"), load_backend(generator_folder(ctx)), checker, options)


def synthesize_into(layout: SynthesisLayout, plan, manifest, backend, checker=None, options=None) -> SynthesisSummary:
    """Carry out `plan` into `layout`: each edit saved as it finishes (a resumed run skips what is saved), then
    the manifest of accepted edits and the summary."""
    from cxr_audit.synthesis.synthesize import SynthesisOptions, run_synthesis, summarise

    options = options or SynthesisOptions()
    for folder in (layout.images, layout.sources, layout.masks, layout.records):
        folder.mkdir(parents=True, exist_ok=True)
    attempted = run_synthesis(plan, manifest, backend, save=lambda edit: write_edit(layout, edit),
                              saved=lambda edit_id: _saved_record(layout, edit_id), checker=checker, options=options)
    made = set(attempted)  # records of an earlier run of the stage that this one did not attempt are left out
    frame, summary = summarise(plan, [r for r in read_records(layout) if r.edit_id in made], backend, options,
                               image_path=lambda edit_id: f"{layout.images.name}/{edit_id}.png")
    atomic_write_text(layout.manifest, frame.to_csv(index=False))
    if not options.unconstrained:  # the ablation is fine-tuned on, never probed
        atomic_write_text(layout.score_list, score_list(layout, null_edits=options.null_edits).to_csv(index=False))
    atomic_write_json(layout.summary, summary.model_dump(mode="json"))
    return summary


def _saved_record(layout: SynthesisLayout, edit_id: str) -> EditRecord | None:
    path = layout.record(edit_id)
    return read_document(path, EditRecord, "edit record", "") if path.exists() else None


def score_list(layout: SynthesisLayout, null_edits: bool = False):
    """The images of a synthesize run that the probe scores, by path relative to the run: the CARS run's
    accepted edits and their sources; the null edits' every edit (each is the baseline of a CARS edit)."""
    import pandas as pd

    rows = []
    for record in read_records(layout):
        if null_edits:
            rows.append(("null_edit", record.edit_id, layout.image(record.edit_id)))
        elif record.qc.passed:
            rows += [("source", record.edit_id, layout.source(record.edit_id)),
                     ("edited", record.edit_id, layout.image(record.edit_id))]
    return pd.DataFrame([{"path": path.relative_to(layout.folder.parent).as_posix(), "role": role, "edit_id": edit_id}
                         for role, edit_id, path in rows], columns=["path", "role", "edit_id"])


def write_edit(layout: SynthesisLayout, edit) -> None:
    """One finished edit (synthesis.synthesize.FinishedEdit): its image (and a DICOM copy when the source was
    DICOM, with no source PHI), its region, and its record last: a record says the edit is complete."""
    edit_id = edit.record.edit_id
    atomic_write_bytes(layout.image(edit_id), png_bytes(edit.pixels))
    atomic_write_bytes(layout.source(edit_id), png_bytes(edit.source_pixels))
    if edit.source_is_dicom:
        from cxr_audit.synthesis.dicom_out import write_synthetic_dicom

        write_synthetic_dicom(layout.dicom(edit_id), edit.pixels, edit_id, edit.description, edit.view)
    atomic_write_bytes(layout.mask(edit_id), png_bytes((edit.region * 255).astype(np.uint8)))
    atomic_write_json(layout.record(edit_id), edit.record.model_dump(mode="json"))


def read_summary(layout: SynthesisLayout) -> SynthesisSummary:
    return read_document(layout.summary, SynthesisSummary, "synthesis summary",
                         "Run the synthesize stage first (`cxr-audit synthesize --run RUN`).")


def read_records(layout: SynthesisLayout) -> list[EditRecord]:
    """Every edit record of a synthesize run, in edit order."""
    return [read_document(path, EditRecord, "edit record", "") for path in sorted(layout.records.glob("*.json"))]
