"""Concept labels from report text: how radiologists write (negation lists, hedges, pseudo-negation, history,
sections), and `label-reports` on a CSV, a folder of .txt files and the MIMIC-CXR layout, each feeding
`coverage` (and `evaluate`) end to end, with evidence behind every label."""

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from cxr_audit.concepts import LABELS
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
    ("Left lower lobe nodule.", {"Nodule": 1, "Lung Lesion": 1}),
])
def test_how_radiologists_write(labeler, text, expected):
    labels = {k: v for k, v in labeler.label(text).labels.items() if k in LABELS and k != "No Finding"}
    assert labels == expected


@pytest.mark.parametrize("text,fine,label", [
    ("Meniscus sign at the left base.", "Layering Effusion", "Pleural Effusion"),
    ("Blunting of the right costophrenic angle.", "Blunted Costophrenic Angle", "Pleural Effusion"),
    ("A pleural line is seen at the right apex.", "Pleural Line", "Pneumothorax"),
    ("Absent lung markings beyond the pleural line.", "Absent Lung Markings", "Pneumothorax"),
    ("Kerley B lines at both bases.", "Kerley Lines", "Edema"),
    ("Air bronchograms in the right upper lobe.", "Air Bronchograms", "Consolidation"),
    ("Plate-like atelectasis at the left base.", "Plate-like Atelectasis", "Atelectasis"),
    ("Calcified granuloma in the left upper lobe.", "Calcified Granuloma", "Lung Lesion"),
    ("Endotracheal tube terminates 4 cm above the carina.", "Endotracheal Tube", "Support Devices"),
    ("Right chest tube in place.", "Chest Tube", "Support Devices"),
    ("Left-sided pacemaker with leads in the right ventricle.", "Pacemaker", "Support Devices"),
])
def test_fine_concepts_are_labelled_and_give_their_label(labeler, text, fine, label):
    labels = labeler.label(text).labels
    assert labels[fine] == 1 and labels[label] == 1


def test_a_negated_device_kind_negates_the_device_label_and_leaves_no_finding(labeler):
    labels = labeler.label("The endotracheal tube has been removed. Lungs are clear.").labels
    assert labels["Endotracheal Tube"] == 0 and labels["Support Devices"] == 0 and labels["No Finding"] == 1


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


def test_the_phantom_s_reports_are_labelled_as_written_and_feed_an_audit(phantom_dataset, phantom_model,
                                                                         tiny_generator, phantom_checker, tmp_path,
                                                                         run_cli):
    """The phantom writes a report for every study (reports.csv: findings and impression in varied wording,
    negated lists, hedges, devices by kind). Labelled back, every label is the one the text states; the labels
    file, with the patient, split, sex, age and view columns kept, is a dataset an audit runs on."""
    from cxr_audit.data.phantom import PHANTOM_FINDINGS
    from cxr_audit.data.phantom.dataset import study_of
    from cxr_audit.data.phantom.reports import study_report

    _run(run_cli, "--reports", phantom_dataset / "reports.csv", "--out", tmp_path / "labels", "--processes", "2")
    labels = pd.read_csv(tmp_path / "labels" / "labels.csv")
    truth = pd.read_csv(phantom_dataset / "labels.csv")
    assert list(labels["Path"]) == list(truth["Path"]) and {"patient_id", "split", "Sex", "Age", "AP/PA"} <= set(labels)
    for (_, row), (_, labelled) in zip(truth.iterrows(), labels.iterrows()):
        _, stated = study_report(study_of(row), int(row["study_seed"]))
        read = {c: int(labelled[c]) for c in PHANTOM_FINDINGS if pd.notna(labelled[c])}
        assert read == stated, (row["Path"], read, stated)
    evidence = [json.loads(line) for line in (tmp_path / "labels" / "evidence.jsonl").read_text().splitlines()]
    behind = {(e["Path"], label) for e in evidence for label in (e["concept"], *e["gives"])}
    assert all((row["Path"], c) in behind for _, row in labels.iterrows() for c in PHANTOM_FINDINGS if pd.notna(row[c]))
    record = json.loads((tmp_path / "labels" / "labeling.json").read_text())
    assert record["reports"] == len(truth) and len(record["rules_sha256"]) == 64
    # an audit on the labels made from text (images through --root)
    spec = tmp_path / "spec.yaml"
    spec.write_text(Path("coverage_specs/phantom.yaml").read_text() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    result = run_cli("audit", "--out", tmp_path / "run", "--data", tmp_path / "labels" / "labels.csv", "--format", "csv",
                     "--root", phantom_dataset, "--spec", spec, "--model", phantom_model, "--generator", tiny_generator,
                     "--checker", phantom_checker, "--arms", "baseline", "--bootstrap", 100, "--mc-samples", 0,
                     "--edit-steps", 3, "--no-report")
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    train = labels[labels["split"] == "train"]
    cell = next(c for c in audit["coverage"]["cells"] if c["all_of"] == ["Cardiomegaly", "Pleural Effusion"]
                and not c["none_of"] and not c["subgroup"])
    assert cell["count"] == int(((train["Cardiomegaly"] == 1) & (train["Pleural Effusion"] == 1)).sum())


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


def _audit_args(phantom_model, tiny_generator, phantom_checker, spec):
    return ["--spec", spec, "--model", phantom_model, "--generator", tiny_generator, "--checker", phantom_checker,
            "--arms", "baseline", "--bootstrap", 100, "--mc-samples", 0, "--edit-steps", 2, "--no-report"]


@pytest.mark.slow  # two more audits (the CSV one runs in the regular suite)
def test_a_text_folder_and_the_mimic_layout_feed_an_audit(phantom_dataset, phantom_model, tiny_generator,
                                                         phantom_checker, tmp_path, run_cli):
    """Reports as .txt files beside nothing but their names, and the MIMIC-CXR layout (reports, JPEG images,
    metadata and split files), each labelled and audited end to end on the phantom's images."""
    from PIL import Image

    from cxr_audit.anatomy.masks import mask_folder

    reports = pd.read_csv(phantom_dataset / "reports.csv")
    truth = pd.read_csv(phantom_dataset / "labels.csv")
    spec = tmp_path / "spec.yaml"
    spec.write_text(Path("coverage_specs/phantom.yaml").read_text() + "synthesis: {budget_per_cell: 1, attempts_per_edit: 1}\n")
    expected = int(((truth["split"] == "train") & (truth["Cardiomegaly"] == 1) & (truth["Pleural Effusion"] == 1)).sum())

    # a folder of .txt reports mirroring the images' folders
    for _, row in reports.iterrows():
        path = (tmp_path / "txt" / row["Path"]).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(row["report"])
    _run(run_cli, "--reports", tmp_path / "txt", "--out", tmp_path / "txt-labels", "--image-suffix", ".png")
    labels = pd.read_csv(tmp_path / "txt-labels" / "labels.csv")
    assert sorted(labels["path"]) == sorted(truth["Path"])
    # the reports name no patient, so each image is its own patient and one patient's studies may fall in both
    # train and test: the data sheet finds them as near-duplicates, and the audit goes on only when told to
    args = ["audit", "--out", tmp_path / "txt-run", "--data", tmp_path / "txt-labels" / "labels.csv", "--format", "csv",
            "--root", phantom_dataset, *_audit_args(phantom_model, tiny_generator, phantom_checker, spec)]
    refused = run_cli(*args)
    assert refused.exit_code == 2 and "near-duplicates" in refused.output
    audited = run_cli(*args, "--allow-near-duplicates")
    assert audited.exit_code == 0, audited.output
    document = json.loads((tmp_path / "txt-run" / "audit.json").read_text())
    assert document["plan"]["edits"] >= 1 and document["data_sheet"]["near_duplicates"]["allowed"]
    assert any("--allow-near-duplicates" in note for note in document["notes"])

    # the MIMIC-CXR layout: reports per study, JPEG images per DICOM id, metadata and split files
    mimic = tmp_path / "mimic"
    meta, splits = [], []
    for k, row in truth.iterrows():
        subject, study, dicom = 10000000 + int(row["patient_id"][-5:]), 50000000 + k, f"d{k:04d}"
        folder = mimic / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder.with_suffix(".txt")).write_text(reports.loc[k, "report"])
        Image.open(phantom_dataset / row["Path"]).convert("L").save(folder / f"{dicom}.jpg", quality=95)
        image = f"{folder.relative_to(mimic).as_posix()}/{dicom}.jpg"
        shutil.copytree(phantom_dataset / mask_folder(row["Path"]), mimic / mask_folder(image))
        meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": row["AP/PA"]})
        splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": row["split"]})
    pd.DataFrame(meta).to_csv(mimic / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(splits).to_csv(mimic / "mimic-cxr-2.0.0-split.csv", index=False)
    _run(run_cli, "--reports", mimic, "--out", tmp_path / "mimic-labels")
    audited = run_cli("audit", "--out", tmp_path / "mimic-run", "--data", mimic, "--format", "mimic", "--labels",
                      tmp_path / "mimic-labels" / "mimic-cxr-2.0.0-chexpert.csv",
                      *_audit_args(phantom_model, tiny_generator, phantom_checker, spec))
    assert audited.exit_code == 0, audited.output
    audit = json.loads((tmp_path / "mimic-run" / "audit.json").read_text())
    cell = next(c for c in audit["coverage"]["cells"] if c["id"] == "PHANTOM-COV-001")
    chexpert = pd.read_csv(tmp_path / "mimic-labels" / "mimic-cxr-2.0.0-chexpert.csv").merge(pd.DataFrame(splits))
    train = chexpert[chexpert["split"] == "train"]
    assert cell["count"] == int(((train["Cardiomegaly"] == 1) & (train["Pleural Effusion"] == 1)).sum())
    assert abs(cell["count"] - expected) <= 3  # what the reports say is what the images show (hedges aside)
