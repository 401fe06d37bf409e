"""Predictions of a model known only through its outputs: a CSV with an image id column and one
probability column per concept (names through the aliases; a common prefix such as `prob_` is stripped)."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass
class ScoreTable:
    """A predictions CSV as read and checked: one row of probabilities per image key."""

    path: Path
    keys: pd.Series          # the id column, as text
    concepts: list[str]      # canonical concept of each probability column
    values: np.ndarray       # (rows, concepts) float32 in [0, 1]
    notes: list[str]

    def rows_of(self, wanted: pd.Series, what: str) -> np.ndarray:
        """The table's rows for the keys `wanted` (every one must be there), in their order."""
        lookup = pd.Series(np.arange(len(self.keys)), index=self.keys.to_numpy())
        missing = wanted[~wanted.isin(lookup.index)]
        if len(missing):
            raise UserInputError(f"{self.path} has no prediction for {len(missing)} of {len(wanted)} {what} (e.g. "
                                 f"{missing.iloc[0]!r}). Predictions must cover every one.")
        return lookup.loc[wanted.to_numpy()].to_numpy()


def read_score_table(path: str | Path, option: str = "--predictions") -> ScoreTable:
    """A black box's predictions: an id column and one probability column per concept, every value in [0, 1],
    no id twice."""
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"Predictions file {path} does not exist. Check {option}.")
    raw = read_csv(path, "Predictions file", option)
    id_column = next((c for c in ID_COLUMNS if c in raw.columns), None)
    if id_column is None:
        raise UserInputError(f"Predictions file {path} has no image id column; name one of {list(ID_COLUMNS)}. "
                             f"Found: {', '.join(map(str, raw.columns[:10]))}.")
    mapping = {c: _concept_of(c) for c in raw.columns if c != id_column}
    mapping = {c: name for c, name in mapping.items() if name is not None}
    if not mapping:
        raise UserInputError(f"Predictions file {path} has no probability column named after a concept, e.g. "
                             "'prob_Cardiomegaly' or 'Effusion'.")
    if len(set(mapping.values())) < len(mapping):
        twice = next(name for name in mapping.values() if list(mapping.values()).count(name) > 1)
        columns = [c for c, name in mapping.items() if name == twice]
        raise UserInputError(f"Predictions file {path}: columns {', '.join(map(repr, columns))} are all read as "
                             f"{twice!r}; keep one.")
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
    if keys.duplicated().any():
        raise UserInputError(f"{path}: image id {keys[keys.duplicated()].iloc[0]!r} appears twice.")
    return ScoreTable(path, keys.reset_index(drop=True), list(mapping.values()), values.to_numpy(np.float32), notes)


def read_predictions(path: str | Path, manifest: Manifest) -> tuple[list[str], np.ndarray, list[str]]:
    """(concepts, probabilities aligned with manifest rows, notes)."""
    table = read_score_table(path)
    wanted = _match_keys(manifest, set(table.keys))
    rows = table.rows_of(wanted, "images in the data")
    notes = list(table.notes)
    extra = len(table.keys) - len(set(rows))
    if extra:
        notes.append(f"{table.path.name}: {extra} predictions for images outside the evaluated set were ignored")
    return table.concepts, table.values[rows], notes


def _match_keys(manifest: Manifest, keys: set[str]) -> pd.Series:
    """The manifest's own key that the predictions use: image id, path, or file name."""
    frame = manifest.frame
    for candidate in (frame["image_id"].astype(str), frame["path"].astype(str),
                      frame["path"].astype(str).map(os.path.basename)):
        if candidate.isin(keys).mean() > 0.5:
            return candidate.reset_index(drop=True)
    return frame["image_id"].astype(str).reset_index(drop=True)
