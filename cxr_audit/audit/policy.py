"""A gate policy: the rules a CI gate judges an audit by (docs/gates.example.yaml), as typed YAML. The gate
(audit/gate.py) judges them; this module only says what a valid policy is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

ConceptSelection = Union[Literal["all"], list[str]]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="name shown in CI (default: derived from the rule)")


class MinMetric(_Rule):
    """Each concept's metric must be at least `min`, judged on the lower 95% CI bound."""
    type: Literal["min_metric"]
    metric: Literal["auprc", "auroc", "f1", "precision", "recall", "specificity"] = "auroc"
    concepts: ConceptSelection = "all"
    min: float = Field(ge=0, le=1)


class MaxEce(_Rule):
    """Each concept's ECE must be at most `max` (on the point estimate, or the upper bound if `use_upper_bound`)."""
    type: Literal["max_ece"]
    concepts: ConceptSelection = "all"
    max: float = Field(ge=0, le=1)
    use_upper_bound: bool = False


class MaxSmoothEce(_Rule):
    """Each concept's smooth ECE (relplot's estimator, no bins to choose) must be at most `max`, on the point
    estimate or, with `use_upper_bound`, on the upper 95% bound."""
    type: Literal["max_smece"]
    concepts: ConceptSelection = "all"
    max: float = Field(ge=0, le=1)
    use_upper_bound: bool = False


class CalibrationSlope(_Rule):
    """Each concept's calibration slope must be consistent with 1 (its 95% interval contains 1), or, with
    `min`/`max`, its interval must lie within them (a slope below 1: predictions too extreme; above: too
    timid)."""
    type: Literal["calibration_slope"]
    concepts: ConceptSelection = "all"
    min: float | None = Field(None, gt=0)
    max: float | None = Field(None, gt=0)


class NonInferiority(_Rule):
    """Against the baseline model: the lower CI bound of (new - old) must be above -margin."""
    type: Literal["non_inferiority"]
    metric: Literal["auprc", "auroc"] = "auprc"
    concepts: ConceptSelection = "all"
    cells: ConceptSelection | None = None
    margin: float = Field(ge=0, le=1)


class CellMetric(_Rule):
    """Per coverage cell: the metric's lower CI bound at least `min`."""
    type: Literal["cell_metric"]
    metric: Literal["auprc", "auroc"] = "auprc"
    cells: ConceptSelection = "all"
    min: float = Field(ge=0, le=1)


class CoverageRule(_Rule):
    """Each listed cell has at least `min_images` (default: the spec's min_count) real images, or real plus
    accepted synthetic ones where `count_synthetic` is true."""
    type: Literal["coverage"]
    cells: ConceptSelection = "all"
    min_images: int | None = Field(None, ge=0)
    count_synthetic: bool = False


class MaxUncertaintyRise(_Rule):
    """Against the baseline model: mean predictive entropy (bits) may rise by at most `max_rise`."""
    type: Literal["max_uncertainty_rise"]
    concepts: ConceptSelection = "all"
    max_rise: float = Field(ge=0)


class MaxSubgroupGap(_Rule):
    """Between the subgroups of each variable (sex, age band, view, device), a concept's metric may differ by at
    most `max`, judged on the upper 95% bound of the largest gap (a small subgroup cannot pass by luck)."""
    type: Literal["max_subgroup_gap"]
    metric: Literal["auroc", "auprc"] = "auroc"
    concepts: ConceptSelection = "all"
    variables: Literal["all"] | list[Literal["sex", "age_band", "view", "manufacturer", "model"]] = "all"
    max: float = Field(ge=0, le=1)


class QcRule(_Rule):
    """The share of synthetic edits rejected by QC is at most `max_rejected_share`."""
    type: Literal["qc"]
    max_rejected_share: float = Field(ge=0, le=1)


class MaxRealismAuroc(_Rule):
    """The realism discriminator's AUROC (0.5: synthetic images cannot be told from real ones) is at most `max`
    for each listed synthesis mode, judged on the upper 95% bound. A mode whose realism was not measured
    (too few accepted edits) fails the check: a set nobody judged is not passed as real."""
    type: Literal["max_realism_auroc"]
    modes: list[Literal["cars", "unconstrained", "null_edits"]] = ["cars"]
    max: float = Field(ge=0.5, le=1)


Rule = Annotated[Union[MinMetric, MaxEce, MaxSmoothEce, CalibrationSlope, NonInferiority, CellMetric, CoverageRule, MaxUncertaintyRise, QcRule,
                       MaxSubgroupGap, MaxRealismAuroc],
                 Field(discriminator="type")]


class GatePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[1]
    not_estimable: Literal["fail", "skip"] = Field(
        "fail", description="a bound that cannot be estimated (too few positives for a bootstrap interval) fails "
                            "its check, or is skipped; it never passes")
    arm: str = Field("baseline", description="which arm of the candidate audit is gated (baseline: the model "
                                             "as submitted)")
    allow_empty: bool = Field(False, description="a gate whose every rule was skipped (nothing estimable) passes; "
                                                 "by default it fails, never passing having judged nothing")
    rules: list[Rule] = Field(min_length=1)


def load_policy(path: Path) -> GatePolicy:
    from cxr_audit.yamlio import load_yaml_model

    return load_yaml_model(path, GatePolicy, "gate policy", "See docs/gates.example.yaml.",
                           "'version: 1' and 'rules'", "the example policy docs/gates.example.yaml")
