"""The typed documents of synthesis: one record per edit (records/<edit>.json, written as each edit finishes,
so an interrupted run resumes where it stopped) and the summary of a synthesize run (synthesis.json).
Readers go through these models, so an edited or foreign file is refused with the key named."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from cxr_audit.provenance import Document
from cxr_audit.synthesis.operations import Effect, OperationKind, operation_kind

SYNTHESIS_SCHEMA_VERSION = "2.2"  # 2.1: the swap operation; 2.2: budgets per cell (equal budgets)


class Operation(Document):
    op: Literal["insert", "delete", "swap"]
    concept: str
    to: str | None = Field(None, description="a swap: the concept put in the place of `concept` (same group)")

    @model_validator(mode="after")
    def _carried_out(self) -> "Operation":
        self.kind.check(self)
        return self

    @property
    def kind(self) -> OperationKind:
        """What this edit does (synthesis/operations.py)."""
        return operation_kind(self.op)

    @property
    def effects(self) -> list[Effect]:
        """Each concept the edit sets, its target value and the way its scores should move."""
        return self.kind.effects(self)

    @property
    def concepts(self) -> list[str]:
        return [effect.concept for effect in self.effects]

    @property
    def label(self) -> str:
        """How reports and records name the edit: 'insert Pleural Effusion', 'swap Consolidation -> Atelectasis'."""
        return f"{self.op} {self.concept}" + (f" -> {self.to}" if self.to else "")


class QCScores(Document):
    outside_mae: float
    outside_ssim: float
    alignment: float | None
    checker_before: float | None
    checker_after: float | None
    texture_ratio: float
    ground_truth_mae: float | None
    passed: bool
    reasons: list[str]
    ungradable: list[str] = Field(default_factory=list, description="concepts the checker was not fit to grade")
    lung_dice_outside: float | None = Field(None, description="segmented lungs of source and edit outside the region")
    ctr_before: float | None = Field(None, description="cardiothoracic ratio of the source (from the lung masks)")
    ctr_after: float | None = Field(None, description="cardiothoracic ratio of the edit")


class EditRecord(Document):
    edit_id: str
    cell_id: str
    source_image_id: str
    patient_id: str
    operations: list[Operation]
    target_vector: dict[str, float | None]
    seed: int
    source_sha256: str
    generator_sha256: str
    qc: QCScores
    sex: str | None
    age: float | None
    view: str | None


class SynthesisSummary(Document):
    schema_version: str = SYNTHESIS_SCHEMA_VERSION
    generator_sha256: str
    generator: dict[str, Any]          # the backend's card
    mode: str
    settings: dict[str, Any]
    qc_thresholds: dict[str, Any]
    planned: int = Field(ge=0, description="edits carried out")
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    rejected_by_reason: dict[str, int]
    accepted_by_cell: dict[str, int]
    mean_outside_mae: float | None
    checker_agreement: float | None
    mean_ground_truth_mae: float | None
    ungradable: int = Field(0, ge=0, description="edits setting a concept the checker cannot grade")
    accept_ungradable: bool = Field(False, description="whether such edits were kept (--accept-ungradable)")
    checker_grading: dict[str, dict[str, Any]] | None = Field(
        None, description="per concept: the checker's validation AUROC, positives, temperature, gradable")
    budgets: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per cell: the plan's count, accepted, attempts, sources, retries, status "
        "(synthesis/top_up.py); empty for the null edits, which redo the CARS arm's accepted edits")
    top_up: dict[str, Any] | None = Field(None, description="tries per source and attempts per planned edit")
    anatomy: dict[str, Any] | None = Field(None, description="the lung segmenter's reading of the edits: lung Dice "
                                           "outside the region, cardiothoracic ratio change per operation")

    @model_validator(mode="after")
    def _counts_add_up(self) -> "SynthesisSummary":
        """A summary whose counts disagree (edited by hand, or damaged) is refused, never judged."""
        if self.accepted + self.rejected != self.planned:
            raise ValueError(f"accepted ({self.accepted}) and rejected ({self.rejected}) edits do not add up to the "
                             f"{self.planned} carried out")
        if sum(self.accepted_by_cell.values()) != self.accepted:
            raise ValueError(f"the accepted edits per cell add up to {sum(self.accepted_by_cell.values())}, not "
                             f"{self.accepted}")
        return self


class Interval(Document):
    """A point estimate with its 95% bootstrap interval (none when not estimable)."""
    value: float | None
    ci: list[float | None] | None = None
    usable: int | None = None


class Discriminator(Document):
    auroc: Interval = Field(description="out-of-fold AUROC of telling synthetic from real: 0.5 = indistinguishable")
    by_operation: dict[str, Interval]
    by_concept: dict[str, Interval]
    folds: int
    most_confident: list[dict[str, Any]] = Field(description="the synthetic images it found least real: edit, score")

    @model_validator(mode="after")
    def _aurocs_are_shares(self) -> "Discriminator":
        """An AUROC outside [0, 1] (a document edited by hand) is refused, never judged."""
        for name, interval in [("auroc", self.auroc), *self.by_operation.items(), *self.by_concept.items()]:
            for value in [interval.value, *(interval.ci or [])]:
                if value is not None and not 0 <= value <= 1:
                    raise ValueError(f"discriminator AUROC {name!r} has {value}, outside [0, 1]")
        return self


class FeatureDistance(Document):
    frechet: Interval
    kernel: Interval
    reference_frechet: Interval = Field(description="the same distance between two patient-disjoint real halves")
    reference_kernel: Interval
    n_real: int
    n_synthetic: int


class ModeRealism(Document):
    mode: str
    n_real: int = Field(ge=0)
    n_synthetic: int = Field(ge=0)
    discriminator: Discriminator | None = None
    features: FeatureDistance | None = None
    feature_space: str | None = None
    skipped: str | None = Field(None, description="why this mode's realism was not measured")


class RealismDocument(Document):
    """realism.json: each synthesis mode's accepted edits judged as a set against real training images."""
    modes: dict[str, ModeRealism]
    settings: dict[str, Any]
