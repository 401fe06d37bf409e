"""The typed documents of evaluation: metrics.json (one model scored on one split) and probe.json (the frozen
model on (source, edited) pairs). Written by the evaluate and probe stages, read by the audit, the gate,
`compare` and the report, always through these models, so a malformed file is refused with the key named."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from cxr_audit.provenance import Document

METRICS_SCHEMA_VERSION = "2.0"
PROBE_SCHEMA_VERSION = "2.0"
SUMMARY_METRICS = ("auprc", "auroc", "ece", "ace", "mce", "brier", "smece", "calibration_intercept", "calibration_slope",
                   "entropy")
THRESHOLD_METRICS = ("precision", "recall", "specificity", "f1")


class Interval(Document):
    """A point estimate and its 95% interval. The interval is None where it is not estimable: the metric is
    undefined (no positives) or defined in too few bootstrap replicates (`usable` says how many were)."""

    value: float | None
    ci: list[float | None] | None = None
    usable: int | None = Field(None, description="bootstrap replicates in which the metric was defined")

    @property
    def estimable(self) -> bool:
        return self.ci is not None and None not in self.ci


class Difference(Document):
    """new - old from the paired bootstrap, with its interval and a two-sided p-value."""

    difference: float | None
    ci: list[float | None] | None = None
    p_value: float | None = None


class Threshold(Document):
    value: float
    source: str


class _Scores(Document):
    """The metrics a binary target (a concept, a cell) gets, each with its interval (absent on a cell that
    could not be evaluated)."""

    auprc: Interval | None = None
    auroc: Interval | None = None
    ece: Interval | None = None
    ace: Interval | None = None
    mce: Interval | None = None
    brier: Interval | None = None
    smece: Interval | None = Field(None, description="smooth ECE (Blasiok and Nakkiran), relplot's estimator")
    calibration_intercept: Interval | None = Field(None, description="a in logit P(y) = a + logit(p); 0 is calibrated")
    calibration_slope: Interval | None = Field(None, description="b in logit P(y) = a + b logit(p); 1 is calibrated")
    entropy: Interval | None = None
    mutual_information: Interval | None = None
    precision: Interval | None = None
    recall: Interval | None = None
    specificity: Interval | None = None
    f1: Interval | None = None

    def metric(self, name: str) -> Interval:
        value = getattr(self, name, None)
        return value if isinstance(value, Interval) else Interval(value=None)


class ConceptMetrics(_Scores):
    n: int
    positives: int
    patients: int
    prevalence: float | None
    threshold: Threshold


class CellMetrics(_Scores):
    """A coverage cell scored as a binary task; `evaluated` false (with the reason) when it cannot be."""

    evaluated: bool
    reason: str | None = None
    all_of: list[str] = Field(default_factory=list)
    none_of: list[str] = Field(default_factory=list)
    subgroup: dict[str, Any] | None = None
    plausible: bool = True
    n: int | None = None
    positives: int | None = None
    threshold: Threshold | None = None


class SubgroupMetrics(Document):
    """One concept in one subgroup; metrics absent when the subgroup is too small to score."""

    n: int
    positives: int
    auroc: Interval | None = None
    auprc: Interval | None = None


class SubgroupGap(Interval):
    """The largest difference between the subgroups of one variable (best minus worst), with its interval."""

    highest: str
    lowest: str


class ContextGap(Document):
    """One finding of a cell scored in the cell's context (the cell's other conditions hold) and in the covered
    context (they do not): evaluation/context_gaps.py. The cell context's AUPRC is at the covered context's
    prevalence. A gap is cell context minus covered; negative is worse where training data was thin."""

    context: str
    n_cell_context: int
    positives_cell_context: int
    n_covered: int
    positives_covered: int
    reason: str = Field("", description="why the contexts were not scored (too few positives or negatives)")
    auroc_cell_context: Interval | None = None
    auroc_covered: Interval | None = None
    auroc_gap: Difference | None = None
    auprc_cell_context: Interval | None = None
    auprc_covered: Interval | None = None
    auprc_gap: Difference | None = None


class SmoothReliability(Document):
    """relplot's smooth reliability curve on a mesh of predicted probabilities, with a 95% patient-bootstrap
    band and the density of the predictions (metrics/calibration.smooth_reliability)."""

    sigma: float
    mesh: list[float]
    mean: list[float]
    lower: list[float]
    upper: list[float]
    density: list[float]


class Reliability(Document):
    bin_edges: list[float]
    confidence: list[float | None]
    frequency: list[float | None]
    count: list[int]
    smooth: SmoothReliability | None = None


class Curve(Document):
    precision: list[float]
    recall: list[float]


class UncertaintyHistogram(Document):
    bin_edges: list[float]
    entropy_bits: list[int]
    mutual_information_bits: list[int] | None = None


class ModelInfo(Document):
    path: str
    sha256: str
    format: str
    card: dict[str, Any] | None = None
    ensemble: list[dict[str, str]] | None = None
    recalibration: dict[str, Any] | None = Field(None, description="the recalibrated arm: method and, per concept, "
                                                 "the map fitted on the validation split")


class DataInfo(Document):
    path: str
    sha256: str
    format: str
    split: str
    label_policy: dict[str, Any]


class Bootstrap(Document):
    unit: str
    replicates: int
    seed: int
    interval: str


class UncertaintyMethod(Document):
    method: str
    samples: int


class MetricsDocument(Document):
    """metrics.json: one model (or a black box's predictions) on one split of real images."""

    schema_version: str = METRICS_SCHEMA_VERSION
    tool_version: str
    model: ModelInfo
    data: DataInfo
    notes: list[str]
    n_images: int
    n_patients: int
    bootstrap: Bootstrap
    uncertainty: UncertaintyMethod
    concepts: dict[str, ConceptMetrics]
    cells: dict[str, CellMetrics]
    reliability: dict[str, Reliability]
    pr_curves: dict[str, Curve]
    uncertainty_histograms: dict[str, UncertaintyHistogram]
    subgroups: dict[str, dict[str, dict[str, SubgroupMetrics]]] = Field(
        default_factory=dict, description="variable (sex, age_band, view, manufacturer, model) -> level -> concept")
    subgroup_gaps: dict[str, dict[str, dict[str, SubgroupGap]]] = Field(
        default_factory=dict, description="concept -> variable -> metric (auroc, auprc) -> the largest gap")
    context_gaps: dict[str, dict[str, ContextGap]] = Field(
        default_factory=dict, description="cell -> finding -> the finding in the cell's context against the covered one")

    def evaluated_cells(self) -> list[str]:
        return [cell for cell, entry in self.cells.items() if entry.evaluated]

    def target(self, name: str) -> _Scores | None:
        """A concept, or 'cell:<id>', as the replicates files name targets."""
        return self.cells.get(name[5:]) if name.startswith("cell:") else self.concepts.get(name)


# ---------------------------------------------------------------------------------------------------------
# probe.json


class ProbePair(Document):
    edit_id: str
    cell_id: str
    concept: str
    op: str = Field(description="insert, delete, swap out (the concept a swap replaces), swap in (its replacement)")
    expected_direction: int = Field(1, description="+1: the concept's score should rise; -1: fall")
    score_before: float
    score_after: float
    directional_change: float
    flipped: bool
    leakage: float


class ProbeGroup(Document):
    concept: str | None = None
    op: str | None = None
    expected_direction: int | None = Field(None, description="+1: the concept's score should rise; -1: fall")
    pairs: int
    mean_score_before: float
    mean_score_after: float
    directional_change: Interval
    share_expected_direction: Interval
    flip_rate: Interval
    leakage: Interval


class ProbeSideEffect(Document):
    """What one kind of edit does to the score of a concept it did not touch (evaluation/probe.py)."""

    edit: str
    concept: str
    concept_present: bool
    pairs: int
    baseline: str = Field("source", description="what a shift is measured from: 'source' (the unedited image) or "
                                                  "'null edit' (the same region regenerated without the change)")
    mean_harm: Interval = Field(description="mean shift toward the wrong answer (down if present, up if absent), "
                                            "beyond the null edit's when the baseline is 'null edit'")
    share_harmful: Interval = Field(description="share of pairs whose score moved toward the wrong answer (further "
                                                "than under the null edit, with that baseline)")
    harmful: bool = Field(description="both intervals exclude chance (mean > 0, share > 50%) and the mean is >= 0.02")


class ProbeDocument(Document):
    schema_version: str = PROBE_SCHEMA_VERSION
    model: dict[str, str]
    synthesis: dict[str, str | None]
    pairs_scored: int
    accepted_only: bool
    thresholds: dict[str, float]
    bootstrap: Bootstrap
    by_concept: dict[str, ProbeGroup]
    by_cell: dict[str, ProbeGroup]
    side_effects: dict[str, ProbeSideEffect] = Field(default_factory=dict)
    pairs: list[ProbePair]
