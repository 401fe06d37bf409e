"""Edit regions from anatomy masks contain the findings the phantom draws there."""

import numpy as np
import pytest

from cxr_audit.anatomy.masks import load_mask_folder
from cxr_audit.anatomy.regions import edit_mask, regions_from_anatomy
from cxr_audit.data import phantom

MINIMUM_INSIDE = {"Nodule": 0.95, "Consolidation": 0.9, "Atelectasis": 0.9, "Edema": 0.9,
                  "Pleural Effusion": 0.85, "Support Devices": 0.95, "Cardiomegaly": 0.85, "Pneumothorax": 0.65}


@pytest.mark.parametrize("finding", phantom.PHANTOM_FINDINGS)
def test_the_edit_region_of_the_source_holds_the_inserted_finding(finding):
    rng = np.random.default_rng(1)
    for i in range(6):
        study = phantom.make_study("p", 1, "MF"[i % 2], int(rng.integers(2**31)), int(rng.integers(2**31)), set())
        source = phantom.render(study, 128)
        edited = phantom.render(phantom.counterfactual(study, add=finding), 128)
        anatomy = {k: source.masks[k] for k in ("lung_right", "lung_left", "heart", "mediastinum")}
        side = study.findings.side[finding]
        binary, soft = edit_mask([finding], anatomy, side=side if side != "both" else "both")
        truth = edited.masks[finding]
        assert (truth & binary).sum() / truth.sum() >= MINIMUM_INSIDE[finding]
        assert binary.mean() < 0.5  # a region, not the whole image
        assert soft.min() >= 0 and soft.max() <= 1 and np.all(soft[binary] > 0.99)


def test_one_sided_findings_get_one_sided_regions():
    study = phantom.make_study("p", 1, "F", 1, 2, set())
    masks = phantom.render(study, 128).masks
    anatomy = {k: masks[k] for k in ("lung_right", "lung_left")}
    right, _ = edit_mask(["Pneumothorax"], anatomy, side="right", dilate_px=0)
    left, _ = edit_mask(["Pneumothorax"], anatomy, side="left", dilate_px=0)
    assert not (right & left).any()
    assert np.flatnonzero(right.any(axis=0)).mean() < 64 < np.flatnonzero(left.any(axis=0)).mean()  # patient right = image left


def test_regions_are_derived_without_heart_or_mediastinum_masks(tmp_path):
    from PIL import Image

    masks = phantom.render(phantom.make_study("p", 1, "M", 3, 4, set()), 96).masks
    for name in ("lung_right", "lung_left"):
        Image.fromarray((masks[name] * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    loaded = load_mask_folder(tmp_path)
    regions = regions_from_anatomy(loaded)
    heart = regions["cardiac_silhouette"]["both"]
    assert heart.any() and (heart & masks["heart"]).sum() / masks["heart"].sum() > 0.5


@pytest.mark.parametrize("finding", ["Cardiomegaly", "Pleural Effusion"])
def test_edit_region_does_not_depend_on_the_finding(finding):
    """A region that grew with the finding would tell a generator trained on regions the answer."""
    study = phantom.make_study("p", 1, "M", 11, 12, set())
    without = phantom.render(study, 64).masks
    with_finding = phantom.render(phantom.counterfactual(study, add=finding), 64).masks
    lungs = ("lung_right", "lung_left")
    a, _ = edit_mask([finding], {k: without[k] for k in lungs})
    b, _ = edit_mask([finding], {k: with_finding[k] for k in lungs})
    assert (a != b).sum() <= 0.02 * a.sum()
