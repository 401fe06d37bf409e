"""Where reports come from: a CSV (an id column and text columns), the MIMIC-CXR reports layout
(files/pNN/pNNNNNNNN/sNNNNNNNN.txt), or a folder of .txt files (id = file stem). Each is read and checked
here, once: an empty report, a file that is not UTF-8, a missing or repeated id, or a CSV without the named
columns is refused, naming the file and row."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxr_audit import concepts
from cxr_audit.errors import UserInputError

ID_COLUMNS = ("report_id", "study_id", "id", "accession", "accession_number", "Image Index", "image_id", "Path",
              "path", "dicom_id", "filename")
TEXT_COLUMNS = ("report", "report_text", "text", "findings", "impression", "Report", "Findings", "Impression")
PATH_COLUMNS = ("Path", "path", "Image Index", "image", "filename")
_MIMIC_REPORT = re.compile(r"^p(\d{2})/p(\d+)/s(\d+)\.txt$")


@dataclass
class Reports:
    source: Path
    kind: str                     # 'csv', 'mimic' or 'folder'
    ids: pd.DataFrame             # the id column(s), under their input names, one row per report
    texts: list[str]
    where: list[str]              # how a message names each report (file and row, or file)
    paths: pd.Series | None = None  # a CSV's image path column: the labels file then reads as --format csv
    kept: pd.DataFrame | None = None  # a CSV's other columns (patient, split, sex, age, view...), kept as they are


def read_reports(source: Path, id_column: str | None = None, text_columns: list[str] | None = None,
                 image_suffix: str | None = None) -> Reports:
    """The reports at `source`. A folder of .txt files may mirror the images' folders: each report's id is its
    path without the suffix, and with `image_suffix` (e.g. '.png') its image path is that id plus the suffix."""
    source = Path(source)
    if not source.exists():
        raise UserInputError(f"Reports {source} do not exist. Check --reports.")
    if source.is_dir():
        files = source / "files" if (source / "files").is_dir() else source
        if any(files.glob("p[0-9][0-9]/p*/s*.txt")):
            return _mimic(source, files)
        return _folder(source, image_suffix)
    return _csv(source, id_column, text_columns)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserInputError(f"Report {path} is not UTF-8 text (byte {error.start}): convert it (e.g. `iconv -f "
                             "latin1 -t utf-8`) and run again.") from None


def _folder(folder: Path, image_suffix: str | None) -> Reports:
    files = sorted(folder.rglob("*.txt"))
    if not files:
        raise UserInputError(f"{folder} holds no .txt report (a folder of reports, one file each, id = file "
                             "name; or the MIMIC-CXR layout files/pNN/pNNNNNNNN/sNNNNNNNN.txt).")
    ids = [f.relative_to(folder).with_suffix("").as_posix() for f in files]
    paths = pd.Series([i + image_suffix for i in ids], name="path") if image_suffix else None
    return _checked(Reports(folder, "folder", pd.DataFrame({"report_id": ids}), [_text(f) for f in files],
                            [str(f) for f in files], paths, paths.to_frame() if paths is not None else None))


def _mimic(source: Path, files: Path) -> Reports:
    rows, texts, where = [], [], []
    for path in sorted(files.glob("p[0-9][0-9]/p*/s*.txt")):
        match = _MIMIC_REPORT.match(path.relative_to(files).as_posix())
        if match is None or not match.group(2).startswith(match.group(1)):
            raise UserInputError(f"{path} is not in the MIMIC-CXR layout files/pNN/pNNNNNNNN/sNNNNNNNN.txt (the "
                                 "folder pNN holds the subjects whose id starts with NN).")
        rows.append({"subject_id": int(match.group(2)), "study_id": int(match.group(3))})
        texts.append(_text(path))
        where.append(str(path))
    return _checked(Reports(source, "mimic", pd.DataFrame(rows), texts, where))


def _csv(path: Path, id_column: str | None, text_columns: list[str] | None) -> Reports:
    from cxr_audit.data.label_files import read_csv

    frame = read_csv(path, "Reports file", "--reports", dtype=str, keep_default_na=False)
    columns = list(frame.columns)
    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in columns), None)
        if id_column is None:
            raise UserInputError(f"Reports file {path} has no id column ({', '.join(ID_COLUMNS[:6])}, ...). Name "
                                 f"it with --id-column. Found: {', '.join(columns[:10])}.")
    if text_columns is None:
        text_columns = [c for c in TEXT_COLUMNS if c in columns]
        if not text_columns:
            raise UserInputError(f"Reports file {path} has no text column (report, text, findings, impression). "
                                 f"Name them with --text-columns. Found: {', '.join(columns[:10])}.")
    missing = [c for c in [id_column, *text_columns] if c not in columns]
    if missing:
        raise UserInputError(f"Reports file {path} has no column {', '.join(map(repr, missing))} (--id-column / "
                             f"--text-columns). Found: {', '.join(columns[:10])}.")
    # several text columns: each becomes a section under its column's name, so the sectionizer finds them
    if len(text_columns) == 1:
        texts = frame[text_columns[0]].tolist()
    else:
        texts = ["\n".join(f"{c.upper()}: {row[c]}" for c in text_columns if str(row[c]).strip())
                 for _, row in frame.iterrows()]
    paths_column = next((c for c in PATH_COLUMNS if c in columns), None)
    # every other column is kept (a labels file then has its patients, splits, sexes, ages and views), except
    # columns named after a concept: the labels come from the text
    kept = [c for c in columns if c != id_column and c not in text_columns and concepts.try_resolve(c) is None]
    return _checked(Reports(path, "csv", frame[[id_column]].copy(), texts,
                            [f"{path}, row {k + 2}" for k in range(len(frame))],
                            frame[paths_column] if paths_column else None, frame[kept].copy()))


def _checked(reports: Reports) -> Reports:
    if not reports.texts:
        raise UserInputError(f"{reports.source} holds no report.")
    for k, text in enumerate(reports.texts):
        if not str(text).strip():
            raise UserInputError(f"{reports.where[k]}: the report is empty. Remove it, or fill in its text.")
    ids = reports.ids.astype(str)
    blank = ids.apply(lambda column: column.str.strip() == "").any(axis=1)
    if blank.any():
        k = int(blank.to_numpy().nonzero()[0][0])
        raise UserInputError(f"{reports.where[k]}: the report has no id ({', '.join(ids.columns)}). Every report "
                             "needs one.")
    repeated = ids.duplicated(keep=False)
    if repeated.any():
        first, second = repeated.to_numpy().nonzero()[0][:2]
        raise UserInputError(f"{reports.where[first]} and {reports.where[second]} have the same id "
                             f"{'/'.join(ids.iloc[first])}; each report must appear once.")
    return reports
