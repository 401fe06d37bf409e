"""The data sheet: per-partition summaries, the patient-overlap check, and near-duplicate images across
partitions (a planted re-encoded copy is found and refused in the test split)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxr_audit.evaluation.datasheet import near_duplicate_pairs, partition_summary, patient_overlap
from cxr_audit.errors import UserInputError
from cxr_audit.stages.datasheet import DataSheetStage
from cxr_audit.stages.pipeline import run_stages


def test_near_duplicates_are_found_across_partitions_only():
    rng = np.random.default_rng(0)
    hashes = rng.random((3000, 256)) < 0.5
    hashes[10] = hashes[2000]
    hashes[10, :6] ^= True          # 6 bits apart: near
    hashes[11] = hashes[2001]
    hashes[11, :9] ^= True          # 9 bits apart: not near
    hashes[12] = hashes[13]         # identical but both train: not across partitions
    partitions = np.array(["train"] * 2000 + ["test"] * 1000)
    assert near_duplicate_pairs(hashes, partitions) == [(10, 2000, 6)]
    # the banding misses nothing: every pair within 8 bits, against a brute-force count
    small = rng.random((300, 256)) < 0.5
    for k in range(0, 60, 2):
        small[k + 1] = small[k]
        small[k + 1, rng.choice(256, k % 10, replace=False)] ^= True
    parts = np.array(["train", "val", "test"])[np.arange(300) % 3]
    brute = {(i, j) for i in range(300) for j in range(i + 1, 300)
             if parts[i] != parts[j] and (small[i] != small[j]).sum() <= 8}
    assert {(i, j) for i, j, _ in near_duplicate_pairs(small, parts)} == brute and brute


def test_partition_summary_counts_and_overlap():
    frame = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "sex": ["F", "F", "M", None],
                          "age": [30, 31, 70, np.nan], "view": ["PA", "AP", "PA", "PA"],
                          "split": ["train", "test", "train", "val"]})
    labels = np.array([[1, 0], [0, np.nan], [1, 1], [0, 0]], dtype=float)
    summary = partition_summary(frame, ["X", "Y"], labels)
    assert summary["images"] == 4 and summary["patients"] == 3
    assert summary["concepts"]["X"] == {"labelled": 4, "positives": 2, "prevalence": 0.5}
    assert summary["concepts"]["Y"] == {"labelled": 3, "positives": 1, "prevalence": round(1 / 3, 6)}
    assert summary["sex"] == {"F": 2, "M": 1, "unknown": 1} and summary["view"] == {"AP": 1, "PA": 3}
    assert patient_overlap(frame) == {"checked": True, "patients_in_several_partitions": 1, "examples": ["a"]}


@pytest.fixture()
def planted_copy(phantom_dataset, tmp_path):
    """The phantom with one test image replaced by a re-encoded, slightly brightened copy of a training image
    of another patient."""
    from PIL import Image

    data = tmp_path / "dataset"
    shutil.copytree(phantom_dataset, data)
    labels = pd.read_csv(data / "labels.csv")
    train = labels[labels["split"] == "train"].iloc[0]
    test = labels[(labels["split"] == "test") & (labels["patient_id"] != train["patient_id"])].iloc[0]
    image = np.asarray(Image.open(data / train["Path"]), dtype=np.float32)
    Image.fromarray(np.clip(image * 1.03 + 2, 0, 255).astype(np.uint8)).save(data / test["Path"])
    return data / "labels.csv", train, test


def test_a_test_image_copied_from_training_is_refused_then_allowed_with_a_note(planted_copy, open_test_run, tmp_path):
    labels, train, test = planted_copy
    ctx = open_test_run(tmp_path / "run", data=labels)
    with pytest.raises(UserInputError, match="near-duplicates") as error:
        run_stages(ctx, [DataSheetStage(ctx)])
    assert "--allow-near-duplicates" in str(error.value)
    assert not ctx.run.datasheet.exists()
    ctx = open_test_run(tmp_path / "run", data=labels, allow_near_duplicates=True, force=True)
    run_stages(ctx, [DataSheetStage(ctx)], force=True)
    sheet = json.loads(ctx.run.datasheet.read_text())
    found = sheet["near_duplicates"]
    assert found["checked"] and found["allowed"] and found["pairs_with_test"] >= 1
    pair = next(p for p in found["pairs"] if "test" in (p["partition"], p["other_partition"]))
    ids = {pair["image"], pair["other"]}
    assert any(str(test["Path"]).split("/")[1] in i for i in ids) and pair["bits"] <= 8
    assert sheet["patient_overlap"]["patients_in_several_partitions"] == 0
    assert set(sheet["partitions"]) == {"train", "val", "test"}


def test_the_phantom_has_no_near_duplicates(phantom_dataset, open_test_run, tmp_path):
    """Distinct phantom patients are far apart under the hash: the demo is never refused for near-duplicates."""
    ctx = open_test_run(tmp_path / "run", data=phantom_dataset / "labels.csv")
    run_stages(ctx, [DataSheetStage(ctx)])
    sheet = json.loads(ctx.run.datasheet.read_text())
    assert sheet["near_duplicates"]["pairs_found"] == 0
    frame = pd.read_csv(phantom_dataset / "labels.csv")
    for split, part in sheet["partitions"].items():
        rows = frame[(frame["split"] == split) & (frame["Frontal/Lateral"] == "Frontal")]
        assert part["images"] == len(rows) and part["patients"] == rows["patient_id"].nunique()
        positives = int((rows["Cardiomegaly"] == 1).sum())
        assert part["concepts"]["Cardiomegaly"]["positives"] == positives
