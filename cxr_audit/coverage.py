"""Coverage analysis: count each clinically important cell in a manifest and report the deficits.

A cell's `count` is the number of images positive for every `all_of` concept and negative (a known 0 after
the label policy) for every `none_of` concept, inside its subgroup; `patients` counts distinct patients.
Cells that break a clinical rule are flagged implausible and are never targeted for synthesis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from cxr_audit import __version__
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.spec import Cell, CoverageSpec, LabelPolicy, Subgroup

COVERAGE_SCHEMA_VERSION = "1.0"
AGE_BANDS: tuple[tuple[float, float], ...] = ((0, 18), (18, 40), (40, 60), (60, 80), (80, 121))


class ConceptCounts(BaseModel):
    positives: int
    negatives: int
    unknown: int


class CellCoverage(BaseModel):
    """One cell of the spec, counted."""

    id: str = Field(description="requirement id from the spec (pairwise cells: 'PAIR:A+B')")
    all_of: list[str]
    none_of: list[str]
    subgroup: Subgroup | None
    count: int = Field(description="images positive for all_of, negative for none_of, within the subgroup")
    patients: int = Field(description="distinct patients among those images")
    min_count: int
    deficit: int = Field(description="max(0, min_count - count)")
    plausible: bool = Field(description="false when the combination breaks a clinical rule")
    violations: list[str] = Field(description="the rules broken, empty when plausible")
    by_sex: dict[str, int] = Field(description="count split by sex (M, F, unknown)")
    by_view: dict[str, int] = Field(description="count split by view (PA, AP, LAT, unknown: none given, or a "
                                    "frontal film of unknown orientation)")
    by_age_band: dict[str, int] = Field(description="count split by age band 'lo-hi' (lo <= age < hi)")


class DatasetSummary(BaseModel):
    path: str
    format: str
    split: str = Field("all", description="the split counted: train (the training data), or all images")
    n_images: int = Field(description="images counted (after the frontal-only filter when it is on)")
    n_patients: int
    n_images_read: int = Field(description="rows read from the labels file before filtering")
    frontal_only: bool
    notes: list[str]


class CoverageReport(BaseModel):
    """Contents of coverage.json."""

    schema_version: str = COVERAGE_SCHEMA_VERSION
    tool_version: str = __version__
    inputs_sha256: dict[str, str] = Field(description="SHA-256 of each input file, by role")
    spec_path: str
    dataset: DatasetSummary
    label_policy: LabelPolicy
    concepts: dict[str, ConceptCounts]
    rules: list[str] = Field(description="every clinical rule applied (defaults and spec)")
    cells: list[CellCoverage]
    cooccurrence: dict[str, dict[str, int]] = Field(
        description="images positive for both concepts (diagonal: positives of one concept)")

    def deficits(self, plausible_only: bool = True) -> list[CellCoverage]:
        return [c for c in self.cells if c.deficit > 0 and (c.plausible or not plausible_only)]


def _breakdown(values: pd.Series, mask: np.ndarray, keys: list[str]) -> dict[str, int]:
    """Counts per key; every other value (none, or one the breakdown does not name, such as a frontal film of
    unknown orientation) is 'unknown', so the parts add up to the cell's count."""
    selected = values[mask].fillna("unknown").astype(str).value_counts()
    out = {key: int(selected.get(key, 0)) for key in keys}
    out["unknown"] = int(selected.sum()) - sum(out.values())
    return out


def _age_breakdown(ages: np.ndarray, mask: np.ndarray) -> dict[str, int]:
    selected = ages[mask]
    out = {f"{lo:g}-{hi:g}": int(((selected >= lo) & (selected < hi)).sum()) for lo, hi in AGE_BANDS}
    out["unknown"] = int(np.isnan(selected).sum())
    return out


def count_cell(cell: Cell, frame: pd.DataFrame, labels: np.ndarray, index: dict[str, int],
               patient_codes: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The images that fall in a cell, with the image and patient counts."""
    mask = cell.subgroup_mask(frame)
    for concept in cell.all_of:
        mask &= labels[:, index[concept]] == 1
    for concept in cell.none_of:
        mask &= labels[:, index[concept]] == 0  # NaN (unknown) compares False: unknown never counts
    return mask, int(mask.sum()), int(np.unique(patient_codes[mask]).size)


def analyse_coverage(manifest: Manifest, spec: CoverageSpec, spec_path: str | Path,
                     inputs_sha256: dict[str, str], split: str = "all", data_path: str | None = None,
                     notes: list[str] | None = None) -> CoverageReport:
    """Count every cell of `spec` on `manifest` (the training data of the model under audit: `split` says
    which split of the labels file it is; `data_path` is how reports name the labels file; `notes`, what was
    decided about the data, default the manifest's)."""
    manifest.require_concepts(spec.concepts, f"The coverage spec {spec_path}")
    n_read = len(manifest)
    if spec.frontal_only:
        manifest = manifest.frontal()
        if n_read and not len(manifest):
            raise UserInputError(f"{spec_path}: frontal_only is on, and none of the {n_read:,} images of "
                                 f"{data_path or manifest.source} is frontal (PA or AP). Check the view column, or set "
                                 "'frontal_only: false' in the spec to count every view.")
    frame = manifest.frame
    labels = manifest.labels(spec.concepts, spec.label_policy)
    index = {name: j for j, name in enumerate(spec.concepts)}
    patient_codes, _ = pd.factorize(frame["patient_id"])
    ages = frame["age"].to_numpy(dtype=float)
    rules = spec.rule_set()

    cells = []
    for cell in spec.all_cells():
        mask, count, patients = count_cell(cell, frame, labels, index, patient_codes)
        violations = rules.violations(cell.all_of, cell.none_of)
        cells.append(CellCoverage(
            id=cell.id, all_of=cell.all_of, none_of=cell.none_of, subgroup=cell.subgroup,
            count=count, patients=patients, min_count=cell.min_count,
            deficit=max(0, cell.min_count - count), plausible=not violations, violations=violations,
            by_sex=_breakdown(frame["sex"], mask, ["M", "F"]),
            by_view=_breakdown(frame["view"], mask, ["PA", "AP", "LAT"]),
            by_age_band=_age_breakdown(ages, mask),
        ))

    positive = (labels == 1).astype(np.int64)
    cooc = positive.T @ positive
    concept_counts = {
        name: ConceptCounts(positives=int((labels[:, j] == 1).sum()), negatives=int((labels[:, j] == 0).sum()),
                            unknown=int(np.isnan(labels[:, j]).sum()))
        for name, j in index.items()
    }
    return CoverageReport(
        inputs_sha256=inputs_sha256,
        spec_path=str(spec_path),
        dataset=DatasetSummary(path=data_path or str(manifest.source), format=manifest.format, split=split,
                               n_images=len(frame),
                               n_patients=manifest.n_patients, n_images_read=n_read,
                               frontal_only=spec.frontal_only,
                               notes=manifest.notes if notes is None else notes),
        label_policy=spec.label_policy,
        concepts=concept_counts,
        rules=[r.describe() for r in rules.rules],
        cells=cells,
        cooccurrence={a: {b: int(cooc[i, j]) for b, j in index.items()} for a, i in index.items()},
    )


def load_coverage(path: str | Path) -> CoverageReport:
    return CoverageReport.model_validate_json(Path(path).read_text())
