"""audit.json, typed: the single source of truth that the PDF, the gate and `compare` read.

`cxr-audit schema audit` prints its JSON Schema. A malformed or foreign audit.json is refused with the key
named (exit 2); it never reaches the gate as if it were a result (exit 1 means "the model regressed").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from cxr_audit.coverage import CoverageReport
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import (
    Bootstrap,
    ContextGap,
    Difference,
    MetricsDocument,
    ProbeDocument,
    ProbeSideEffect,
)
from cxr_audit.provenance import Document, read_document, read_json
from cxr_audit.synthesis.documents import RealismDocument, SynthesisSummary
from cxr_audit.synthesis.planner import CellPlan, Rejection

AUDIT_SCHEMA_VERSION = "2.0"


class Scope(Document):
    intended_use: str
    model: str
    concepts: list[str]
    cells: list[str]
    test_split: str
    n_test_images: int
    n_test_patients: int
    black_box: bool = Field(False, description="the model is known only by its predictions (no weights)")


class InputFile(Document):
    path: str
    sha256: str | None = None
    format: str | None = None
    card: dict[str, Any] | None = None
    trained_in_run: bool | None = None


class PlanSummary(Document):
    edits: int
    cells: list[CellPlan]
    rejections: list[Rejection]


class Arm(Document):
    title: str
    metrics: MetricsDocument
    finetune: dict[str, Any] | None = Field(None, description="finetune.json of a fine-tuned arm")
    replicates_sha256: str | None = Field(None, description="SHA-256 of the arm's bootstrap replicates file")


class Comparison(Document):
    new: str
    old: str
    differences: dict[str, dict[str, Difference]] = Field(description="target -> metric -> paired difference")


class TestSet(Document):
    sha256: str = Field(description="image ids, concepts and labels of the test split: runs compare only when equal")
    predictions: str
    predictions_sha256: str
    replicates: str
    replicates_sha256: str
    bootstrap: Bootstrap


class Verdict(Document):
    status: str
    headline: str
    concerns: list[str]
    strengths: list[str]
    thresholds: dict[str, float]
    note: str


class GapFinding(ContextGap):
    """The deployed model's context gap on an under-covered cell (audit/findings.py)."""

    cell_id: str
    finding: str
    significant: bool = Field(description="the AUROC or AUPRC gap's interval lies below 0")


class ControlComparison(Document):
    cell_id: str
    control: str
    auprc: Difference | None = Field(None, description="CARS minus the control, on the cell")
    ece: Difference | None = Field(None, description="CARS minus the control, on the cell (lower is better)")
    gap_change: dict[str, Difference] = Field(
        default_factory=dict, description="finding -> change of its AUROC context gap, CARS minus the control")
    verdict: str = Field(description="'better', 'worse' or 'no difference shown' on cell AUPRC")


class MethodFindings(Document):
    """What the audit found about its coverage gaps; computed by audit/findings.py."""

    target_cells: list[str] = Field(default_factory=list, description="under-covered cells with a context")
    gaps: list[GapFinding] = Field(default_factory=list)
    probe: list[ProbeSideEffect] = Field(default_factory=list, description="harmful side effects, worst first")
    cars_vs_controls: list[ControlComparison] = Field(default_factory=list)
    statements: list[str] = Field(default_factory=list, description="the findings as the report's first page says them")


class GalleryItem(Document):
    """One gallery panel as audit.json records it (the PNG lies in the run; its SHA-256 is checked)."""

    edit_id: str
    cell_id: str
    operation: str
    image: str
    image_sha256: str
    qc: dict[str, Any]
    discriminator_score: float | None = Field(None, description="set on the realism discriminator's most confident "
                                              "picks: its out-of-fold probability that the image is synthetic")


class GalleryDocument(Document):
    """gallery.json: the panels the gallery stage drew."""

    items: list[GalleryItem]


class AuditDocument(Document):
    schema_version: str = AUDIT_SCHEMA_VERSION
    tool_version: str
    created: str
    scope: Scope
    inputs: dict[str, InputFile]
    environment: dict[str, Any]
    seeds: dict[str, Any]
    command_line: str
    stage_seconds: dict[str, float | None]
    notes: list[str]
    coverage: CoverageReport
    plan: PlanSummary
    synthesis: dict[str, SynthesisSummary]
    realism: RealismDocument | None = Field(None, description="each synthesis mode's edits judged as a set against "
                                            "real images: a cross-fitted discriminator, feature distances")
    gallery: list[GalleryItem]
    arms: dict[str, Arm]
    comparisons: dict[str, Comparison]
    probe: ProbeDocument | None = Field(None, description="the probe of the frozen model; none when not run")
    skipped: dict[str, str] = Field(default_factory=dict, description="parts of the audit not run, and why")
    reader_study: dict[str, Any] | None = Field(None, description="the blinded reader study of the synthetic images "
                                                "(reader_study.json), once readers' answers were scored")
    data_sheet: dict[str, Any] | None = Field(None, description="per partition (train, val, test, synthetic): "
                                              "images, patients, prevalence, sex, age bands, views, devices; the "
                                              "patient-overlap check and near-duplicate images across partitions")
    evidence: dict[str, Any] | None = Field(None, description="where the report answers each item of the "
                                            "regulatory and reporting frameworks (audit/frameworks/*.yaml)")
    test_set: TestSet
    findings: MethodFindings = Field(default_factory=MethodFindings,
                                     description="coverage gaps, probe side effects, CARS against each control")
    verdict: Verdict

    def metrics(self, arm: str) -> MetricsDocument:
        return self.arms[arm].metrics


def load_audit(path: str | Path) -> AuditDocument:
    """A validated audit.json."""
    path = Path(path)
    raw = read_json(path, "Pass the audit.json of a finished `cxr-audit audit` run (or its run directory).")
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != AUDIT_SCHEMA_VERSION:
        raise UserInputError(f"{path} has schema_version {version!r}; this cxr-audit reads {AUDIT_SCHEMA_VERSION!r}. "
                             "Audit the model again with this version (`cxr-audit audit`), or pass the audit.json "
                             "of such a run.")
    return read_document(path, AuditDocument, "audit document", "")
