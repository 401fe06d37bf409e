"""`cxr-audit label-reports`: concept labels (and the evidence for each) from radiology report text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_audit.cli.app import ForceOption, command, console, note
from cxr_audit.errors import UserInputError


@command("label-reports")
def label_reports_command(
    reports: Annotated[Path, typer.Option("--reports", help="A CSV of reports (an id column and text columns), the "
                                          "MIMIC-CXR reports folder (files/pNN/pNNNNNNNN/sNNNNNNNN.txt), or a folder "
                                          "of .txt reports (id = file name).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for labels.csv, evidence.jsonl and labeling.json.")],
    id_column: Annotated[str | None, typer.Option("--id-column", help="The CSV's id column (default: detected, "
                                                  "e.g. study_id, report_id, Path).")] = None,
    text_columns: Annotated[str | None, typer.Option("--text-columns", help="The CSV's text columns, comma-separated "
                                                     "(default: detected, e.g. report, or findings,impression).")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="A rules YAML that adds to or overrides the shipped "
                                               "rules (cxr_audit/labeling/rules.yaml).")] = None,
    processes: Annotated[int | None, typer.Option("--processes", min=1, help="Worker processes (default: every "
                                                  "core).")] = None,
    image_suffix: Annotated[str | None, typer.Option("--image-suffix", help="A folder of .txt reports that mirrors "
                                                     "the images' folders: each image path is the report's path "
                                                     "with this suffix (e.g. .png), so labels.csv is a dataset.")] = None,
    force: ForceOption = False,
) -> None:
    """Label radiology reports: the findings and impression sections are read, each concept mention is found
    and judged present, negated, uncertain or historical by ConText rules (spaCy, nothing downloaded), and
    every label keeps its evidence (sentence, span, rule, cue). labels.csv has the id column(s), then one column
    per concept: 1, 0, -1 or blank; a CSV with an image path column gives a file `--format csv` reads, the
    MIMIC layout also gives mimic-cxr-2.0.0-chexpert.csv."""
    from cxr_audit.stages.report_labels import OUTPUTS, label_reports_into

    written = {name: out / name for name in OUTPUTS}
    _check_out(out, reports, rules, written, force)
    columns = [c.strip() for c in text_columns.split(",") if c.strip()] if text_columns else None
    if image_suffix is not None and (Path(reports).is_file() or not image_suffix.startswith(".")):
        raise UserInputError(f"--image-suffix {image_suffix!r}: for a folder of .txt reports, a file suffix such as "
                             "'.png' (a CSV names its images in a column).")
    record = label_reports_into(out, reports, rules, id_column, columns, processes, image_suffix=image_suffix)
    console.print(f"Labelled {record['reports']:,} reports ({record['layout']}); {record['evidence_rows']:,} mentions "
                  "as evidence.", markup=False)
    if record["layout"] == "csv" and not record["has_image_paths"]:
        note("the reports file has no image path column: labels.csv has the report ids; join it to your images "
             "before `--format csv` reads it")
    console.print(f"Wrote {written['labels.csv']}, {written['evidence.jsonl']} and {written['labeling.json']}",
                  markup=False)


def _check_out(out: Path, reports: Path, rules: Path | None, written: dict[str, Path], force: bool) -> None:
    """The output folder is not an input, not a file, and holds no earlier labels unless --force."""
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; pass a folder for labels.csv and evidence.jsonl.")
    inputs = [Path(reports).resolve(), *([Path(rules).resolve()] if rules else [])]
    for path in written.values():
        if path.resolve() in inputs:
            raise UserInputError(f"--out {out} would overwrite the input {path}; choose another folder.")
    if Path(reports).is_dir() and out.resolve() == Path(reports).resolve():
        raise UserInputError(f"--out {out} is the reports folder; choose another folder.")
    existing = [p.name for p in written.values() if p.exists()]
    if existing and not force:
        raise UserInputError(f"{out} already holds {', '.join(existing)}; pass --force to replace them, or choose "
                             "another --out folder.")
