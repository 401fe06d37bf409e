import gzip
import os

import numpy as np
import pytest

from cxr_audit.data.readers import read_manifest
from cxr_audit.data.splits import assign_patient_splits
from cxr_audit.errors import UserInputError
from cxr_audit.spec import LabelPolicy

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Cardiomegaly,Pleural Effusion,Edema,"
                   "Support Devices\n")


def write_chexpert(folder, rows):
    data = folder / "CheXpert-v1.0-small"
    data.mkdir(parents=True, exist_ok=True)
    path = data / "train.csv"
    path.write_text(CHEXPERT_HEADER + "".join(r + "\n" for r in rows))
    return path


def test_nih621_loads_with_the_readme_counts(shared_data):
    manifest = read_manifest(shared_data / "nih621" / "labels.csv", "nih")
    frame = manifest.frame
    assert len(manifest) == 621 and manifest.n_patients == 621
    assert (frame["view"] == "PA").sum() == 518 and (frame["view"] == "AP").sum() == 103
    assert frame["Pleural Effusion"].sum() == 82 and frame["Cardiomegaly"].sum() == 56
    assert frame["No Finding"].sum() == 100
    first = manifest.resolve_image(frame["path"].iloc[0])
    assert first.exists() and first.parent.name == "images"


def test_chexpert_uncertain_and_blank_labels_follow_the_policy(tmp_path):
    path = write_chexpert(tmp_path, [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,1.0,-1.0,,1.0",
        "CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg,Female,68,Lateral,,,1.0,-1.0,0.0,",
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,40,Frontal,PA,1.0,0.0,0.0,0.0,",
    ])
    manifest = read_manifest(path, "chexpert")
    assert manifest.root == tmp_path  # paths start with the dataset folder
    assert list(manifest.frame["patient_id"]) == ["patient00001", "patient00001", "patient00002"]
    assert list(manifest.frame["view"]) == ["AP", "LAT", "PA"]
    assert list(manifest.frontal().frame["view"]) == ["AP", "PA"]
    names = ["Pleural Effusion", "Edema"]
    ignore = manifest.labels(names, LabelPolicy())
    assert np.isnan(ignore[0, 0]) and ignore[0, 1] == 0  # uncertain -> unknown; blank -> 0 (unmentioned)
    ones = manifest.labels(names, LabelPolicy(overrides={"Effusion": "ones"}, unmentioned="ignore"))
    assert ones[0, 0] == 1 and np.isnan(ones[0, 1])


def test_bad_label_value_names_row_and_column(tmp_path):
    path = write_chexpert(tmp_path, [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,,yes,,,",
    ])
    with pytest.raises(UserInputError, match=r"row 2, column 'Cardiomegaly'"):
        read_manifest(path, "chexpert")


def test_csv_without_expected_columns_says_what_is_missing(shared_data):
    with pytest.raises(UserInputError, match=r"lacks the column\(s\) \['Path'"):
        read_manifest(shared_data / "nih621" / "labels.csv", "chexpert")


@pytest.mark.parametrize("bad_path", ["../outside.png", "/etc/passwd", "images/../../x.png"])
def test_paths_may_not_escape_the_root(tmp_path, bad_path):
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,Cardiomegaly\nimages/a.png,1\n{bad_path},0\n")
    with pytest.raises(UserInputError, match="row 3.*outside the dataset root"):
        read_manifest(csv, "csv")


def test_symlink_escape_is_refused_when_resolving(tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link.png")
    (root / "labels.csv").write_text("path,Cardiomegaly\nlink.png,1\n")
    manifest = read_manifest(root / "labels.csv", "csv")
    with pytest.raises(UserInputError, match="outside the dataset root"):
        manifest.resolve_image("link.png")


def test_generic_csv_maps_aliases_and_optional_columns(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image,patient,Effusion,Pleural_Thickening,notes,sex\n"
                   "a.png,p1,1,0,x,female\nb.png,p1,0,-1,y,M\nc.png,p2,,1,z,\n")
    manifest = read_manifest(csv, "csv")
    assert manifest.concepts == ["Pleural Effusion", "Pleural Thickening"]
    assert list(manifest.frame["sex"]) == ["F", "M", None]
    assert manifest.n_patients == 2


def test_mimic_joins_labels_metadata_split_and_patients(tmp_path):
    def gz(name, text):
        with gzip.open(tmp_path / name, "wt") as handle:
            handle.write(text)

    gz("mimic-cxr-2.0.0-chexpert.csv.gz", "subject_id,study_id,Cardiomegaly,Pleural Effusion\n"
                                          "10000032,50414267,1.0,-1.0\n10000764,57375967,,1.0\n")
    # the real layouts: StudyDate in the metadata (shifted years), anchor_age and anchor_year in MIMIC-IV
    gz("mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,ViewPosition,StudyDate\n"
                                          "d1,10000032,50414267,PA,21800506\nd2,10000032,50414267,LATERAL,21800506\n"
                                          "d3,10000764,57375967,AP,21320108\nd4,10000764,59999999,AP,21330101\n")
    gz("mimic-cxr-2.0.0-split.csv.gz", "dicom_id,study_id,subject_id,split\n"
                                       "d1,50414267,10000032,train\nd2,50414267,10000032,train\n"
                                       "d3,57375967,10000764,validate\nd4,59999999,10000764,validate\n")
    (tmp_path / "patients.csv").write_text("subject_id,gender,anchor_age,anchor_year,anchor_year_group\n"
                                           "10000032,F,52,2180,2014 - 2016\n10000764,M,76,2130,2011 - 2013\n")
    manifest = read_manifest(tmp_path, "mimic")
    frame = manifest.frame.set_index("image_id")
    assert frame.loc["d1", "path"] == "files/p10/p10000032/s50414267/d1.jpg"
    assert list(frame["view"]) == ["PA", "LAT", "AP"]
    assert list(frame["split"]) == ["train", "train", "val"]
    # anchor_age is the age in anchor_year: a study two years after it is two years older
    assert frame.loc["d1", "age"] == 52 and frame.loc["d3", "age"] == 78 and frame.loc["d3", "sex"] == "M"
    assert frame.loc["d1", "Pleural Effusion"] == -1
    # d4's study has no label row: it is left out, and said so
    assert "d4" not in frame.index
    assert any("1 of 4 images belong to studies with no row" in note for note in manifest.notes)


def test_patient_split_never_shares_a_patient_and_is_deterministic(shared_data):
    manifest = read_manifest(shared_data / "nih_data_entry_2017.csv.gz", "nih")
    a = assign_patient_splits(manifest, seed=3).frame
    b = assign_patient_splits(manifest, seed=3).frame
    assert a["split"].equals(b["split"])
    assert a.groupby("patient_id")["split"].nunique().max() == 1
    shares = a.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.01 and abs(shares["test"] - 0.2) < 0.01
    other = assign_patient_splits(manifest, seed=4).frame
    assert not a["split"].equals(other["split"])


def test_given_splits_that_leak_a_patient_are_refused(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,patient_id,split,Edema\na.png,p1,train,1\nb.png,p1,test,0\n")
    with pytest.raises(UserInputError, match="more than one split"):
        read_manifest(csv, "csv")


def test_impossible_ages_become_unknown_with_a_note(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age,Edema\na.png,61,1\nb.png,412,0\nc.png,-3,0\n")
    manifest = read_manifest(csv, "csv")
    assert manifest.frame["age"].iloc[0] == 61 and manifest.frame["age"].iloc[1:].isna().all()
    assert any("2 ages outside 0-120" in note for note in manifest.notes)


def test_two_columns_of_one_concept_are_read_as_one_when_they_agree_and_refused_when_not(tmp_path):
    header = "path,patient_id,Cardiomegaly,Effusion,Pleural Effusion\n"
    path = tmp_path / "labels.csv"
    path.write_text(header + "a.png,p1,1,0,0\nb.png,p2,0,1,1\nc.png,p3,0,,\n")
    manifest = read_manifest(path, "csv")
    assert manifest.frame["Pleural Effusion"].tolist()[:2] == [0.0, 1.0]
    assert any("'Effusion' and 'Pleural Effusion' both name Pleural Effusion" in n for n in manifest.notes)
    path.write_text(header + "a.png,p1,1,0,0\nb.png,p2,0,1,0\n")
    with pytest.raises(UserInputError, match=r"'Effusion' and 'Pleural Effusion' both name Pleural Effusion and "
                                             r"disagree, e.g. row 3"):
        read_manifest(path, "csv")
