"""The Manifest: one row per image, standard metadata columns plus one raw label column per concept.

Raw labels keep the dataset's meaning: 1 positive, 0 negative, -1 uncertain, NaN unmentioned. The label
policy (spec.LabelPolicy) turns them into 1 / 0 / unknown only when a stage asks for labels, so the same
manifest can be read under U-Ignore and U-Ones without re-reading the CSV.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit.errors import UserInputError
from cxr_audit.spec import LabelPolicy

# Metadata columns every reader fills (NaN / None where the format has no such information).
META_COLUMNS = ("image_id", "path", "patient_id", "view", "sex", "age", "split")
# FRONTAL: a film the dataset marks frontal without saying PA or AP (CheXpert has some).
FRONTAL_VIEWS = ("PA", "AP", "FRONTAL")


_VIEW_ALIASES = {
    "PA": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "AP SUPINE": "AP", "AP AXIAL": "AP", "AP ERECT": "AP", "ANTEROPOSTERIOR": "AP",
    "LATERAL": "LAT", "LAT": "LAT", "LL": "LAT", "RL": "LAT", "LLD": "LAT", "RLD": "LAT",
}
_SEX_ALIASES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
MAX_PLAUSIBLE_AGE = 120


def _note_unmapped(raw: pd.Series, mapped: pd.Series, what: str, accepted: str, notes: list[str],
                   source: Path, outcome: str) -> None:
    """Values present in the file that the tool does not know are never dropped silently: they are noted."""
    blank = raw.isna() | (raw.astype("string").str.strip() == "")
    unknown = raw[mapped.isna() & ~blank]
    if len(unknown):
        examples = ", ".join(repr(str(v)) for v in unknown.astype(str).unique()[:4])
        notes.append(f"{source.name}: {len(unknown)} images with a {what} that is not one of {accepted} "
                     f"({examples}): {outcome}")


def normalise_views(values: pd.Series, notes: list[str], source: Path) -> pd.Series:
    """PA / AP / LAT from the spellings used by NIH, CheXpert, MIMIC and DICOM; any other view (oblique,
    swimmer's, ...) is unknown, noted, and left out of frontal-only counts."""
    cleaned = values.astype("string").str.strip().str.upper().str.replace("_", " ", regex=False)
    mapped = cleaned.map(_VIEW_ALIASES)
    _note_unmapped(values, mapped, "view", "PA, AP, lateral", notes, source,
                   "neither frontal nor lateral, left out of frontal-only counts")
    return mapped.astype(object).where(lambda s: s.notna(), None)


def normalise_sex(values: pd.Series, notes: list[str], source: Path) -> pd.Series:
    cleaned = values.astype("string").str.strip().str.upper()
    mapped = cleaned.map(_SEX_ALIASES)
    _note_unmapped(values, mapped, "sex", "M, F, Male, Female", notes, source, "sex taken as unknown")
    return mapped.astype(object).where(lambda s: s.notna(), None)


def normalise_age(values: pd.Series, notes: list[str], source: Path) -> pd.Series:
    """Ages as floats ('058Y', DICOM's form, is 58); impossible ages (NIH has a few over 400) and values that
    are not ages become unknown, and are noted."""
    text = values.astype("string").str.strip().str.upper().str.removesuffix("Y")
    ages = pd.to_numeric(text, errors="coerce").astype(float)
    _note_unmapped(values, ages.where(ages.notna(), None), "age", "a number of years", notes, source,
                   "age taken as unknown")
    impossible = (ages < 0) | (ages > MAX_PLAUSIBLE_AGE)
    if impossible.any():
        notes.append(f"{source.name}: {int(impossible.sum())} ages outside 0-{MAX_PLAUSIBLE_AGE} "
                     "treated as unknown")
        ages = ages.mask(impossible)
    return ages


_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validate": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}


def normalise_splits(values: pd.Series, source: Path) -> pd.Series:
    """train / val / test from the usual spellings (any case; MIMIC's 'validate'); blank is no split. Any
    other name is refused: an image in a split the tool does not know would silently leave every split."""
    cleaned = values.astype("string").str.strip().str.lower()
    mapped = cleaned.map(_SPLIT_ALIASES)
    blank = cleaned.isna() | (cleaned == "")
    unknown = mapped.isna() & ~blank
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise UserInputError(f"{source}, row {row + 2}: split {str(values.iloc[row])!r} is not train, val or test "
                             "(validate, validation, valid and dev also mean val). Fix the split column, or drop it "
                             "to let the tool assign patients to splits.")
    return mapped.astype(object).where(lambda s: s.notna(), None)


def check_relative_path(rel: str, where: str) -> str:
    """Reject absolute paths and '..' escapes at read time; symlink escapes are caught in resolve_image."""
    if not rel or rel != rel.strip() or rel.lower() == "nan":
        raise UserInputError(f"{where}: empty or whitespace-padded image path {rel!r}. Every row needs the path of "
                             "its image.")
    if "\0" in rel or any(ord(c) < 32 for c in rel):
        raise UserInputError(f"{where}: image path {rel!r} contains control characters (a NUL byte?).")
    normalised = os.path.normpath(rel)
    if os.path.isabs(rel) or normalised == ".." or normalised.startswith(".." + os.sep):
        raise UserInputError(
            f"{where}: image path {rel!r} points outside the dataset root. Paths in the labels file must be "
            "relative to the dataset root (--root); fix the path or choose the right root."
        )
    return normalised


@dataclass
class Manifest:
    """Images of one dataset with metadata and raw concept labels."""

    frame: pd.DataFrame
    root: Path
    source: Path
    format: str
    concepts: list[str]
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_patients(self) -> int:
        return int(self.frame["patient_id"].nunique())

    def with_frame(self, frame: pd.DataFrame) -> "Manifest":
        return replace(self, frame=frame.reset_index(drop=True))

    def frontal(self) -> "Manifest":
        """Frontal (PA/AP) images only: the classifiers this tool audits read frontal films."""
        return self.with_frame(self.frame[self.frame["view"].isin(FRONTAL_VIEWS)])

    def split(self, name: str) -> "Manifest":
        return self.with_frame(self.frame[self.frame["split"] == name])

    def require_concepts(self, wanted: list[str], where: str) -> None:
        missing = [c for c in wanted if c not in self.concepts]
        if missing:
            raise UserInputError(
                f"{where} uses {missing}, but {self.source} ({self.format} format) has no labels for "
                f"{'it' if len(missing) == 1 else 'them'}. Labelled concepts: {', '.join(self.concepts)}. "
                "Remove them from the spec or use a dataset that labels them."
            )

    def labels(self, concepts: list[str], policy: LabelPolicy) -> np.ndarray:
        """Labels under the policy as float32 (n_images, n_concepts): 1, 0 or NaN for unknown."""
        self.require_concepts(concepts, "The request")
        out = np.empty((len(self.frame), len(concepts)), dtype=np.float32)
        replacement = {"ignore": np.nan, "zeros": 0.0, "ones": 1.0}
        for j, concept in enumerate(concepts):
            raw = self.frame[concept].to_numpy(dtype=np.float32, na_value=np.nan)
            column = raw.copy()
            column[raw == -1] = replacement[policy.uncertain_for(concept)]
            column[np.isnan(raw)] = replacement[policy.unmentioned]
            out[:, j] = column
        return out

    def resolve_image(self, rel_path: str) -> Path:
        """Absolute path of an image; refuses anything (a symlink included) that leads outside the root."""
        root = self.root.resolve()
        full = (root / check_relative_path(rel_path, f"{self.source}")).resolve()
        if not full.is_relative_to(root):
            raise UserInputError(f"{self.source}: image {rel_path!r} resolves to {full}, outside the dataset "
                                 f"root {root} (a symbolic link?). Keep images under the root.")
        return full

    def images(self, size: int, progress: bool = False, cache_dir: Path | None = None,
               workers: int | None = None) -> np.ndarray:
        """Every image, in row order, as (N, 1, size, size) float32 in [0, 1]: decoded in parallel, or read
        from the decoded-image store under `cache_dir` (data/decoded.py)."""
        from cxr_audit.data.decoded import load_images

        return load_images([self.resolve_image(p) for p in self.frame["path"]], size, cache_dir, workers, progress)

    def image_rows(self, size: int, progress: bool = False, cache_dir: Path | None = None,
                   workers: int | None = None):
        """Every image, in row order, as data.image_rows.ImageRows: rows of the decoded-image store under
        `cache_dir` (decoded into it first where missing), read on demand; in memory without a cache."""
        from cxr_audit.data.decoded import store_images
        from cxr_audit.data.image_rows import ArrayImages

        if cache_dir is None or not len(self.frame):
            return ArrayImages(self.images(size, progress, None, workers))
        return store_images([self.resolve_image(p) for p in self.frame["path"]], size, cache_dir, workers, progress)

    def holds_dicom(self, sample: int = 20) -> bool:
        """Whether the images are DICOM (judged on the first `sample`: a dataset is one format)."""
        from cxr_audit.data.images import is_dicom

        paths = [self.resolve_image(p) for p in self.frame["path"][:sample]]
        return any(p.suffix.lower() in (".dcm", ".dicom") or (p.is_file() and is_dicom(p)) for p in paths)

    def with_equipment(self) -> pd.DataFrame:
        """The frame, with each DICOM image's manufacturer and model from its header (subgroups, the data
        sheet); unchanged for other images."""
        from cxr_audit.data.dicom import equipment

        frame = self.frame.copy()
        if not len(frame) or not self.holds_dicom():
            return frame
        fields = [equipment(self.resolve_image(p)) for p in frame["path"]]
        frame["manufacturer"] = [f["Manufacturer"] for f in fields]
        frame["model"] = [" ".join(v for v in (f["Manufacturer"], f["ManufacturerModelName"]) if v) or None
                          for f in fields]
        return frame


def check_integrity(manifest: Manifest, allow_duplicates: bool = False) -> Manifest:
    """What every reader's manifest must satisfy before any count or metric is computed from it:

    - an image listed twice is refused (it would count twice); with `allow_duplicates`, rows repeated with
      the same labels are kept once, with a note; the same image with different labels is always refused;
    - a split column is filled for every row or for none (a half-filled one would be silently re-split);
    - no patient is in two splits (leakage between training and test).
    """
    frame, source = manifest.frame, manifest.source
    repeated = frame.duplicated("image_id", keep=False)
    if repeated.any():
        label_columns = ["image_id", *manifest.concepts]
        conflicting = frame[repeated].drop_duplicates(label_columns).duplicated("image_id", keep=False)
        image = frame.loc[repeated, "image_id"].iloc[0]
        rows = np.flatnonzero((frame["image_id"] == image).to_numpy())[:2] + 2
        if conflicting.any() or not allow_duplicates:
            why = "with different labels" if conflicting.any() else "twice"
            fix = ("Remove the duplicated rows." if conflicting.any() or allow_duplicates else
                   "Remove the duplicated rows, or pass --allow-duplicates to keep each once.")
            raise UserInputError(f"{source}: image {image!r} is listed {why} (rows {rows[0]} and {rows[1]}; "
                                 f"{int(repeated.sum())} rows are repeats). An image listed twice would be counted "
                                 f"twice. {fix}")
        kept = frame.drop_duplicates("image_id")
        manifest = manifest.with_frame(kept)
        manifest.notes.append(f"{source.name}: {len(frame) - len(kept)} repeated rows (same image, same labels) "
                              "kept once (--allow-duplicates)")
        frame = manifest.frame
    split = frame["split"]
    if split.notna().any() and split.isna().any():
        row = int(np.flatnonzero(split.isna().to_numpy())[0])
        raise UserInputError(f"{source}, row {row + 2}: no split, while other rows have one. Fill the split of every "
                             "row, or drop the split column to let the tool assign patients to splits.")
    if split.notna().all():
        per_patient = frame.groupby("patient_id")["split"].nunique()
        leaking = per_patient[per_patient > 1]
        if len(leaking):
            patient = leaking.index[0]
            splits = sorted(frame.loc[frame["patient_id"] == patient, "split"].unique())
            raise UserInputError(f"{source}: {len(leaking)} patients appear in more than one split (e.g. patient "
                                 f"{patient!r} in {' and '.join(splits)}): training and test images of one patient "
                                 "make every metric optimistic. Fix the split column so each patient is in one "
                                 "split only.")
    return manifest
