"""Real datasets as they ship: DICOM transfer syntaxes and photometrics (pydicom's own test files), CheXpert's
frontal flag, the coverage split, the cell threshold with none_of, and intervals that cannot be estimated."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_audit.data.images import load_image
from cxr_audit.errors import UserInputError

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.mark.parametrize("name", ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_pixels(name):
    assert np.array_equal(load_image(PYDICOM_FILES / name), load_image(PYDICOM_FILES / "MR_small.dcm"))


def test_jpeg_lossless_process_14_decodes_exactly(tmp_path):
    """JPEG Lossless (Process 14), what CR/DX archives use: written at test time by GDCM from a real file."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(PYDICOM_FILES / "MR_small.dcm"))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(tmp_path / "lossless.dcm"))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()
    syntax = pydicom.dcmread(tmp_path / "lossless.dcm").file_meta.TransferSyntaxUID
    assert "Process 14" in syntax.name
    assert np.array_equal(load_image(tmp_path / "lossless.dcm"), load_image(PYDICOM_FILES / "MR_small.dcm"))


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm"])
def test_lossy_syntaxes_decode_to_images(name):
    image = load_image(PYDICOM_FILES / name)
    assert image.ndim == 2 and 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_a_syntax_the_default_install_cannot_decode_names_itself_and_the_package():
    try:
        import libjpeg  # noqa: F401 - with the opt-in GPL decoder installed, the file simply decodes
        pytest.skip("pylibjpeg-libjpeg is installed")
    except ImportError:
        pass
    with pytest.raises(UserInputError, match=r"JPEG Extended.*1\.2\.840\.10008\.1\.2\.4\.51.*pylibjpeg-libjpeg"):
        load_image(PYDICOM_FILES / "JPGExtended.dcm")


def test_a_damaged_file_is_blamed_on_the_data_when_its_decoder_is_installed(monkeypatch):
    """pydicom's JPEG-lossy.dcm is corrupt: with the opt-in decoder present (stood in for here), the message says
    the installed decoders failed, not 'install the gpl-decoders extra'."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "libjpeg" else find_spec(name, *a))
    with pytest.raises(UserInputError, match="decoders installed .* all failed on it") as refused:
        load_image(PYDICOM_FILES / "JPEG-lossy.dcm")
    assert "gpl-decoders" not in str(refused.value)


def test_an_invalid_header_value_is_named_not_taken_for_a_cut_file():
    """pydicom's badVR.dcm has NumberOfFrames '1A'."""
    with pytest.raises(UserInputError, match="header field NumberOfFrames is '1A'") as refused:
        load_image(PYDICOM_FILES / "badVR.dcm")
    assert "cut short" not in str(refused.value)


def test_palette_colour_is_applied_not_read_as_indices():
    from pydicom.pixels import apply_color_lut

    dataset = pydicom.dcmread(PYDICOM_FILES / "examples_palette.dcm")
    rgb = apply_color_lut(dataset.pixel_array, dataset).astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    image = load_image(PYDICOM_FILES / "examples_palette.dcm")
    expected = (luma - luma.min()) / (luma.max() - luma.min())
    assert np.abs(image - expected).max() < 1e-5
    indices = dataset.pixel_array.astype(np.float64)
    assert np.corrcoef(image.ravel(), indices.ravel())[0, 1] < 0.99  # not the raw palette indices


@pytest.mark.parametrize("name", ["SC_rgb_jpeg_gdcm.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_rle.dcm"])
def test_colour_images_are_read_as_grey(name):
    image = load_image(PYDICOM_FILES / name)
    assert image.ndim == 2 and image.dtype == np.float32 and image.std() > 0.01


def test_a_dicom_without_its_file_meta_header_is_read(tmp_path):
    """Old archives write the data set alone (no preamble, no meta header): read with its encoding inferred."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    dataset = pydicom.dcmread(PYDICOM_FILES / "MR_small.dcm")
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, dataset)  # the data set alone: no preamble, no meta header
    path = tmp_path / "no_meta.dcm"
    path.write_bytes(buffer.getvalue())
    assert path.read_bytes()[128:132] != b"DICM"
    assert np.array_equal(load_image(path), load_image(PYDICOM_FILES / "MR_small.dcm"))


@pytest.mark.parametrize("name,message", [("no_meta.dcm", "holds no pixel data"),
                                          ("meta_missing_tsyntax.dcm", "could not be decoded"),
                                          ("rtplan.dcm", "holds no pixel data")])
def test_dicom_files_that_are_not_radiographs_are_refused_clearly(name, message):
    with pytest.raises(UserInputError, match=message):
        load_image(PYDICOM_FILES / name)


def test_a_cut_dicom_is_named_as_cut():
    with pytest.raises(UserInputError, match="cut short"):
        load_image(PYDICOM_FILES / "MR_truncated.dcm")


def test_chexpert_frontal_rows_with_lateral_ap_pa_stay_frontal(tmp_path):
    from cxr_audit.data.readers import read_manifest

    csv = tmp_path / "train.csv"
    csv.write_text("Path,Sex,Age,Frontal/Lateral,AP/PA,Cardiomegaly\n"
                   "train/patient00001/study1/view1_frontal.jpg,Male,60,Frontal,AP,1\n"
                   "train/patient00002/study1/view1_frontal.jpg,Female,70,Frontal,LL,1\n"
                   "train/patient00003/study1/view2_lateral.jpg,Female,70,Lateral,,0\n")
    manifest = read_manifest(csv, "chexpert")
    assert list(manifest.frame["view"]) == ["AP", "FRONTAL", "LAT"]
    assert len(manifest.frontal()) == 2
    assert any("1 images marked Frontal with AP/PA 'LL'" in note for note in manifest.notes)


def test_coverage_counts_the_training_split_when_the_data_has_splits(phantom_dataset, tmp_path, run_cli):
    import json

    import pandas as pd

    from cxr_audit.rundir import RunDir

    result = run_cli("coverage", "--data", phantom_dataset / "labels.csv", "--spec", "coverage_specs/phantom.yaml",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0 and "(training split)" in result.output
    document = json.loads(RunDir(tmp_path / "run").coverage.document.read_text())
    frame = pd.read_csv(phantom_dataset / "labels.csv")
    assert document["dataset"]["split"] == "train" and document["dataset"]["n_images"] == (frame["split"] == "train").sum()


def test_the_split_a_command_counted_is_recorded_so_running_it_again_skips(shared_data, tmp_path, run_cli):
    """NIH labels without the official lists: coverage counts every image; running the same command again
    finds the same inputs (the split is part of the run's configuration), and --split train is a change."""
    nih = shared_data / "nih621" / "labels.csv"
    coverage = ("coverage", "--data", nih, "--spec", "coverage_specs/nih.yaml", "--out", tmp_path / "run")
    first = run_cli(*coverage)
    assert first.exit_code == 0 and "(all images)" in first.output
    again = run_cli(*coverage)
    assert again.exit_code == 0 and "inputs unchanged, skipped" in again.output
    changed = run_cli(*coverage, "--split", "train")
    assert changed.exit_code == 2 and "differs in: images, split" in changed.output


def test_a_finetuned_arm_is_never_scored_on_images_it_trained_on(phantom_dataset, open_test_run, tmp_path):
    from cxr_audit.errors import UserInputError
    from cxr_audit.stages.evaluate import EvaluateStage

    ctx = open_test_run(tmp_path / "run", data=phantom_dataset / "labels.csv", evaluate_split="all")
    assert EvaluateStage(ctx, "baseline").split == "all"
    with pytest.raises(UserInputError, match="must be scored on the test split"):
        EvaluateStage(ctx, "cars").split  # noqa: B018


def test_official_splits_without_val_get_val_from_train_patients(tmp_path):
    """NIH's official lists are train_val and test: the validation split is carved from train by patient."""
    import pandas as pd

    from cxr_audit.data.readers import read_nih
    from cxr_audit.data.splits import carve_validation

    rows = [{"Image Index": f"{p:08d}_000.png", "Finding Labels": "No Finding", "Patient ID": p, "Patient Age": 50,
             "Patient Gender": "M", "View Position": "PA"} for p in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    (tmp_path / "train_val_list.txt").write_text("\n".join(r["Image Index"] for r in rows[:32]))
    (tmp_path / "test_list.txt").write_text("\n".join(r["Image Index"] for r in rows[32:]))
    manifest, notes = carve_validation(read_nih(tmp_path / "Data_Entry_2017.csv"), seed=0)
    counts = manifest.frame["split"].value_counts().to_dict()
    assert counts == {"train": 28, "val": 4, "test": 8}
    assert "4 of 32 train patients (4 images) moved to val with seed 0" in notes[0]
    assert carve_validation(manifest, seed=0)[1] == []  # a val split is left alone


def test_a_cell_threshold_is_its_score_at_the_concept_thresholds():
    from cxr_audit.evaluation.scoring import EvaluationInput, cell_threshold, evaluate
    from cxr_audit.spec import Cell

    rng = np.random.default_rng(0)
    labels = (rng.random((300, 2)) < 0.4).astype(np.float32)
    scores = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.15, labels.shape), 0.01, 0.99)
    cell = Cell(id="A-not-B", all_of=["Cardiomegaly"], none_of=["Edema"], min_count=1)
    thresholds = {"Cardiomegaly": (0.5, "test"), "Edema": (0.4, "test")}
    assert cell_threshold(cell, thresholds) == pytest.approx(0.5 * (1 - 0.4))
    evaluation = evaluate(EvaluationInput(concepts=["Cardiomegaly", "Edema"], probabilities=scores, labels=labels,
                                          patient_ids=np.arange(300).astype(str), thresholds=thresholds, cells=[cell]),
                          n_replicates=100)
    entry = evaluation.scores["cells"]["A-not-B"]
    score = scores[:, 0] * (1 - scores[:, 1])
    predicted = score >= 0.3
    truth = (labels[:, 0] == 1) & (labels[:, 1] == 0)
    assert entry.threshold.value == pytest.approx(0.3)
    assert entry.recall.value == pytest.approx((predicted & truth).sum() / truth.sum(), abs=1e-6)


def test_an_interval_from_too_few_usable_replicates_is_not_estimable_and_never_passes_a_gate(tmp_path, run_cli):
    """1 positive among 9 patients: a third of the replicates draw no positive. The old interval, [1.000, 1.000]
    from the rest, is reported as not estimable, with how many replicates were usable."""
    import json

    import yaml
    from conftest import minimal_audit_document

    from cxr_audit.evaluation.scoring import EvaluationInput, evaluate, save_replicates
    from cxr_audit.provenance import sha256_file
    from cxr_audit.rundir import RunDir
    from cxr_audit.spec import Cell

    labels = np.array([[1, 0]] + [[0, 0]] * 8, np.float32)
    scores = np.array([[0.9, 0.1]] + [[0.2, 0.1]] * 8, np.float32)
    cell = Cell(id="HF", all_of=["Cardiomegaly"], min_count=1)
    evaluation = evaluate(EvaluationInput(concepts=["Cardiomegaly", "Pleural Effusion"], probabilities=scores,
                                          labels=labels, patient_ids=np.arange(9).astype(str),
                                          thresholds={"Cardiomegaly": (0.5, "t"), "Pleural Effusion": (0.5, "t")},
                                          cells=[cell]), n_replicates=1000)
    auroc = evaluation.scores["cells"]["HF"].auroc
    assert auroc.value == 1.0 and auroc.ci is None and 500 < auroc.usable < 800
    run = RunDir(tmp_path / "run")
    save_replicates(run.evaluation("baseline").replicates, evaluation.replicates)
    run.audit.write_text(json.dumps(minimal_audit_document(evaluation.scores, replicates_sha256=sha256_file(
        run.evaluation("baseline").replicates))))
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "rules": [{"type": "cell_metric", "metric": "auroc", "min": 0.5,
                                                               "cells": ["HF"]}]}))
    result = run_cli("gate", "--candidate", run.path, "--policy", policy)
    assert result.exit_code == 1 and "not estimable" in result.output
    skipping = {"version": 1, "not_estimable": "skip", "rules": [
        {"type": "cell_metric", "metric": "auroc", "min": 0.5, "cells": ["HF"]}]}
    policy.write_text(yaml.safe_dump(skipping))
    result = run_cli("gate", "--candidate", run.path, "--policy", policy)  # its one rule skipped: judged nothing
    assert result.exit_code == 1 and "judged nothing" in result.output.replace("\n", " ")
    policy.write_text(yaml.safe_dump({**skipping, "allow_empty": True}))
    result = run_cli("gate", "--candidate", run.path, "--policy", policy)
    assert result.exit_code == 0 and "skipped" in result.output
