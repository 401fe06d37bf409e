"""The phantom's scenario: how often each finding and each combination occurs per split, findings that
depend on another (a confounder), and how findings look (difficulty, the silhouette sign). Read from the
`--prevalence` YAML of `cxr-audit phantom`; the demo's own scenario is `cxr_audit.stages.demo.DEMO_SCENARIO`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_audit import concepts
from cxr_audit.data import phantom

SPLIT_NAMES = ("train", "val", "test")

PerSplit = float | dict[str, float]


def _per_split(value: PerSplit, split: str) -> float:
    if isinstance(value, dict):
        return float(value.get(split, value.get("default", 0.0)))
    return float(value)


def _check_probability(value: PerSplit) -> PerSplit:
    values = value.values() if isinstance(value, dict) else [value]
    if any(not 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"probabilities must be between 0 and 1, got {value}")
    if isinstance(value, dict) and set(value) - {*SPLIT_NAMES, "default"}:
        raise ValueError(f"split keys must be among {SPLIT_NAMES} or 'default', got {sorted(value)}")
    return value


class Combination(BaseModel):
    """Sets how often all of `all_of` occur together (per split). A split given `null` leaves the findings
    independent there (each at its own prevalence)."""

    model_config = ConfigDict(extra="forbid")
    all_of: list[str] = Field(min_length=2)
    probability: float | dict[str, float | None]

    @field_validator("probability")
    @classmethod
    def _valid_probability(cls, value):
        if isinstance(value, dict):
            _check_probability({k: 0.0 if v is None else v for k, v in value.items()})
            return value
        return _check_probability(value)

    def rate(self, split: str) -> float | None:
        if isinstance(self.probability, dict) and split in self.probability and self.probability[split] is None:
            return None
        return _per_split(self.probability, split)

    @field_validator("all_of")
    @classmethod
    def _drawable(cls, names: list[str]) -> list[str]:
        return [_drawable_name(n) for n in names]


def _drawable_name(name: str) -> str:
    canonical = concepts.try_resolve(name)
    if canonical not in phantom.PHANTOM_FINDINGS:
        raise ValueError(f"{name!r} is not a finding the phantom draws ({', '.join(phantom.PHANTOM_FINDINGS)})")
    return canonical


class Dependence(BaseModel):
    """`finding` occurs with one probability when `on` is present and another when it is absent (per split):
    a confounder, as Support Devices are with Effusion in ICU films. Applied after findings and combinations."""

    model_config = ConfigDict(extra="forbid")
    finding: str
    on: str
    if_present: PerSplit
    if_absent: PerSplit

    @field_validator("finding", "on")
    @classmethod
    def _drawable(cls, name: str) -> str:
        return _drawable_name(name)

    @field_validator("if_present", "if_absent")
    @classmethod
    def _valid_probability(cls, value: PerSplit) -> PerSplit:
        return _check_probability(value)


class AppearanceSettings(BaseModel):
    """How findings look (phantom.study.Appearance), as the scenario file writes it."""

    model_config = ConfigDict(extra="forbid")
    silhouette: bool = False
    contrast: float = Field(1.0, gt=0, le=1)
    severity: tuple[float, float] = (0.4, 1.0)

    @field_validator("severity")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(f"severity must be [low, high] with 0 < low <= high <= 1, got {list(value)}")
        return value

    def to_appearance(self) -> phantom.Appearance:
        return phantom.Appearance(silhouette=self.silhouette, contrast=self.contrast,
                                  severity_min=self.severity[0], severity_max=self.severity[1])


class Prevalence(BaseModel):
    """The scenario: how often each finding, each listed combination and each dependent finding occurs in
    each split, and how findings look."""

    model_config = ConfigDict(extra="forbid")
    findings: dict[str, PerSplit] = Field(default_factory=lambda: {
        "Cardiomegaly": 0.2, "Pleural Effusion": 0.2, "Pneumothorax": 0.12, "Consolidation": 0.15,
        "Edema": 0.12, "Atelectasis": 0.15, "Nodule": 0.12, "Support Devices": 0.2})
    combinations: list[Combination] = Field(default_factory=list)
    dependencies: list[Dependence] = Field(default_factory=list)
    appearance: AppearanceSettings = Field(default_factory=AppearanceSettings)
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.7, "val": 0.1, "test": 0.2})
    studies_per_patient: tuple[int, int] = (1, 3)
    ap_fraction: float = Field(0.25, ge=0, le=1)

    @field_validator("findings")
    @classmethod
    def _check_findings(cls, value: dict[str, PerSplit]) -> dict[str, PerSplit]:
        return {_drawable_name(k): _check_probability(v) for k, v in value.items()}

    @field_validator("studies_per_patient")
    @classmethod
    def _check_studies(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1] <= 100:
            raise ValueError(f"studies_per_patient must be [low, high] with 1 <= low <= high <= 100, got {list(value)}")
        return value

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) - set(SPLIT_NAMES) or abs(sum(value.values()) - 1) > 1e-6:
            raise ValueError(f"splits must use {SPLIT_NAMES} and add up to 1, got {value}")
        return value

    def sample_present(self, rng: np.random.Generator, split: str) -> set[str]:
        present = {f for f in phantom.PHANTOM_FINDINGS if rng.random() < _per_split(self.findings.get(f, 0), split)}
        for combination in self.combinations:
            wanted, rate = set(combination.all_of), combination.rate(split)
            if rate is None:
                continue
            if rng.random() < rate:
                present |= wanted
            elif wanted <= present:  # occurred by chance: break it so the set rate holds
                present.discard(str(rng.choice(sorted(wanted))))
        for dependence in self.dependencies:
            chance = dependence.if_present if dependence.on in present else dependence.if_absent
            if rng.random() < _per_split(chance, split):
                present.add(dependence.finding)
            else:
                present.discard(dependence.finding)
        return present


def load_prevalence(path: str | Path | None) -> Prevalence:
    if path is None:
        return Prevalence()
    from cxr_audit.yamlio import load_yaml_model

    return load_yaml_model(path, Prevalence, "prevalence file", "Check --prevalence.",
                           "'findings', 'combinations', 'dependencies', 'appearance' and/or 'splits'", "the --prevalence format in README.md, 'The embedded phantom'")
