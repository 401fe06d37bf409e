"""Splits by patient: which images a stage may see.

Training stages (coverage of the training data, plan, generator, checker, fine-tuning) see the train split;
evaluation sees the test split. Data without a split column gets patients assigned to train/val/test with
the run's seed, and a note says so; data with splits keeps them, and a patient in two splits is refused.
"""

from __future__ import annotations

import numpy as np

from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError

SPLITS = ("train", "val", "test")


def has_splits(manifest: Manifest) -> bool:
    return bool(len(manifest)) and bool(manifest.frame["split"].notna().all())


def assign_patient_splits(manifest: Manifest, fractions: dict[str, float] | None = None,
                          seed: int = 0) -> Manifest:
    """Give every image a train/val/test split so that no patient is in two splits.

    Splits already in the manifest (MIMIC's split file, NIH's official lists) are kept (the reader checked
    that no patient is in two: manifest.check_integrity). Otherwise patients are shuffled with `seed` and cut
    by the fractions (default 70/10/20).
    """
    frame = manifest.frame.copy()
    if frame["split"].notna().all():
        return manifest
    fractions = fractions or {"train": 0.7, "val": 0.1, "test": 0.2}
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise UserInputError(f"split fractions {fractions} must add up to 1.")
    patients = np.array(sorted(frame["patient_id"].astype(str).unique()))
    order = np.random.default_rng(seed).permutation(len(patients))
    bounds = np.round(np.cumsum(list(fractions.values())) * len(patients)).astype(int)
    assignment: dict[str, str] = {}
    start = 0
    for name, stop in zip(fractions, bounds):
        assignment.update({p: name for p in patients[order[start:stop]]})
        start = stop
    frame["split"] = frame["patient_id"].astype(str).map(assignment)
    return manifest.with_frame(frame)


def carve_validation(manifest: Manifest, seed: int, fraction: float = 0.125) -> tuple[Manifest, list[str]]:
    """A validation split taken from the training patients when the data's own splits have none (NIH's
    official lists are train_val and test): early stopping and calibration need one, and drawing it from
    the test split would leak. Returns the manifest and the note saying what was done."""
    frame = manifest.frame
    if (frame["split"] == "val").any() or not (frame["split"] == "train").any():
        return manifest, []
    train_patients = np.array(sorted(frame.loc[frame["split"] == "train", "patient_id"].astype(str).unique()))
    chosen = set(np.random.default_rng(seed).permutation(train_patients)[:round(fraction * len(train_patients))])
    frame = frame.copy()
    moved = (frame["split"] == "train") & frame["patient_id"].astype(str).isin(chosen)
    frame.loc[moved, "split"] = "val"
    return manifest.with_frame(frame), [
        f"the data's splits have no val: {len(chosen):,} of {len(train_patients):,} train patients "
        f"({int(moved.sum()):,} images) moved to val with seed {seed}"]


def coverage_split(manifest: Manifest, split: str) -> str:
    """The split coverage counts: the training data is what a coverage spec is about, so 'auto' is the train
    split when the data has splits and every image otherwise (the labels file is then the training data)."""
    if split != "auto":
        return split
    return "train" if has_splits(manifest) and (manifest.frame["split"] == "train").any() else "all"


def evaluation_split(manifest: Manifest, split: str) -> str:
    """The split evaluation scores: 'auto' is the test split when the data has one, else every image (an
    external test set)."""
    if split != "auto":
        return split
    return "test" if has_splits(manifest) and (manifest.frame["split"] == "test").any() else "all"
