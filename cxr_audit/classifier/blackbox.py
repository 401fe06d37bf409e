"""Predictions of a model known only through its outputs: a CSV with an image id column and one
probability column per concept (names through the aliases; a common prefix such as `prob_` is stripped)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit import concepts
from cxr_audit.data.label_files import read_csv, shown
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError

ID_COLUMNS = ("Image Index", "image_id", "image", "Path", "path", "filename", "dicom_id")
PREFIXES = ("prob_", "probability_", "pred_", "p_", "score_", "prob ", "")


def _concept_of(column: str) -> str | None:
    for prefix in PREFIXES:
        if column.lower().startswith(prefix):
            canonical = concepts.try_resolve(column[len(prefix):])
            if canonical is not None:
                return canonical
    return None


def read_predictions(path: str | Path, manifest: Manifest) -> tuple[list[str], np.ndarray, list[str]]:
    """(concepts, probabilities aligned with manifest rows, notes)."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"Predictions file {path} does not exist. Check --predictions.")
    raw = read_csv(path, "Predictions file", "--predictions")
    id_column = next((c for c in ID_COLUMNS if c in raw.columns), None)
    if id_column is None:
        raise UserInputError(f"Predictions file {path} has no image id column; name one of {list(ID_COLUMNS)}. "
                             f"Found: {', '.join(map(str, raw.columns[:10]))}.")
    mapping = {c: _concept_of(c) for c in raw.columns if c != id_column}
    mapping = {c: name for c, name in mapping.items() if name is not None}
    if not mapping:
        raise UserInputError(f"Predictions file {path} has no probability column named after a concept, e.g. "
                             "'prob_Cardiomegaly' or 'Effusion'.")
    notes = []
    ignored = [c for c in raw.columns if c != id_column and c not in mapping]
    if ignored:
        notes.append(f"{path.name}: columns not read as predictions: {', '.join(ignored[:8])}")
    values = raw[list(mapping)].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | (values < 0) | (values > 1)
    if bad.any().any():
        row, col = np.argwhere(bad.to_numpy())[0]
        raise UserInputError(f"{path}, row {row + 2}, column {list(mapping)[col]!r}: "
                             f"{shown(raw.iloc[row][list(mapping)[col]])} is not a probability in [0, 1].")
    keys = raw[id_column].astype(str)
    lookup = pd.Series(np.arange(len(raw)), index=keys)
    if lookup.index.duplicated().any():
        raise UserInputError(f"{path}: image id {lookup.index[lookup.index.duplicated()][0]!r} appears twice.")
    wanted = _match_keys(manifest, set(keys))
    missing = wanted[~wanted.isin(lookup.index)]
    if len(missing):
        raise UserInputError(f"{path} has no prediction for {len(missing)} of {len(wanted)} images in the data "
                             f"(e.g. {missing.iloc[0]!r}). Predictions must cover every evaluated image.")
    rows = lookup.loc[wanted.to_numpy()].to_numpy()
    extra = len(raw) - len(set(rows))
    if extra:
        notes.append(f"{path.name}: {extra} predictions for images outside the evaluated set were ignored")
    return list(mapping.values()), values.to_numpy(np.float32)[rows], notes


def _match_keys(manifest: Manifest, keys: set[str]) -> pd.Series:
    """The manifest's own key that the predictions use: image id, path, or file name."""
    frame = manifest.frame
    for candidate in (frame["image_id"].astype(str), frame["path"].astype(str),
                      frame["path"].astype(str).map(os.path.basename)):
        if candidate.isin(keys).mean() > 0.5:
            return candidate.reset_index(drop=True)
    return frame["image_id"].astype(str).reset_index(drop=True)
