"""Readers that turn a dataset's own labels file into a :class:`Manifest`.

Formats: NIH ChestX-ray14 `Data_Entry_2017`, CheXpert `train.csv`/`valid.csv`, MIMIC-CXR-JPG (chexpert
labels + metadata + split files) and a generic CSV (a path column and one column per concept).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit import concepts
from cxr_audit.data.manifest import (
    META_COLUMNS,
    Manifest,
    check_relative_path,
    normalise_age,
    normalise_sex,
    normalise_views,
)
from cxr_audit.errors import UserInputError

FORMATS = ("nih", "chexpert", "mimic", "csv")


def _read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    if not path.exists():
        raise UserInputError(f"{what} {path} does not exist. Check --data.")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise UserInputError(f"{what} {path} cannot be read as CSV: {exc}. Is it the right file?") from None


def _require_columns(frame: pd.DataFrame, path: Path, required: list[str], fmt_help: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:12])) + (" ..." if len(frame.columns) > 12 else "")
        raise UserInputError(
            f"{path} lacks the column(s) {missing} that the {fmt_help} needs. Found: {found}. "
            "Pass the right file, or choose another --format (nih, chexpert, mimic, csv)."
        )


def _validate_paths(paths: pd.Series, source: Path) -> pd.Series:
    return pd.Series([check_relative_path(str(p), f"{source}, row {i + 2}") for i, p in enumerate(paths)],
                     index=paths.index, dtype=object)


def _label_column(values: pd.Series, source: Path, column: str) -> np.ndarray:
    """A raw label column as float: 1, 0, -1 or NaN; anything else is an error naming the row."""
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    bad = (numeric.isna() & values.notna() & (values.astype(str).str.strip() != "")) | \
          (~numeric.isna() & ~numeric.isin([1.0, 0.0, -1.0]))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise UserInputError(
            f"{source}, row {row + 2}, column {column!r}: label {values.iloc[row]!r} is not 1, 0, -1 or empty. "
            "Fix the value (1 positive, 0 negative, -1 uncertain, empty unmentioned)."
        )
    return numeric.to_numpy()


def _concept_columns(columns: list[str]) -> dict[str, str]:
    """{csv column: canonical concept} for every column whose name is a concept or alias."""
    found: dict[str, str] = {}
    for column in columns:
        canonical = concepts.try_resolve(column)
        if canonical is not None and canonical not in found.values():
            found[column] = canonical
    return found


# Columns the phantom writes so that any row can be rendered again (ground truth for synthetic edits).
PHANTOM_COLUMNS = ("study", "patient_seed", "study_seed", "ctr")


def _assemble(meta: pd.DataFrame, labels: dict[str, np.ndarray], root: Path, source: Path, fmt: str,
              notes: list[str], extra: pd.DataFrame | None = None) -> Manifest:
    frame = meta.reindex(columns=list(META_COLUMNS)).reset_index(drop=True)
    frame["patient_id"] = frame["patient_id"].astype(str)
    label_frame = pd.DataFrame({name: values for name, values in labels.items()}, dtype=np.float32)
    parts = [frame, label_frame]
    if extra is not None and len(extra.columns):
        parts.append(extra.reset_index(drop=True))
    frame = pd.concat(parts, axis=1)
    if len(frame) == 0:
        raise UserInputError(f"{source} has no image rows.")
    return Manifest(frame=frame, root=root, source=source, format=fmt, concepts=list(labels), notes=notes)


# ---------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14


NIH_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]


def read_nih(csv_path: Path, root: Path | None = None) -> Manifest:
    """NIH `Data_Entry_2017`: pipe-separated 'Finding Labels'; the 14 findings are exhaustive (absent = 0).

    Images are looked up under `root/images/` when that folder exists, else directly under `root`
    (default: the CSV's folder). `train_val_list.txt` / `test_list.txt` beside the CSV set official splits.
    """
    source = Path(csv_path)
    raw = _read_csv(source, "NIH labels file", dtype={"Patient ID": str})
    _require_columns(raw, source, NIH_COLUMNS, "NIH Data_Entry_2017 format")
    root = Path(root) if root is not None else source.parent
    notes: list[str] = []

    findings = raw["Finding Labels"].fillna("").astype(str).str.get_dummies(sep="|")
    labels: dict[str, np.ndarray] = {}
    for column in findings.columns:
        name = column.strip()
        if name == "":
            continue
        canonical = concepts.try_resolve(name)
        if canonical is None:
            row = int(np.flatnonzero(findings[column].to_numpy())[0])
            raise UserInputError(f"{source}, row {row + 2}: unknown finding {name!r} in 'Finding Labels'. "
                                 f"Expected NIH names such as {', '.join(concepts.NIH_14[:4])}, ... or No Finding.")
        labels[canonical] = findings[column].to_numpy(dtype=np.float32)
    for name in (*concepts.NIH_14, concepts.NO_FINDING):  # exhaustive: a finding never listed is 0
        labels.setdefault(name, np.zeros(len(raw), dtype=np.float32))

    image_dir = "images/" if (root / "images").is_dir() else ""
    meta = pd.DataFrame({
        "image_id": raw["Image Index"].astype(str),
        "path": _validate_paths(image_dir + raw["Image Index"].astype(str), source),
        "patient_id": raw["Patient ID"].astype(str).str.lstrip("0").replace("", "0"),
        "view": normalise_views(raw["View Position"]),
        "sex": normalise_sex(raw["Patient Gender"]),
        "age": normalise_age(raw["Patient Age"], notes, source),
        "split": _nih_official_splits(source.parent, raw["Image Index"].astype(str)),
    })
    return _assemble(meta, labels, root, source, "nih", notes)


def _nih_official_splits(folder: Path, image_ids: pd.Series) -> pd.Series:
    train_list, test_list = folder / "train_val_list.txt", folder / "test_list.txt"
    if not (train_list.exists() and test_list.exists()):
        return pd.Series([None] * len(image_ids), dtype=object)
    assignment = {name: "train" for name in train_list.read_text().split()}
    assignment.update({name: "test" for name in test_list.read_text().split()})
    return image_ids.map(assignment).astype(object).where(lambda s: s.notna(), None)


# ---------------------------------------------------------------------------------------------------------
# CheXpert


CHEXPERT_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


def read_chexpert(csv_path: Path, root: Path | None = None) -> Manifest:
    """CheXpert `train.csv` / `valid.csv` (also the phantom's output, which adds a 'patient_id' column).

    Paths in CheXpert start with the dataset folder ('CheXpert-v1.0-small/train/...'), so when the CSV sits
    in that folder the root is its parent.
    """
    source = Path(csv_path)
    raw = _read_csv(source, "CheXpert labels file")
    _require_columns(raw, source, CHEXPERT_COLUMNS, "CheXpert CSV format")
    if root is None:
        first = Path(str(raw["Path"].iloc[0])).parts[0] if len(raw) else ""
        root = source.parent.parent if first == source.parent.name else source.parent
    notes: list[str] = []
    label_columns = _concept_columns([c for c in raw.columns if c not in (*CHEXPERT_COLUMNS, *PHANTOM_COLUMNS)])
    if not label_columns:
        raise UserInputError(f"{source} has no concept columns (e.g. 'Cardiomegaly', 'Pleural Effusion').")
    labels = {canon: _label_column(raw[col], source, col) for col, canon in label_columns.items()}

    if "patient_id" in raw.columns:
        patients = raw["patient_id"].astype(str)
    else:
        patients = raw["Path"].astype(str).str.extract(_CHEXPERT_PATIENT, expand=False)
        if patients.isna().any():
            row = int(np.flatnonzero(patients.isna().to_numpy())[0])
            raise UserInputError(f"{source}, row {row + 2}: no 'patientNNNNN' in Path {raw['Path'].iloc[row]!r} "
                                 "and no 'patient_id' column; add a patient_id column.")
    lateral = raw["Frontal/Lateral"].astype(str).str.strip().str.lower() == "lateral"
    views = normalise_views(raw["AP/PA"]).where(~lateral, "LAT")
    meta = pd.DataFrame({
        "image_id": raw["Path"].astype(str),
        "path": _validate_paths(raw["Path"].astype(str), source),
        "patient_id": patients,
        "view": views,
        "sex": normalise_sex(raw["Sex"]),
        "age": normalise_age(raw["Age"], notes, source),
        "split": raw["split"].astype(object) if "split" in raw.columns else None,
    })
    extra = raw[[c for c in PHANTOM_COLUMNS if c in raw.columns]]
    return _assemble(meta, labels, root, source, "chexpert", notes, extra)


# ---------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


def _find_one(folder: Path, stem: str, required: bool = True) -> Path | None:
    for candidate in (folder / f"{stem}.csv.gz", folder / f"{stem}.csv"):
        if candidate.exists():
            return candidate
    if required:
        raise UserInputError(f"MIMIC-CXR-JPG folder {folder} lacks {stem}.csv(.gz). --data must be the folder "
                             "holding mimic-cxr-2.0.0-chexpert, -metadata and -split files.")
    return None


def read_mimic(data: Path, root: Path | None = None) -> Manifest:
    """MIMIC-CXR-JPG 2.0: chexpert labels per study, joined to each DICOM's metadata and official split.

    Sex and age are not in MIMIC-CXR-JPG; a MIMIC-IV `patients.csv(.gz)` beside the files adds them.
    """
    folder = Path(data)
    folder = folder.parent if folder.is_file() else folder
    if not folder.is_dir():
        raise UserInputError(f"MIMIC-CXR-JPG folder {folder} does not exist. Check --data.")
    labels_path = _find_one(folder, "mimic-cxr-2.0.0-chexpert")
    meta_path = _find_one(folder, "mimic-cxr-2.0.0-metadata")
    split_path = _find_one(folder, "mimic-cxr-2.0.0-split")
    patients_path = _find_one(folder, "patients", required=False)
    notes: list[str] = []

    label_raw = _read_csv(labels_path, "MIMIC chexpert labels file")
    _require_columns(label_raw, labels_path, ["subject_id", "study_id"], "MIMIC chexpert labels file")
    meta_raw = _read_csv(meta_path, "MIMIC metadata file")
    _require_columns(meta_raw, meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                     "MIMIC metadata file")
    split_raw = _read_csv(split_path, "MIMIC split file")
    _require_columns(split_raw, split_path, ["dicom_id", "split"], "MIMIC split file")

    merged = meta_raw.merge(label_raw, on=["subject_id", "study_id"], how="inner", validate="many_to_one")
    merged = merged.merge(split_raw[["dicom_id", "split"]], on="dicom_id", how="left")
    if patients_path is not None:
        patients = _read_csv(patients_path, "MIMIC-IV patients file")
        _require_columns(patients, patients_path, ["subject_id", "gender", "anchor_age"], "MIMIC-IV patients file")
        merged = merged.merge(patients[["subject_id", "gender", "anchor_age"]], on="subject_id", how="left")
    else:
        merged["gender"], merged["anchor_age"] = None, np.nan
        notes.append("no MIMIC-IV patients file: sex and age unknown, subgroup cells by sex/age count nothing")

    label_columns = _concept_columns([c for c in label_raw.columns if c not in ("subject_id", "study_id")])
    labels = {canon: _label_column(merged[col], labels_path, col) for col, canon in label_columns.items()}
    subject = merged["subject_id"].astype(int).astype(str)
    paths = ("files/p" + subject.str[:2] + "/p" + subject + "/s" + merged["study_id"].astype(int).astype(str)
             + "/" + merged["dicom_id"].astype(str) + ".jpg")
    meta = pd.DataFrame({
        "image_id": merged["dicom_id"].astype(str),
        "path": _validate_paths(paths, meta_path),
        "patient_id": subject,
        "view": normalise_views(merged["ViewPosition"]),
        "sex": normalise_sex(merged["gender"]),
        "age": normalise_age(merged["anchor_age"], notes, patients_path or meta_path),
        "split": merged["split"].astype(str).str.lower().replace({"validate": "val", "nan": None}),
    })
    return _assemble(meta, labels, Path(root) if root else folder, meta_path, "mimic", notes)


# ---------------------------------------------------------------------------------------------------------
# Generic CSV


_GENERIC_META = {
    "path": ("path", "image_path", "image", "filename", "file", "Path", "Image Index"),
    "patient_id": ("patient_id", "patient", "Patient ID", "subject_id", "PatientID"),
    "view": ("view", "View Position", "ViewPosition", "AP/PA"),
    "sex": ("sex", "Sex", "gender", "Patient Gender"),
    "age": ("age", "Age", "Patient Age"),
    "split": ("split", "Split"),
}


def read_generic_csv(csv_path: Path, root: Path | None = None) -> Manifest:
    """Any CSV with an image path column and one column per concept (names or aliases, values 1/0/-1/empty).

    Optional columns: patient_id (else each image is its own patient), view, sex, age, split.
    """
    source = Path(csv_path)
    raw = _read_csv(source, "Labels CSV")
    found = {key: next((c for c in names if c in raw.columns), None) for key, names in _GENERIC_META.items()}
    if found["path"] is None:
        _require_columns(raw, source, ["path"], "generic CSV format (an image path column)")
    meta_columns = {c for c in found.values() if c is not None}
    label_columns = _concept_columns([c for c in raw.columns if c not in meta_columns])
    if not label_columns:
        raise UserInputError(f"{source} has no concept columns. Name columns after concepts, e.g. "
                             f"'Cardiomegaly', 'Pleural Effusion' (aliases such as 'Effusion' work).")
    notes: list[str] = []
    paths = raw[found["path"]].astype(str)
    meta = pd.DataFrame({
        "image_id": paths,
        "path": _validate_paths(paths, source),
        "patient_id": raw[found["patient_id"]].astype(str) if found["patient_id"] else paths,
        "view": normalise_views(raw[found["view"]]) if found["view"] else None,
        "sex": normalise_sex(raw[found["sex"]]) if found["sex"] else None,
        "age": normalise_age(raw[found["age"]], notes, source) if found["age"] else np.nan,
        "split": raw[found["split"]].astype(object) if found["split"] else None,
    })
    if not found["view"]:
        notes.append(f"{source.name}: no view column; all images taken as frontal (PA)")
        meta["view"] = "PA"
    labels = {canon: _label_column(raw[col], source, col) for col, canon in label_columns.items()}
    return _assemble(meta, labels, Path(root) if root else source.parent, source, "csv", notes)


READERS: dict[str, Callable[..., Manifest]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "csv": read_generic_csv,
}


def detect_format(data: Path) -> str:
    """The format of a labels file from its columns (a folder is MIMIC-CXR-JPG); the generic CSV otherwise."""
    if data.is_dir():
        return "mimic"
    header = _read_csv(data, "Labels file", nrows=0).columns
    for fmt, required in (("nih", NIH_COLUMNS), ("chexpert", CHEXPERT_COLUMNS)):
        if all(column in header for column in required):
            return fmt
    return "csv"


def read_manifest(data: str | Path, fmt: str = "auto", root: str | Path | None = None) -> Manifest:
    """Read a dataset's labels in the given format (nih, chexpert, mimic, csv; auto: detected)."""
    if fmt == "auto":
        fmt = detect_format(Path(data))
    if fmt not in READERS:
        raise UserInputError(f"unknown --format {fmt!r}; choose one of auto, {', '.join(FORMATS)}.")
    return READERS[fmt](Path(data), Path(root) if root is not None else None)
