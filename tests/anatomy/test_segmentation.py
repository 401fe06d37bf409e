"""Lung segmentation for real images: the shipped network's held-out Dice, lung splitting, mask layout."""

import json

import numpy as np
import pytest

from cxr_audit.anatomy.regions import regions_from_anatomy
from cxr_audit.anatomy.segmenter import SHIPPED_SEGMENTER, LungSegmenter, dice, load_lung_dataset, split_lungs
from cxr_audit.data import phantom
from cxr_audit.data.phantom.dataset import study_of


def test_split_lungs_recovers_each_lung_of_the_phantom(phantom_dataset):
    import pandas as pd

    row = pd.read_csv(phantom_dataset / "labels.csv").iloc[0]
    masks = phantom.render(study_of(row), 128).masks
    split = split_lungs(masks["lung_right"] | masks["lung_left"])
    assert dice(split["lung_right"], masks["lung_right"]) > 0.97
    assert dice(split["lung_left"], masks["lung_left"]) > 0.97


def test_touching_lungs_are_split_at_the_midline():
    lungs = np.zeros((64, 64), bool)
    lungs[10:50, 8:56] = True  # one blob
    split = split_lungs(lungs)
    assert split["lung_right"].any() and split["lung_left"].any()
    assert not (split["lung_right"] & split["lung_left"]).any()
    assert np.flatnonzero(split["lung_right"].any(axis=0)).max() < np.flatnonzero(split["lung_left"].any(axis=0)).min()


def test_shipped_segmenter_dice_on_held_out_real_masks(shared_data):
    segmenter = LungSegmenter(SHIPPED_SEGMENTER)
    images, masks, patients = load_lung_dataset(shared_data / "covid_lungs")
    held = np.isin(patients, segmenter.card["heldout_patients"])
    assert held.sum() == segmenter.card["heldout_images"] >= 10
    scores = [dice(segmenter.lungs(image), mask) for image, mask in zip(images[held], masks[held])]
    # recomputed here, not read from the card: the card must tell the truth
    assert np.mean(scores) == pytest.approx(segmenter.card["heldout_dice_mean"], abs=0.01)
    assert np.mean(scores) > 0.85


def test_segment_command_writes_masks_synthesis_can_use(shared_data, tmp_path, run_cli):
    import pandas as pd

    labels = pd.read_csv(shared_data / "nih621" / "labels.csv").head(6)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    result = run_cli("segment", "--data", tmp_path / "labels.csv", "--format", "nih", "--root",
                     shared_data / "nih621", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lung_overlays.png").exists()
    from cxr_audit.anatomy.masks import load_mask_folder

    first = tmp_path / "masks" / labels.iloc[0]["Image Index"].removesuffix(".png")
    anatomy = load_mask_folder(first, 128)
    regions = regions_from_anatomy(anatomy)
    # both lungs found and the derived cardiac region sits between them
    right, left = anatomy["lung_right"], anatomy["lung_left"]
    assert right.sum() > 500 and left.sum() > 500
    heart_cols = np.flatnonzero(regions["cardiac_silhouette"]["both"].any(axis=0))
    assert np.flatnonzero(right.any(axis=0)).mean() < heart_cols.mean() < np.flatnonzero(left.any(axis=0)).mean()


def test_segmenter_with_changed_weights_is_refused(tmp_path):
    from cxr_audit.errors import UserInputError

    target = tmp_path / "seg.pt"
    target.write_bytes(SHIPPED_SEGMENTER.read_bytes() + b"\0")
    card = json.loads(SHIPPED_SEGMENTER.with_name(SHIPPED_SEGMENTER.name + ".json").read_text())
    (tmp_path / "seg.pt.json").write_text(json.dumps(card))
    with pytest.raises(UserInputError, match="SHA-256"):
        LungSegmenter(target)
