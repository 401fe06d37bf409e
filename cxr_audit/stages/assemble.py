"""The assemble stage: every stage's results into audit.json, with the paired comparisons and the verdict."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from cxr_audit import __version__
from cxr_audit.provenance import atomic_write_json, read_document, read_json, sha256_file
from cxr_audit.rundir import SYNTHESIS_FOLDERS, RunDir
from cxr_audit.stages.config import FINETUNE_ARMS
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.runner import stage_seconds

ARM_TITLES = {"baseline": "Deployed model (no fine-tune)",
              "recalibrated": "Deployed model, recalibrated on the validation split", "real_only": "Fine-tuned on real only",
              "cars": "Fine-tuned on real + CARS edits", "unconstrained": "Fine-tuned on real + unconstrained regeneration",
              "null_edits": "Fine-tuned on real + null edits (texture control)"}
# Paired comparisons in the report: (new, old). The CARS arm against the real-only arm is the one that
# controls for extra training; against the unconstrained arm, for anatomy preservation; against the null
# edits, for generator texture.
COMPARISONS = (("cars", "real_only"), ("cars", "baseline"), ("recalibrated", "baseline"), ("real_only", "baseline"), ("unconstrained", "real_only"),
               ("cars", "unconstrained"), ("null_edits", "real_only"), ("cars", "null_edits"))


class AssembleStage:
    name = "assemble"

    def __init__(self, ctx: RunContext, command_line: str = ""):
        self.ctx, self.command_line = ctx, command_line
        self.folder = self.ctx.run.audit

    @property
    def needs(self) -> tuple[str, ...]:
        """Every stage whose results audit.json holds."""
        ctx = self.ctx
        synthesis = ("generator", "checker", "realism", "gallery") if ctx.synthesis_modes else ()
        return ("datasheet", "coverage", "plan", *synthesis, *(("probe",) if ctx.probes else ()),
                *(SYNTHESIS_FOLDERS[mode] for mode in ctx.synthesis_modes), *(f"evaluate_{arm}" for arm in ctx.arms),
                *(f"finetune_{arm}" for arm in ctx.arms if arm in FINETUNE_ARMS))

    def outputs(self) -> list[Path]:
        return [self.ctx.run.audit]

    def _upstream(self) -> list[Path]:
        ctx, run = self.ctx, self.ctx.run
        files = [run.datasheet, run.coverage.document, run.plan]
        files += [run.gallery.document, run.realism.document] if ctx.synthesis_modes else []
        files += [run.probe] if ctx.probes else []
        files += [run.synthesis(mode).summary for mode in ctx.synthesis_modes]
        files += [run.reader_study.results] if run.reader_study.results.is_file() else []
        for arm in ctx.arms:
            files += [run.evaluation(arm).metrics, run.evaluation(arm).replicates]
            if arm in FINETUNE_ARMS:
                files.append(run.finetune(arm).record)
        return files

    def inputs(self) -> dict:
        config = self.ctx.config
        return {"upstream": {self.ctx.run.relative(p): sha256_file(p) for p in self._upstream()},
                "intended_use": config.intended_use, "arms": self.ctx.arms, "seed": config.seed,
                "tool_version": __version__}

    def run(self) -> None:
        from cxr_audit.audit.document import AuditDocument, GalleryDocument
        from cxr_audit.audit.evidence import evidence_map
        from cxr_audit.audit.findings import method_findings
        from cxr_audit.audit.verdict import audit_verdict
        from cxr_audit.evaluation.scoring import compare, load_replicates, test_set_sha256
        from cxr_audit.stages.checker import checker_path
        from cxr_audit.stages.coverage import read_coverage
        from cxr_audit.stages.evaluate import read_metrics
        from cxr_audit.stages.generator import generator_folder
        from cxr_audit.stages.plan import read_plan
        from cxr_audit.stages.probe import read_probe
        from cxr_audit.stages.realism import read_realism
        from cxr_audit.stages.synthesize import read_summary
        from cxr_audit.synthesis.backends import backend_sha256

        ctx, run, config = self.ctx, self.ctx.run, self.ctx.config
        arms = {arm: read_metrics(ctx, arm) for arm in ctx.arms}
        replicates = {arm: load_replicates(run.evaluation(arm).replicates) for arm in arms}
        comparisons = {f"{new} vs {old}": {"new": new, "old": old, "differences": compare(replicates[old], replicates[new])}
                       for new, old in COMPARISONS if new in arms and old in arms}
        finetune = {arm: read_json(run.finetune(arm).record, "Run the fine-tune stage first.")
                    for arm in arms if arm in FINETUNE_ARMS}
        plan = read_plan(ctx)
        baseline = arms["baseline"]
        layout = run.evaluation("baseline")
        scored_by = ctx.path("predictions") if ctx.black_box else ctx.model_path
        inputs = {
            "model": {"path": run.relative(scored_by), "sha256": baseline.model.sha256,
                      "card": baseline.model.card, "format": baseline.model.format},
            "data": {"path": run.relative(ctx.path("data")), "sha256": ctx.data_sha256, "format": ctx.manifest.format},
            "spec": {"path": run.relative(ctx.path("spec")), "sha256": ctx.spec_sha256},
        }
        labeling = ctx.path("data").with_name("labeling.json")  # labels made from report text by label-reports
        if ctx.path("data").is_file() and labeling.is_file():
            record = read_json(labeling, "")
            inputs["report_labels"] = {"path": run.relative(labeling), "sha256": sha256_file(labeling),
                                       "format": f"label-reports {record.get('labeler_version')}, rules sha256 "
                                                 f"{record.get('rules_sha256')}, {record.get('reports')} reports"}
        if ctx.synthesis_modes:
            inputs["generator"] = {"path": run.relative(generator_folder(ctx)),
                                   "sha256": backend_sha256(generator_folder(ctx)), "trained_in_run": config.generator is None}
            inputs["checker"] = {"path": run.relative(checker_path(ctx)), "sha256": sha256_file(checker_path(ctx)),
                                 "trained_in_run": config.checker is None}
        if ctx.probes and config.probe_predictions:
            inputs["probe_scores"] = {"path": run.relative(ctx.path("probe_predictions")),
                                      "sha256": sha256_file(ctx.path("probe_predictions")), "format": "predictions csv"}
        data_sheet = self._data_sheet()
        document = {
            "tool_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "scope": {"intended_use": config.intended_use, "model": scored_by.name,
                      "concepts": list(baseline.concepts), "cells": [c.id for c in ctx.require_spec().all_cells()],
                      "test_split": baseline.data.split, "n_test_images": baseline.n_images,
                      "n_test_patients": baseline.n_patients, "black_box": ctx.black_box},
            "inputs": inputs,
            "environment": environment(),
            "seeds": {"audit": config.seed, "bootstrap": config.seed, "synthesis": "per edit, from the plan"},
            "command_line": self.command_line,
            "stage_seconds": stage_seconds(run),
            "notes": ctx.notes + _near_duplicate_notes(data_sheet),
            "coverage": read_coverage(ctx),
            "plan": {"edits": len(plan.edits), "cells": plan.cells, "rejections": plan.rejections},
            "synthesis": {mode: read_summary(run.synthesis(mode)) for mode in ctx.synthesis_modes},
            "realism": read_realism(ctx) if ctx.synthesis_modes else None,
            "gallery": (read_document(run.gallery.document, GalleryDocument, "gallery", "").items
                        if ctx.synthesis_modes else []),
            "arms": {arm: {"title": ARM_TITLES[arm], "metrics": metrics, "finetune": finetune.get(arm),
                           "replicates_sha256": sha256_file(run.evaluation(arm).replicates)}
                     for arm, metrics in arms.items()},
            "comparisons": comparisons,
            "probe": read_probe(ctx) if ctx.probes else None,
            "skipped": self._skipped(),
            "reader_study": read_json(run.reader_study.results, "") if run.reader_study.results.is_file() else None,
            "data_sheet": data_sheet,
            "test_set": {"sha256": test_set_sha256(layout.predictions), "predictions": run.relative(layout.predictions),
                         "predictions_sha256": sha256_file(layout.predictions),
                         "replicates": run.relative(layout.replicates),
                         "replicates_sha256": sha256_file(layout.replicates), "bootstrap": baseline.bootstrap},
            "verdict": {"status": "", "headline": "", "concerns": [], "strengths": [], "thresholds": {}, "note": ""},
        }
        audit = AuditDocument.model_validate(document)
        audit.findings = method_findings(audit)
        audit.evidence = evidence_map(audit)
        audit.verdict = audit.verdict.model_validate(audit_verdict(audit))
        atomic_write_json(run.audit, audit.model_dump(mode="json"))


    def _data_sheet(self) -> dict | None:
        """The data sheet of the real partitions, with the accepted synthetic edits as one more partition."""
        from cxr_audit.stages.datasheet import read_datasheet, synthetic_partition

        sheet = read_datasheet(self.ctx)
        if sheet is not None and "cars" in self.ctx.synthesis_modes:
            synthetic = synthetic_partition(self.ctx, sheet["concepts"])
            if synthetic is not None:
                sheet["partitions"]["synthetic (accepted CARS edits)"] = synthetic
        return sheet

    def _skipped(self) -> dict[str, str]:
        """The parts of the audit this run does not have, each with the reason the report gives."""
        ctx = self.ctx
        skipped = {}
        if ctx.black_box:
            skipped["fine-tune arms"] = ctx.why_no_stage("finetune_cars")
            if "recalibrated" not in ctx.arms:
                skipped["recalibrated arm"] = (
                    "the predictions file does not score every image of the validation split, which a recalibration "
                    "is fitted on: add the model's scores of the validation images to it (the audit then "
                    "recalibrates the black box).")
        if not ctx.synthesis_modes:
            skipped["synthesis"] = ctx.why_no_stage("synthetic")
        if not ctx.probes:
            skipped["probe"] = ctx.why_no_stage("probe")
        return skipped


def _near_duplicate_notes(sheet: dict | None) -> list[str]:
    duplicates = (sheet or {}).get("near_duplicates", {})
    if duplicates.get("allowed"):
        return [f"{duplicates['pairs_with_test']} test images are near-duplicates of images in other partitions; "
                "the audit went on with --allow-near-duplicates (see the data sheet)"]
    return []


def open_audit(path: Path, arm: str):
    """An audit for the gate or `compare`: audit.json given directly or as the run directory that holds it; its
    arms' bootstrap replicates are read from the run beside it."""
    from cxr_audit.audit.gate import AuditRun

    path = Path(path)
    audit = RunDir(path).audit if path.is_dir() else path
    return AuditRun.load(audit, arm, replicates_file=lambda name: RunDir(audit.parent).evaluation(name).replicates)


def environment() -> dict:
    from importlib import metadata

    import torch

    packages = {}
    for name in ("numpy", "pandas", "scikit-learn", "torchvision", "diffusers", "accelerate", "netcal", "pydicom",
                 "weasyprint", "jinja2", "matplotlib", "onnxruntime", "torchxrayvision", "relplot", "statsmodels",
                 "imagehash"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads(), "packages": packages}
