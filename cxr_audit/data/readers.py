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
from cxr_audit.data.label_files import (
    concept_columns,
    read_csv,
    read_labels,
    require_columns,
    shown,
    validate_paths,
)
from cxr_audit.data.manifest import (
    META_COLUMNS,
    Manifest,
    check_integrity,
    normalise_age,
    normalise_sex,
    normalise_splits,
    normalise_views,
)
from cxr_audit.errors import UserInputError

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


def _split_column(raw: pd.DataFrame, column: str | None, source: Path):
    return normalise_splits(raw[column], source) if column and column in raw.columns else None


# ---------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14


NIH_COLUMNS = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]


def read_nih(csv_path: Path, root: Path | None = None) -> Manifest:
    """NIH `Data_Entry_2017`: pipe-separated 'Finding Labels'; the 14 findings are exhaustive (absent = 0).

    Images are looked up under `root/images/` when that folder exists, else directly under `root`
    (default: the CSV's folder). `train_val_list.txt` / `test_list.txt` beside the CSV set official splits.
    """
    source = Path(csv_path)
    raw = read_csv(source, "NIH labels file", dtype={"Patient ID": str})
    require_columns(raw, source, NIH_COLUMNS, "NIH Data_Entry_2017 format")
    root = Path(root) if root is not None else source.parent
    notes: list[str] = []

    blank = raw["Finding Labels"].isna() | (raw["Finding Labels"].astype(str).str.strip() == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise UserInputError(f"{source}, row {row + 2}: 'Finding Labels' is empty. NIH lists every finding of an "
                             "image, and 'No Finding' for a normal one; an empty cell is unknown, not normal. Fix "
                             "the row (or remove it).")
    findings = raw["Finding Labels"].astype(str).str.get_dummies(sep="|")
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
        "path": validate_paths(image_dir + raw["Image Index"].astype(str), source),
        "patient_id": raw["Patient ID"].astype(str).str.lstrip("0").replace("", "0"),
        "view": normalise_views(raw["View Position"], notes, source),
        "sex": normalise_sex(raw["Patient Gender"], notes, source),
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
    raw = read_csv(source, "CheXpert labels file")
    require_columns(raw, source, CHEXPERT_COLUMNS, "CheXpert CSV format")
    if root is None:
        first = Path(str(raw["Path"].iloc[0])).parts[0] if len(raw) else ""
        root = source.parent.parent if first == source.parent.name else source.parent
    notes: list[str] = []
    label_columns = concept_columns([c for c in raw.columns if c not in (*CHEXPERT_COLUMNS, *PHANTOM_COLUMNS)])
    if not label_columns:
        raise UserInputError(f"{source} has no concept columns (e.g. 'Cardiomegaly', 'Pleural Effusion').")
    labels = read_labels(raw, label_columns, source, notes)

    if "patient_id" in raw.columns:
        patients = raw["patient_id"].astype(str)
    else:
        patients = raw["Path"].astype(str).str.extract(_CHEXPERT_PATIENT, expand=False)
        if patients.isna().any():
            row = int(np.flatnonzero(patients.isna().to_numpy())[0])
            raise UserInputError(f"{source}, row {row + 2}: no 'patientNNNNN' in Path {raw['Path'].iloc[row]!r} "
                                 "and no 'patient_id' column; add a patient_id column.")
    views = _chexpert_views(raw, notes, source)
    meta = pd.DataFrame({
        "image_id": raw["Path"].astype(str),
        "path": validate_paths(raw["Path"].astype(str), source),
        "patient_id": patients,
        "view": views,
        "sex": normalise_sex(raw["Sex"], notes, source),
        "age": normalise_age(raw["Age"], notes, source),
        "split": _split_column(raw, "split", source),
    })
    extra = raw[[c for c in PHANTOM_COLUMNS if c in raw.columns]]
    return _assemble(meta, labels, root, source, "chexpert", notes, extra)


def _chexpert_views(raw: pd.DataFrame, notes: list[str], source: Path) -> pd.Series:
    """CheXpert's own 'Frontal/Lateral' column decides frontal or lateral; 'AP/PA' gives the orientation of a
    frontal film. A frontal row whose AP/PA says LL or RL (CheXpert has some) stays frontal, of unknown
    orientation ('FRONTAL'), and is noted."""
    side = raw["Frontal/Lateral"].astype("string").str.strip().str.lower()
    unknown = ~side.isin(["frontal", "lateral"]) & side.notna()
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise UserInputError(f"{source}, row {row + 2}: Frontal/Lateral is {str(raw['Frontal/Lateral'].iloc[row])!r}; "
                             "CheXpert writes 'Frontal' or 'Lateral'.")
    orientation = normalise_views(raw["AP/PA"].where(side == "frontal"), notes, source)
    frontal_other = (side == "frontal") & ~orientation.isin(["PA", "AP"])
    if frontal_other.any():
        examples = ", ".join(repr(str(v)) for v in raw["AP/PA"][frontal_other].astype(str).unique()[:4])
        notes.append(f"{source.name}: {int(frontal_other.sum())} images marked Frontal with AP/PA {examples}: "
                     "counted as frontal (orientation unknown)")
    views = orientation.where(~frontal_other.to_numpy(), "FRONTAL")
    return views.where((side != "lateral").to_numpy(), "LAT")


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


def read_mimic(data: Path, root: Path | None = None, labels: Path | None = None) -> Manifest:
    """MIMIC-CXR-JPG 2.0: chexpert labels per study, joined to each DICOM's metadata and official split.

    Sex and age are not in MIMIC-CXR-JPG; a MIMIC-IV `patients.csv(.gz)` beside the files adds them. `labels`
    replaces the folder's mimic-cxr-2.0.0-chexpert file (labels made from the reports by `label-reports`).
    """
    folder = Path(data)
    folder = folder.parent if folder.is_file() else folder
    if not folder.is_dir():
        raise UserInputError(f"MIMIC-CXR-JPG folder {folder} does not exist. Check --data.")
    labels_path = labels if labels is not None else _find_one(folder, "mimic-cxr-2.0.0-chexpert")
    meta_path = _find_one(folder, "mimic-cxr-2.0.0-metadata")
    split_path = _find_one(folder, "mimic-cxr-2.0.0-split")
    patients_path = _find_one(folder, "patients", required=False)
    notes: list[str] = []

    label_raw = read_csv(labels_path, "MIMIC chexpert labels file")
    require_columns(label_raw, labels_path, ["subject_id", "study_id"], "MIMIC chexpert labels file")
    meta_raw = read_csv(meta_path, "MIMIC metadata file")
    require_columns(meta_raw, meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"],
                     "MIMIC metadata file")
    split_raw = read_csv(split_path, "MIMIC split file")
    require_columns(split_raw, split_path, ["dicom_id", "split"], "MIMIC split file")

    for frame, path, keys in ((label_raw, labels_path, ["subject_id", "study_id"]),
                              (meta_raw, meta_path, ["dicom_id", "subject_id", "study_id"]),
                              (split_raw, split_path, ["dicom_id"])):
        _check_ids(frame, path, keys)
    _unique(label_raw, ["subject_id", "study_id"], labels_path, "study (subject_id, study_id)")
    _unique(meta_raw, ["dicom_id"], meta_path, "dicom_id")
    _unique(split_raw, ["dicom_id"], split_path, "dicom_id")
    merged = meta_raw.merge(label_raw, on=["subject_id", "study_id"], how="left", indicator=True)
    unlabelled = merged["_merge"] == "left_only"
    if unlabelled.any():  # images of studies the labeller never read: no label to count them by
        notes.append(f"{meta_path.name}: {int(unlabelled.sum()):,} of {len(merged):,} images belong to studies "
                     f"with no row in {labels_path.name}; left out (no labels)")
    merged = merged[~unlabelled].drop(columns="_merge").reset_index(drop=True)
    merged = merged.merge(split_raw[["dicom_id", "split"]], on="dicom_id", how="left")
    if patients_path is not None:
        patients = read_csv(patients_path, "MIMIC-IV patients file")
        require_columns(patients, patients_path, ["subject_id", "gender", "anchor_age", "anchor_year"],
                         "MIMIC-IV patients file")
        _check_ids(patients, patients_path, ["subject_id"])
        _unique(patients, ["subject_id"], patients_path, "subject_id")
        merged = merged.merge(patients[["subject_id", "gender", "anchor_age", "anchor_year"]], on="subject_id",
                              how="left")
        merged["age"] = _mimic_age(merged, notes, meta_path)
    else:
        merged["gender"], merged["age"] = None, np.nan
        notes.append("no MIMIC-IV patients file: sex and age unknown, subgroup cells by sex/age count nothing")

    label_columns = concept_columns([c for c in label_raw.columns if c not in ("subject_id", "study_id")])
    labels = read_labels(merged, label_columns, labels_path, notes)
    subject = merged["subject_id"].astype(int).astype(str)
    paths = ("files/p" + subject.str[:2] + "/p" + subject + "/s" + merged["study_id"].astype(int).astype(str)
             + "/" + merged["dicom_id"].astype(str) + ".jpg")
    meta = pd.DataFrame({
        "image_id": merged["dicom_id"].astype(str),
        "path": validate_paths(paths, meta_path),
        "patient_id": subject,
        "view": normalise_views(merged["ViewPosition"], notes, meta_path),
        "sex": normalise_sex(merged["gender"], notes, patients_path or meta_path),
        "age": normalise_age(merged["age"], notes, patients_path or meta_path),
        "split": normalise_splits(merged["split"], split_path),
    })
    return _assemble(meta, labels, Path(root) if root else folder, meta_path, "mimic", notes)


def _check_ids(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """MIMIC ids are integers (dicom_id is text); anything else would join the wrong rows."""
    for column in columns:
        if column == "dicom_id":
            bad = frame[column].isna()
        else:
            bad = pd.to_numeric(frame[column], errors="coerce").isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserInputError(f"{path}, row {row + 2}: {column} {shown(frame[column].iloc[row])} is not a valid "
                                 f"{'id' if column == 'dicom_id' else 'integer id'}.")
        if column != "dicom_id":
            frame[column] = pd.to_numeric(frame[column]).astype("int64")


def _unique(frame: pd.DataFrame, columns: list[str], path: Path, what: str) -> None:
    repeated = frame.duplicated(columns, keep=False)
    if repeated.any():
        rows = np.flatnonzero(repeated.to_numpy())[:2] + 2
        raise UserInputError(f"{path}: the {what} on rows {rows[0]} and {rows[1]} is the same; each must appear "
                             "once. Remove the duplicated row.")


def _mimic_age(merged: pd.DataFrame, notes: list[str], source: Path) -> pd.Series:
    """A study's age: MIMIC-IV's anchor_age is the age in anchor_year, so age = anchor_age + year(StudyDate) -
    anchor_year (the shifted years cancel). Without StudyDate the anchor age is used, with a note."""
    anchor_age = pd.to_numeric(merged["anchor_age"], errors="coerce")
    if "StudyDate" not in merged.columns:
        notes.append(f"{source.name}: no StudyDate column: each image gets its patient's anchor_age (the age in "
                     "anchor_year), not the age at the study")
        return anchor_age
    year = pd.to_numeric(merged["StudyDate"].astype("string").str.strip().str[:4], errors="coerce")
    return anchor_age + year - pd.to_numeric(merged["anchor_year"], errors="coerce")


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
    raw = read_csv(source, "Labels CSV")
    found = {key: next((c for c in names if c in raw.columns), None) for key, names in _GENERIC_META.items()}
    if found["path"] is None:
        require_columns(raw, source, ["path"], "generic CSV format (an image path column)")
    meta_columns = {c for c in found.values() if c is not None}
    label_columns = concept_columns([c for c in raw.columns if c not in meta_columns])
    if not label_columns:
        detected = detect_format(source)
        hint = f" It looks like a {detected.upper()} file: pass --format {detected} (or --format auto)." \
            if detected != "csv" else ""
        raise UserInputError(f"{source} has no concept columns. Name columns after concepts, e.g. "
                             f"'Cardiomegaly', 'Pleural Effusion' (aliases such as 'Effusion' work).{hint}")
    notes: list[str] = []
    paths = validate_paths(raw[found["path"]], source)
    meta = pd.DataFrame({
        "image_id": paths,
        "path": paths,
        "patient_id": raw[found["patient_id"]].astype(str) if found["patient_id"] else paths,
        "view": normalise_views(raw[found["view"]], notes, source) if found["view"] else None,
        "sex": normalise_sex(raw[found["sex"]], notes, source) if found["sex"] else None,
        "age": normalise_age(raw[found["age"]], notes, source) if found["age"] else np.nan,
        "split": _split_column(raw, found["split"], source),
    })
    if not found["view"]:
        notes.append(f"{source.name}: no view column; all images taken as frontal (PA)")
        meta["view"] = "PA"
    labels = read_labels(raw, label_columns, source, notes)
    return _assemble(meta, labels, Path(root) if root else source.parent, source, "csv", notes)


MIMIC_HINT = ["dicom_id", "subject_id", "study_id"]  # a MIMIC file given instead of its folder
READERS: dict[str, Callable[..., Manifest]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
    "mimic": read_mimic,
    "csv": read_generic_csv,
}
FORMATS = tuple(READERS)  # the data formats, stated once: the configuration and the command line read this


def detect_format(data: Path) -> str:
    """The format of a labels file from its columns (a folder is MIMIC-CXR-JPG); the generic CSV otherwise."""
    if data.is_dir():
        return "mimic"
    header = read_csv(data, "Labels file", nrows=0).columns
    for fmt, required in (("nih", NIH_COLUMNS), ("chexpert", CHEXPERT_COLUMNS), ("mimic", MIMIC_HINT)):
        if all(column in header for column in required):
            return fmt
    return "csv"


def read_manifest(data: str | Path, fmt: str = "auto", root: str | Path | None = None,
                  allow_duplicates: bool = False, labels: str | Path | None = None) -> Manifest:
    """Read a dataset's labels in the given format (nih, chexpert, mimic, csv; auto: detected), checked for
    duplicated images and patients in two splits (see `manifest.check_integrity`). `labels`: a MIMIC chexpert
    labels file used in place of the folder's (e.g. the one `label-reports` writes from the reports)."""
    if fmt == "auto":
        fmt = detect_format(Path(data))
    if fmt not in READERS:
        raise UserInputError(f"unknown --format {fmt!r}; choose one of auto, {', '.join(FORMATS)}.")
    if labels is not None and fmt != "mimic":
        raise UserInputError(f"--labels replaces MIMIC-CXR-JPG's chexpert labels file; {data} is read as {fmt!r}. "
                             "Pass the labels file itself as --data (label-reports writes one that --format csv "
                             "reads), or use --format mimic.")
    root_path = Path(root) if root is not None else None
    if fmt == "mimic":
        return check_integrity(read_mimic(Path(data), root_path, Path(labels) if labels else None), allow_duplicates)
    return check_integrity(READERS[fmt](Path(data), root_path), allow_duplicates)
