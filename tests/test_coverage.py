import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_audit.coverage import analyse_coverage, load_coverage
from cxr_audit.data.readers import read_manifest
from cxr_audit.rundir import RunDir
from cxr_audit.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
NIH_SPEC = REPO / "coverage_specs" / "nih.yaml"
# NIH spellings of canonical names, written out here so the check does not reuse the tool's alias table.
NIH_NAME = {"Pleural Effusion": "Effusion", "Pleural Thickening": "Pleural_Thickening"}


def independent_count(raw: pd.DataFrame, cell: dict, has: dict) -> tuple[int, int]:
    """Count a cell straight from the NIH CSV with pandas regular expressions."""
    def finding(concept):
        name = NIH_NAME.get(concept, concept)
        if name not in has:
            has[name] = raw["Finding Labels"].str.contains(rf"(?:^|\|){name}(?:\||$)", regex=True)
        return has[name]

    mask = pd.Series(True, index=raw.index)
    for concept in cell["all_of"]:
        mask &= finding(concept)
    for concept in cell["none_of"]:
        mask &= ~finding(concept)
    subgroup = cell["subgroup"] or {}
    if subgroup.get("sex"):
        mask &= raw["Patient Gender"] == subgroup["sex"]
    if subgroup.get("view"):
        mask &= raw["View Position"] == subgroup["view"]
    if subgroup.get("age"):
        lo, hi = subgroup["age"]
        mask &= (raw["Patient Age"] >= lo) & (raw["Patient Age"] < hi) & (raw["Patient Age"] <= 120)
    return int(mask.sum()), int(raw.loc[mask, "Patient ID"].nunique())


def test_nih_counts_equal_an_independent_pandas_count(shared_data, tmp_path, run_cli):
    data = shared_data / "nih_data_entry_2017.csv.gz"
    result = run_cli("coverage", "--data", data, "--format", "nih", "--spec", NIH_SPEC, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    document = json.loads(RunDir(tmp_path).coverage.document.read_text())
    raw = pd.read_csv(data)
    has: dict = {}
    # the official NIH file has no split column: every image is the training data, and the report says so
    assert document["dataset"]["n_images"] == len(raw) == 112_120 and document["dataset"]["split"] == "all"
    assert len(document["cells"]) == 12 + 91  # explicit cells + C(14, 2) pairs
    for cell in document["cells"]:
        count, patients = independent_count(raw, cell, has)
        assert (cell["count"], cell["patients"]) == (count, patients), cell["id"]
        assert cell["deficit"] == max(0, cell["min_count"] - count)
        assert sum(cell["by_sex"].values()) == count
    assert RunDir(tmp_path).coverage.cooccurrence_png.stat().st_size > 10_000
    assert "NIH-COV-001" in result.output and "deficit" in result.output


def test_coverage_json_follows_its_schema(shared_data, tmp_path, run_cli):
    run_cli("coverage", "--data", shared_data / "nih621" / "labels.csv", "--format", "nih",
            "--spec", NIH_SPEC, "--out", tmp_path)
    document = json.loads(RunDir(tmp_path).coverage.document.read_text())
    assert document["schema_version"] == "1.0"
    required = {"id", "all_of", "none_of", "subgroup", "count", "patients", "min_count", "deficit", "plausible"}
    assert all(required <= set(cell) for cell in document["cells"])
    report = load_coverage(RunDir(tmp_path).coverage.document)  # round-trips through the pydantic model
    assert report.concepts["Pleural Effusion"].positives == 82
    assert set(document["inputs_sha256"]) == {"spec", "data"}


def test_same_inputs_give_byte_identical_outputs(shared_data, tmp_path, run_cli):
    args = ["coverage", "--data", shared_data / "nih621" / "labels.csv", "--format", "nih", "--spec", NIH_SPEC]
    run_cli(*args, "--out", tmp_path / "a")
    run_cli(*args, "--out", tmp_path / "b")
    a, b = RunDir(tmp_path / "a").coverage, RunDir(tmp_path / "b").coverage
    for name in ("document", "cooccurrence_png", "cells_png"):
        assert getattr(a, name).read_bytes() == getattr(b, name).read_bytes(), name


def test_implausible_cells_are_flagged_and_unknown_labels_never_count(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,patient_id,No Finding,Pleural Effusion,Pneumothorax\n"
                   "a.png,1,0,1,0\nb.png,2,0,1,\nc.png,3,0,1,-1\nd.png,4,1,0,0\n")
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text("version: 1\nconcepts: [No Finding, Effusion, Pneumothorax]\n"
                         "label_policy: {uncertain: ignore, unmentioned: ignore}\n"
                         "cells:\n  - {id: A, all_of: [Effusion], none_of: [Pneumothorax], min_count: 3}\n"
                         "  - {id: B, all_of: [No Finding, Effusion], min_count: 5}\n")
    report = analyse_coverage(read_manifest(csv, "csv"), load_spec(spec_path), spec_path, {})
    a, b = report.cells
    assert (a.count, a.deficit, a.plausible) == (1, 2, True)  # blank and uncertain are unknown, not negative
    assert not b.plausible and "No Finding excludes" in b.violations[0]
    assert [c.id for c in report.deficits()] == ["A"]


def test_other_inputs_never_overwrite_a_run(shared_data, tmp_path, run_cli):
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nconcepts: [Effusion, Cardiomegaly]\npairwise: {min_count: 5}\n")
    labels = shared_data / "nih621" / "labels.csv"
    assert run_cli("coverage", "--data", labels, "--format", "nih", "--spec", NIH_SPEC,
                   "--out", tmp_path / "run").exit_code == 0
    layout = RunDir(tmp_path / "run").coverage
    before = layout.document.read_bytes()
    result = run_cli("coverage", "--data", labels, "--format", "nih", "--spec", spec, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "other inputs" in result.output
    assert layout.document.read_bytes() == before
    assert run_cli("coverage", "--data", labels, "--format", "nih", "--spec", spec, "--out", tmp_path / "run",
                   "--force").exit_code == 0


@pytest.mark.parametrize("case", ["misspelled", "yaml", "columns", "unlabelled"])
def test_bad_input_exits_2_with_a_message_and_no_traceback(shared_data, tmp_path, run_cli, case):
    spec = tmp_path / "spec.yaml"
    spec.write_text("version: 1\nconcepts: [Effusion, Cardiomegaly]\npairwise: {min_count: 5}\n")
    data, fmt = shared_data / "nih621" / "labels.csv", "nih"
    expected = {"misspelled": "Did you mean 'Pneumothorax'", "yaml": "line 3", "columns": "lacks the column",
                "unlabelled": "has no labels for it"}[case]
    if case == "misspelled":
        spec.write_text("version: 1\nconcepts: [Effusion, Pneumothorx]\n")
    elif case == "yaml":
        spec.write_text("version: 1\nconcepts: [Effusion\ncells: []\n")
    elif case == "columns":
        fmt = "chexpert"
    elif case == "unlabelled":
        spec.write_text("version: 1\nconcepts: [Effusion, Support Devices]\n")
    result = run_cli("coverage", "--data", data, "--format", fmt, "--spec", spec, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert expected in result.output and "Traceback" not in result.output
    assert not RunDir(tmp_path / "out").coverage.document.exists()


def test_views_of_a_cell_add_up_to_its_count_with_frontal_films_of_unknown_orientation(tmp_path):
    """CheXpert marks some films Frontal with 'LL' or 'RL' in AP/PA: they count as frontal, and the view
    breakdown puts them under unknown, so PA + AP + LAT + unknown is the cell's count."""
    from conftest import coverage_of

    header = "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Pleural Effusion\n"
    rows = [f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg,Female,60,Frontal,{view},,1.0,1.0"
            for k, view in enumerate(["AP", "PA", "LL", "RL", "AP", ""])]
    labels = tmp_path / "CheXpert-v1.0-small" / "train.csv"
    labels.parent.mkdir()
    labels.write_text(header + "\n".join(rows) + "\n")
    report = coverage_of(labels, "version: 1\nconcepts: [Cardiomegaly, Pleural Effusion]\ncells:\n"
                                 "  - {id: C1, all_of: [Cardiomegaly, Pleural Effusion], min_count: 10}\n", "chexpert")
    assert any("LL" in note for note in report.dataset.notes)
    cell = report.cells[0]
    assert cell.count == 6
    assert cell.by_view == {"PA": 1, "AP": 2, "LAT": 0, "unknown": 3}
    assert sum(cell.by_view.values()) == cell.count
