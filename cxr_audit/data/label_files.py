"""Reading the label files a user points at: a CSV with clear errors, image paths checked, and the concept
columns with their labels (1, 0, -1 or empty; two columns of one concept must agree). The format readers
(readers.py) build on these."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit import concepts
from cxr_audit.data.manifest import check_relative_path
from cxr_audit.errors import UserInputError


def read_csv(path: Path, what: str, option: str = "--data", **kwargs) -> pd.DataFrame:
    """A CSV the user points at (`what` and `option` name it in messages)."""
    if not path.exists():
        raise UserInputError(f"{what} {path} does not exist. Check {option}.")
    if path.is_dir():
        mimic = " (a folder is read as MIMIC-CXR-JPG with --format mimic)" if option == "--data" else ""
        raise UserInputError(f"{what} {path} is a folder; pass the CSV file{mimic}.")
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise UserInputError(f"{what} {path} is empty (no header, no rows). Pass a CSV with a header row and one "
                             f"row per image ({option}).") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError, ValueError) as exc:
        raise UserInputError(f"{what} {path} cannot be read as CSV: {exc}. Is it the right file?") from None


def require_columns(frame: pd.DataFrame, path: Path, required: list[str], fmt_help: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) + (" ..." if len(frame.columns) > 12 else "")
        raise UserInputError(
            f"{path} lacks the column(s) {missing} that the {fmt_help} needs. Found: {found}. "
            "Pass the right file, or choose another --format (nih, chexpert, mimic, csv)."
        )


def validate_paths(paths: pd.Series, source: Path) -> pd.Series:
    """Relative, non-empty image paths (a blank cell is refused, never read as an image named 'nan')."""
    return pd.Series([check_relative_path("" if pd.isna(p) else str(p), f"{source}, row {i + 2}")
                      for i, p in enumerate(paths)], index=paths.index, dtype=object)


def shown(value) -> str:
    """A cell's value as the user typed it (not numpy's repr)."""
    return repr(value.item() if hasattr(value, "item") else value)


def label_column(values: pd.Series, source: Path, column: str) -> np.ndarray:
    """A raw label column as float: 1, 0, -1 or NaN; anything else is an error naming the row."""
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    bad = (numeric.isna() & values.notna() & (values.astype(str).str.strip() != "")) | \
          (~numeric.isna() & ~numeric.isin([1.0, 0.0, -1.0]))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserInputError(
            f"{source}, row {row + 2}, column {column!r}: label {shown(values.iloc[row])} is not 1, 0, -1 or empty. "
            "Fix the value (1 positive, 0 negative, -1 uncertain, empty unmentioned)."
        )
    return numeric.to_numpy()


def concept_columns(columns: list[str]) -> dict[str, str]:
    """{csv column: canonical concept} for every column whose name is a concept or alias (two columns may name
    one concept: 'Effusion' and 'Pleural Effusion'; `read_labels` checks that they agree)."""
    return {column: canonical for column in columns if (canonical := concepts.try_resolve(column)) is not None}


def read_labels(frame: pd.DataFrame, columns: dict[str, str], source: Path, notes: list[str]) -> dict[str, np.ndarray]:
    """{concept: labels} from the concept columns. Two columns of one concept must agree on every row (else
    which one counts would be a silent choice): disagreeing ones are refused, naming both and the row."""
    labels: dict[str, np.ndarray] = {}
    first_column: dict[str, str] = {}
    for column, canonical in columns.items():
        values = label_column(frame[column], source, column)
        if canonical not in labels:
            labels[canonical], first_column[canonical] = values, column
            continue
        kept = labels[canonical]
        differ = ~((kept == values) | (np.isnan(kept) & np.isnan(values)))
        if differ.any():
            row = int(np.flatnonzero(differ)[0])
            raise UserInputError(
                f"{source}: columns {first_column[canonical]!r} and {column!r} both name {canonical} and disagree, "
                f"e.g. row {row + 2} ({shown(frame[first_column[canonical]].iloc[row])} against "
                f"{shown(frame[column].iloc[row])}). Keep one of them, or make them agree.")
        notes.append(f"{source.name}: columns {first_column[canonical]!r} and {column!r} both name {canonical}; "
                     "they agree on every row, so they are read as one")
    return labels
