"""`cxr-audit label-reports`: concept labels (and the evidence for each) from radiology report text."""

from __future__ import annotations

import json
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
    force: ForceOption = False,
) -> None:
    """Label radiology reports: the findings and impression sections are read, each concept mention is found
    and judged present, negated, uncertain or historical by ConText rules (spaCy, nothing downloaded), and
    every label keeps its evidence (sentence, span, rule, cue). labels.csv has the id column(s), then one column
    per concept: 1, 0, -1 or blank; a CSV with an image path column gives a file `--format csv` reads, the
    MIMIC layout also gives mimic-cxr-2.0.0-chexpert.csv."""
    import spacy

    from cxr_audit.labeling.labels import LABELER_VERSION, label_reports, mimic_chexpert
    from cxr_audit.labeling.rules import load_rules
    from cxr_audit.labeling.sources import read_reports
    from cxr_audit.provenance import atomic_write_json, atomic_write_text

    written = {name: out / name for name in ("labels.csv", "evidence.jsonl", "labeling.json",
                                             "mimic-cxr-2.0.0-chexpert.csv")}
    _check_out(out, reports, rules, written, force)
    loaded_rules, rules_sha256 = load_rules(rules)
    columns = [c.strip() for c in text_columns.split(",") if c.strip()] if text_columns else None
    source = read_reports(reports, id_column, columns)
    table, evidence = label_reports(source, loaded_rules, processes)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(written["evidence.jsonl"], "".join(json.dumps(row) + "\n" for row in evidence))
    if source.kind == "mimic":
        atomic_write_text(written["mimic-cxr-2.0.0-chexpert.csv"], mimic_chexpert(table).to_csv(index=False))
    counts = {c: {"present": int((table[c] == 1).sum()), "negated": int((table[c] == 0).sum()),
                  "uncertain": int((table[c] == -1).sum())} for c in table.columns[len(source.ids.columns):]
              if c in loaded_rules.targets or c == "No Finding" or c == "Lung Lesion"}
    atomic_write_json(written["labeling.json"], {
        "labeler_version": LABELER_VERSION, "rules_sha256": rules_sha256, "spacy": spacy.__version__,
        "source": str(reports), "layout": source.kind, "reports": len(source.texts), "evidence_rows": len(evidence),
        "sections_labelled": ["findings", "impression"], "counts": counts})
    atomic_write_text(written["labels.csv"], table.to_csv(index=False))  # last: a labels file means it finished
    console.print(f"Labelled {len(source.texts):,} reports ({source.kind}); {len(evidence):,} mentions as evidence.",
                  markup=False)
    if source.kind == "csv" and source.paths is None:
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
