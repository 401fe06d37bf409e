"""The clinical-coverage spec: which concept combinations (cells) must be covered, and how well.

The spec is YAML validated by pydantic. Any problem is reported as a :class:`UserInputError` naming the
file, the line and the key, because the spec is written by hand by clinicians and auditors.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from cxr_audit import concepts
from cxr_audit.errors import UserInputError
from cxr_audit.yamlio import load_yaml_model

SPEC_VERSION = 1
LabelValuePolicy = Literal["ignore", "zeros", "ones"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _canonical(name: str) -> str:
    # ValueError (not UserInputError) so that pydantic reports the key and we can add the line number.
    try:
        return concepts.resolve(name)
    except UserInputError as exc:
        raise ValueError(str(exc)) from None


ConceptName = Annotated[str, AfterValidator(_canonical)]


class LabelPolicy(_Strict):
    """How uncertain (-1) and unmentioned (blank) labels become 1 / 0 / unknown.

    `uncertain` follows the CheXpert paper's U-Ignore / U-Zeros / U-Ones; `overrides` sets it per concept
    (e.g. U-Ones for Atelectasis and Edema). `unmentioned` treats blanks in CheXpert-style CSVs.
    """

    uncertain: LabelValuePolicy = "ignore"
    unmentioned: LabelValuePolicy = "zeros"
    overrides: dict[ConceptName, LabelValuePolicy] = Field(default_factory=dict)

    def uncertain_for(self, concept: str) -> LabelValuePolicy:
        return self.overrides.get(concept, self.uncertain)


class Subgroup(_Strict):
    """Restricts a cell to a population: sex, an age band lo <= age < hi, and/or a view."""

    sex: Literal["M", "F"] | None = None
    age: tuple[float, float] | None = None
    view: Literal["PA", "AP", "LAT"] | None = None

    @field_validator("sex", mode="before")
    @classmethod
    def _upper_sex(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("view", mode="before")
    @classmethod
    def _upper_view(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("age")
    @classmethod
    def _ordered_band(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"age band must be [lo, hi] with lo < hi, got {list(value)}")
        return value

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of a manifest frame (columns sex, view, age) belong to this subgroup."""
        mask = np.ones(len(frame), dtype=bool)
        if self.sex is not None:
            mask &= (frame["sex"] == self.sex).to_numpy()
        if self.view is not None:
            mask &= (frame["view"] == self.view).to_numpy()
        if self.age is not None:
            age = frame["age"].to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):  # unknown ages (NaN) are in no band
                mask &= (age >= self.age[0]) & (age < self.age[1])
        return mask

    def label(self) -> str:
        parts = []
        if self.sex:
            parts.append(f"sex={self.sex}")
        if self.age:
            parts.append(f"age={self.age[0]:g}-{self.age[1]:g}")
        if self.view:
            parts.append(f"view={self.view}")
        return ", ".join(parts) or "all"


class Cell(_Strict):
    """A concept combination that must be represented: all of `all_of` positive, none of `none_of`."""

    id: str = Field(min_length=1)
    all_of: list[ConceptName] = Field(min_length=1)
    none_of: list[ConceptName] = Field(default_factory=list)
    min_count: int = Field(ge=0)
    subgroup: Subgroup | None = None
    description: str = ""
    swaps: list[tuple[ConceptName, ConceptName]] = Field(
        default_factory=list, description="swaps the planner may use to reach the cell in one edit: [replaced, "
        "put in its place], a none_of concept for an all_of one of the same group")

    @model_validator(mode="after")
    def _disjoint(self) -> "Cell":
        both = set(self.all_of) & set(self.none_of)
        if both:
            raise ValueError(f"{sorted(both)} cannot be in both all_of and none_of")
        for old, new in self.swaps:
            if old not in self.none_of or new not in self.all_of:
                raise ValueError(f"swap [{old}, {new}]: a swap replaces a none_of concept by an all_of one")
            if concepts.get(old).group != concepts.get(new).group:
                raise ValueError(f"swap [{old}, {new}]: a swap stays within a group ({old} is "
                                 f"{concepts.get(old).group}, {new} is {concepts.get(new).group})")
        return self

    @property
    def concepts(self) -> list[str]:
        return [*self.all_of, *self.none_of]

    def subgroup_mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Rows of `frame` inside the cell's subgroup (every row when it has none)."""
        return self.subgroup.mask(frame) if self.subgroup is not None else np.ones(len(frame), dtype=bool)


class Pairwise(_Strict):
    """Generate one cell per unordered pair of concepts in scope."""

    min_count: int = Field(ge=0)
    subgroup: Subgroup | None = None


class RuleSpec(_Strict):
    """A user rule, added to the defaults of :mod:`cxr_audit.concepts`."""

    if_: ConceptName = Field(alias="if")
    implies: ConceptName | None = None
    excludes: ConceptName | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "RuleSpec":
        if (self.implies is None) == (self.excludes is None):
            raise ValueError("a rule needs exactly one of 'implies' or 'excludes'")
        return self

    def to_rule(self) -> concepts.Rule:
        kind = "implies" if self.implies is not None else "excludes"
        then = self.implies if self.implies is not None else self.excludes
        return concepts.Rule(self.if_, kind, then, "spec")


class SynthesisOptions(_Strict):
    """How deficits may be filled with synthetic images (CARS)."""

    budget_per_cell: int = Field(200, ge=0, description="most synthetic images planned for one cell")
    max_positive_findings: int = Field(3, ge=1, description="most positive findings in a target vector")
    allow_unseen_combinations: bool = Field(
        False, description="synthesize targets whose set of findings no real image has (needs clinical sign-off)")
    # Equal budgets by construction: an arm whose edits QC rejects keeps drawing sources for the cell (the
    # plan's reserves, then the same sources again under new seeds) until it has the plan's count accepted.
    tries_per_source: int = Field(2, ge=1, le=10, description="most attempts on one source image (new seed each)")
    attempts_per_edit: float = Field(4.0, ge=1, le=50, description="most attempts per planned edit of a cell, "
                                     "reserves and retries included (1: no top-up, QC's rejections are lost)")


class CoverageSpec(_Strict):
    version: Literal[1] = SPEC_VERSION
    concepts: list[ConceptName] = Field(min_length=1)
    label_policy: LabelPolicy = Field(default_factory=LabelPolicy)
    cells: list[Cell] = Field(default_factory=list)
    pairwise: Pairwise | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    frontal_only: bool = True
    synthesis: SynthesisOptions = Field(default_factory=SynthesisOptions)

    @model_validator(mode="after")
    def _consistent(self) -> "CoverageSpec":
        if len(set(self.concepts)) != len(self.concepts):
            raise ValueError("concepts lists a concept twice (after resolving aliases)")
        seen: set[str] = set()
        for cell in self.cells:
            if cell.id in seen:
                raise ValueError(f"cell id {cell.id!r} is used twice; ids must be unique")
            seen.add(cell.id)
            outside = [c for c in cell.concepts if c not in self.concepts]
            if outside:
                raise ValueError(f"cell {cell.id!r} uses {outside}, which are not in 'concepts'; add them there")
        return self

    def rule_set(self) -> concepts.RuleSet:
        return concepts.RuleSet().extended(r.to_rule() for r in self.rules)

    def all_cells(self) -> list[Cell]:
        """The explicit cells, then one generated cell per pair of concepts when `pairwise` is set."""
        cells = list(self.cells)
        if self.pairwise is not None:
            taken = {c.id for c in cells}
            for a, b in itertools.combinations(self.concepts, 2):
                cell_id = f"PAIR:{a}+{b}"
                if cell_id not in taken:
                    cells.append(Cell(id=cell_id, all_of=[a, b], min_count=self.pairwise.min_count,
                                      subgroup=self.pairwise.subgroup))
        return cells


def load_spec(path: str | Path) -> CoverageSpec:
    """Read and validate a coverage spec; every problem becomes a UserInputError naming file and line."""
    return load_yaml_model(path, CoverageSpec, "coverage spec",
                           "Pass --spec with a YAML file, e.g. coverage_specs/nih.yaml.",
                           "at least 'version', 'concepts' and 'cells' (see README.md, 'Coverage spec')",
                           "the spec format in README.md, 'Coverage spec'")
