"""Labels from report text, written to a folder: what `label-reports` writes, and the demo's stage that
derives its concept vectors from the phantom's reports (`demo --labels-from-reports`).

The folder gets evidence.jsonl (every mention behind a label), labeling.json (labeler version, rules SHA-256,
counts), for the MIMIC layout mimic-cxr-2.0.0-chexpert.csv, and labels.csv last: a labels file means the
labelling finished."""

from __future__ import annotations

import json
from pathlib import Path

from cxr_audit.labeling.labels import LABELER_VERSION
from cxr_audit.provenance import atomic_write_json, atomic_write_text, sha256_file
from cxr_audit.rundir import RunDir

OUTPUTS = ("labels.csv", "evidence.jsonl", "labeling.json", "mimic-cxr-2.0.0-chexpert.csv")


def label_reports_into(out: Path, reports: Path, rules_file: Path | None = None, id_column: str | None = None,
                       text_columns: list[str] | None = None, processes: int | None = None,
                       progress: bool = True, image_suffix: str | None = None) -> dict:
    """Label the reports at `reports` into the folder `out`; returns labeling.json's content."""
    import spacy

    from cxr_audit.labeling.labels import label_reports, mimic_chexpert
    from cxr_audit.labeling.rules import load_rules
    from cxr_audit.labeling.sources import read_reports

    rules, rules_sha256 = load_rules(rules_file)
    source = read_reports(reports, id_column, text_columns, image_suffix)
    table, evidence = label_reports(source, rules, processes, progress)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evidence.jsonl", "".join(json.dumps(row) + "\n" for row in evidence))
    if source.kind == "mimic":
        atomic_write_text(out / "mimic-cxr-2.0.0-chexpert.csv", mimic_chexpert(table).to_csv(index=False))
    concept_columns = [c for c in table.columns if c in rules.targets or c in ("No Finding", "Lung Lesion")]
    record = {
        "labeler_version": LABELER_VERSION, "rules_sha256": rules_sha256, "spacy": spacy.__version__,
        "source": Path(reports).name, "source_sha256": sha256_file(reports) if Path(reports).is_file() else None,
        "layout": source.kind, "reports": len(source.texts), "evidence_rows": len(evidence),
        "sections_labelled": ["findings", "impression"], "has_image_paths": source.paths is not None,
        "counts": {c: {"present": int((table[c] == 1).sum()), "negated": int((table[c] == 0).sum()),
                       "uncertain": int((table[c] == -1).sum())} for c in concept_columns},
    }
    atomic_write_json(out / "labeling.json", record)
    atomic_write_text(out / "labels.csv", table.to_csv(index=False))
    return record


class ReportLabelsStage:
    """The demo's labels made from its phantom's reports (the images are the phantom's)."""

    name = "demo_report_labels"
    needs = ("demo_phantom",)

    def __init__(self, run: RunDir):
        self.rundir = run
        self.folder = run.made_report_labels.parent

    def outputs(self) -> list[Path]:
        return [self.folder / name for name in OUTPUTS[:3]]

    def inputs(self) -> dict:
        from cxr_audit.labeling.rules import load_rules

        return {"reports": sha256_file(self.rundir.made_reports), "rules": load_rules()[1],
                "labeler": LABELER_VERSION}

    def run(self) -> None:
        label_reports_into(self.folder, self.rundir.made_reports, progress=False)
