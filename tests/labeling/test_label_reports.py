"""Concept labels from report text: how radiologists write (negation lists, hedges, pseudo-negation, history,
sections), and `label-reports` on a CSV, a folder of .txt files and the MIMIC-CXR layout, each feeding
`coverage` (and `evaluate`) end to end, with evidence behind every label."""

import gzip
import json

import pandas as pd
import pytest

from cxr_audit.labeling.context import Labeler
from cxr_audit.labeling.rules import load_rules


@pytest.fixture(scope="module")
def labeler():
    return Labeler(load_rules()[0])


@pytest.mark.parametrize("text,expected", [
    ("No pneumothorax, effusion or consolidation.", {"Pneumothorax": 0, "Pleural Effusion": 0, "Consolidation": 0}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0}),
    ("No effusion but a small pneumothorax is seen.", {"Pleural Effusion": 0, "Pneumothorax": 1}),
    ("There is no pneumothorax, and there is a large effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Pleural effusion is not seen.", {"Pleural Effusion": 0}),
    ("Opacity at the left base may represent atelectasis versus pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Cannot exclude a small pneumothorax.", {"Pneumothorax": -1}),
    ("Findings could represent early pneumonia.", {"Pneumonia": -1}),
    ("Question of a small left effusion.", {"Pleural Effusion": -1}),
    ("No change in the right pleural effusion.", {"Pleural Effusion": 1}),
    ("Resolved pneumothorax.", {"Pneumothorax": 0}),
    ("Prior sternotomy.", {"Support Devices": 1}),
    ("History of pneumonia.", {}),
    ("HEART SIZE IS ENLARGED. NO EFFUSION.", {"Cardiomegaly": 1, "Pleural Effusion": 0}),
    ("Cardiomegally with pnuemothorax on the right.", {"Cardiomegaly": 1, "Pneumothorax": 1}),
    ("The XXXX are normal. ___ tube terminates in the stomach; no pneumothorax.",
     {"Pneumothorax": 0}),
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": 1}),
    ("Left lower lobe nodule.", {"Nodule": 1}),
])
def test_how_radiologists_write(labeler, text, expected):
    labels = {k: v for k, v in labeler.label(text).labels.items() if k != "No Finding"}
    assert labels == expected


def test_only_findings_and_impression_are_labelled_and_no_finding_follows_chexpert(labeler):
    report = ("INDICATION: Evaluate for pneumonia.\nCOMPARISON: Pneumothorax on the prior study.\n"
              "FINDINGS: Lungs are clear. Heart size is normal.\nIMPRESSION: No acute process.")
    result = labeler.label(report)
    assert result.labels == {"No Finding": 1}  # the indication's pneumonia is a question, not a finding
    devices = labeler.label("FINDINGS: Right PICC terminates in the SVC. No effusion.")
    assert devices.labels["No Finding"] == 1 and devices.labels["Support Devices"] == 1
    assert "No Finding" not in labeler.label("FINDINGS: Possible small effusion.").labels


def _run(run_cli, *args):
    result = run_cli("label-reports", *args)
    assert result.exit_code == 0, result.output
    return result


def test_a_reports_csv_gives_labels_that_coverage_and_evaluate_read(phantom_dataset, phantom_model, tmp_path,
                                                                    run_cli):
    """Reports written for the phantom's studies (from their true findings, in a radiologist's words) are
    labelled back; the labels file feeds coverage and evaluate, and every label has its evidence."""
    truth = pd.read_csv(phantom_dataset / "labels.csv")
    words = {"Cardiomegaly": "The heart is enlarged", "Pleural Effusion": "small left pleural effusion",
             "Pneumothorax": "right apical pneumothorax", "Support Devices": "an endotracheal tube is in place"}
    rows = []
    for _, row in truth.iterrows():
        present = [words[c] for c in words if row.get(c) == 1]
        absent = [c.lower() for c in ("Pleural Effusion", "Pneumothorax") if row.get(c) == 0]
        findings = (". ".join(present) + ". " if present else "Lungs are clear. ") + (
            f"No {', '.join(absent)}." if absent else "")
        rows.append({"Path": row["Path"], "report": f"FINDINGS: {findings}\nIMPRESSION: See findings."})
    reports = tmp_path / "reports.csv"
    pd.DataFrame(rows).to_csv(reports, index=False)
    _run(run_cli, "--reports", reports, "--out", tmp_path / "labels", "--processes", "2")
    labels = pd.read_csv(tmp_path / "labels" / "labels.csv")
    for concept in words:  # every finding read back as the report says it
        assert ((labels[concept] == 1) == (truth[concept] == 1)).all(), concept
    evidence = [json.loads(line) for line in (tmp_path / "labels" / "evidence.jsonl").read_text().splitlines()]
    by_report = {(e["Path"], e["concept"]) for e in evidence}
    for _, row in labels.iterrows():
        for concept in words:
            if pd.notna(row[concept]):
                assert (row["Path"], concept) in by_report
    record = json.loads((tmp_path / "labels" / "labeling.json").read_text())
    assert record["reports"] == len(truth) and len(record["rules_sha256"]) == 64
    # the labels file is a dataset: coverage counts it (images beside the phantom's, through --root)
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n"
                    "  - {id: HF, all_of: [Cardiomegaly, Effusion], min_count: 5}\n")
    coverage = run_cli("coverage", "--data", tmp_path / "labels" / "labels.csv", "--format", "csv", "--root",
                       phantom_dataset, "--spec", spec, "--out", tmp_path / "run", "--split", "all")
    assert coverage.exit_code == 0, coverage.output
    counted = json.loads((tmp_path / "run" / "coverage" / "coverage.json").read_text())["cells"][0]["count"]
    assert counted == int(((truth["Cardiomegaly"] == 1) & (truth["Pleural Effusion"] == 1)).sum())
    evaluated = run_cli("evaluate", "--out", tmp_path / "run", "--model", phantom_model, "--bootstrap", 100,
                        "--mc-samples", 0, "--workers", 0, "--split", "all")
    assert evaluated.exit_code == 0, evaluated.output


def test_a_folder_of_text_reports_and_the_mimic_layout(tmp_path, run_cli):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "r1.txt").write_text("FINDINGS: Small right pneumothorax.\nIMPRESSION: Pneumothorax.")
    (folder / "r2.txt").write_text("No acute cardiopulmonary process.")
    _run(run_cli, "--reports", folder, "--out", tmp_path / "from-txt")
    table = pd.read_csv(tmp_path / "from-txt" / "labels.csv").set_index("report_id")
    assert table.loc["r1", "Pneumothorax"] == 1 and table.loc["r2", "No Finding"] == 1

    mimic = tmp_path / "mimic"
    studies = {("10000032", "50414267"): "FINDINGS: Moderate cardiomegaly. Small bilateral effusions.",
               ("10000032", "53189527"): "FINDINGS: No pleural effusion. Heart size normal.",
               ("10000764", "57375967"): "IMPRESSION: Possible left lower lobe pneumonia."}
    for (subject, study), text in studies.items():
        path = mimic / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _run(run_cli, "--reports", mimic, "--out", tmp_path / "from-mimic")
    chexpert = pd.read_csv(tmp_path / "from-mimic" / "mimic-cxr-2.0.0-chexpert.csv")
    assert list(chexpert.columns[:4]) == ["subject_id", "study_id", "Atelectasis", "Cardiomegaly"]
    row = chexpert.set_index("study_id").loc[50414267]
    assert row["Cardiomegaly"] == 1 and row["Pleural Effusion"] == 1
    assert chexpert.set_index("study_id").loc[57375967, "Pneumonia"] == -1
    # --format mimic reads it in place of the official labels file
    def gz(name, text):
        with gzip.open(mimic / name, "wt") as handle:
            handle.write(text)
    gz("mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,ViewPosition\n"
       "d1,10000032,50414267,PA\nd2,10000032,53189527,PA\nd3,10000764,57375967,AP\n")
    gz("mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n"
       "d1,50414267,10000032,train\nd2,53189527,10000032,train\nd3,57375967,10000764,train\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nconcepts: [Cardiomegaly, Effusion]\ncells:\n"
                    "  - {id: HF, all_of: [Cardiomegaly, Effusion], min_count: 5}\n")
    coverage = run_cli("coverage", "--data", mimic, "--format", "mimic", "--labels",
                       tmp_path / "from-mimic" / "mimic-cxr-2.0.0-chexpert.csv", "--spec", spec, "--out",
                       tmp_path / "run", "--split", "all")
    assert coverage.exit_code == 0, coverage.output
    assert json.loads((tmp_path / "run" / "coverage" / "coverage.json").read_text())["cells"][0]["count"] == 1
