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
FRONTAL_VIEWS = ("PA", "AP")


_VIEW_ALIASES = {
    "PA": "PA", "POSTEROANTERIOR": "PA",
    "AP": "AP", "AP SUPINE": "AP", "AP AXIAL": "AP", "AP ERECT": "AP", "ANTEROPOSTERIOR": "AP",
    "LATERAL": "LAT", "LAT": "LAT", "LL": "LAT", "RL": "LAT", "LLD": "LAT", "RLD": "LAT",
}
_SEX_ALIASES = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F"}
MAX_PLAUSIBLE_AGE = 120


def normalise_views(values: pd.Series) -> pd.Series:
    """PA / AP / LAT from the spellings used by NIH, CheXpert, MIMIC and DICOM; anything else is None."""
    cleaned = values.astype("string").str.strip().str.upper().str.replace("_", " ", regex=False)
    return cleaned.map(_VIEW_ALIASES).astype(object).where(lambda s: s.notna(), None)


def normalise_sex(values: pd.Series) -> pd.Series:
    cleaned = values.astype("string").str.strip().str.upper()
    return cleaned.map(_SEX_ALIASES).astype(object).where(lambda s: s.notna(), None)


def normalise_age(values: pd.Series, notes: list[str], source: Path) -> pd.Series:
    """Ages as floats; impossible ages (NIH has a few over 400) become unknown and are noted."""
    ages = pd.to_numeric(values, errors="coerce").astype(float)
    impossible = (ages < 0) | (ages > MAX_PLAUSIBLE_AGE)
    if impossible.any():
        notes.append(f"{source.name}: {int(impossible.sum())} ages outside 0-{MAX_PLAUSIBLE_AGE} "
                     "treated as unknown")
        ages = ages.mask(impossible)
    return ages


def check_relative_path(rel: str, where: str) -> str:
    """Reject absolute paths and '..' escapes at read time; symlink escapes are caught in resolve_image."""
    if not rel or rel != rel.strip():
        raise UserInputError(f"{where}: empty or whitespace-padded image path {rel!r}.")
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

    def images(self, size: int, progress: bool = False) -> np.ndarray:
        """Every image, in row order, as (N, 1, size, size) float32 in [0, 1]."""
        from tqdm import tqdm

        from cxr_audit.data.images import load_resized

        paths = [self.resolve_image(p) for p in self.frame["path"]]
        loaded = [load_resized(p, size) for p in tqdm(paths, desc="loading images", unit="img", disable=not progress,
                                                         leave=False)]
        return np.stack(loaded)[:, None].astype(np.float32) if loaded else np.zeros((0, 1, size, size), np.float32)
