"""Anatomy fidelity by the shipped lung segmenter, with planted answers on exact phantom counterfactuals at
128 px: the cardiothoracic ratio rises when cardiomegaly is drawn in and falls when it is taken out; QC rejects
a cardiomegaly insert that does not widen the heart, lungs that moved outside the edit region, and a heart
redrawn by an edit of another finding; below 128 px the ratio is recorded, never a reason."""

import numpy as np
import pytest

from cxr_audit.anatomy.fidelity import AnatomyMeasure, cardiothoracic_ratio, measure_anatomy
from cxr_audit.anatomy.segmenter import LungSegmenter
from cxr_audit.data import phantom
from cxr_audit.data.phantom.study import counterfactual, make_study
from cxr_audit.synthesis.documents import Operation
from cxr_audit.synthesis.qc import QCThresholds, anatomy_reasons

INSERT, DELETE = [Operation(op="insert", concept="Cardiomegaly")], [Operation(op="delete", concept="Cardiomegaly")]
EFFUSION = [Operation(op="insert", concept="Pleural Effusion")]


@pytest.fixture(scope="module")
def segmenter():
    return LungSegmenter()


@pytest.fixture(scope="module")
def pairs():
    """(normal, enlarged heart) renders of six phantom patients at 128 px, and the enlargement's region."""
    studies = [make_study(f"p{k}", 0, "MF"[k % 2], 1000 + k, 2000 + k, set()) for k in range(6)]
    rendered = [(phantom.render(s, 128), phantom.render(counterfactual(s, add="Cardiomegaly"), 128)) for s in studies]
    return (np.stack([a.image for a, _ in rendered]), np.stack([b.image for _, b in rendered]),
            np.stack([b.masks["Cardiomegaly"] for _, b in rendered]))


def test_the_ratio_rises_with_an_enlarged_heart_and_falls_back(segmenter, pairs):
    normal, enlarged, region = pairs
    inserted = measure_anatomy(segmenter, normal, enlarged, region)
    deleted = measure_anatomy(segmenter, enlarged, normal, region)
    assert all(m.ctr_change > 0 for m in inserted) and all(m.ctr_change < 0 for m in deleted)
    assert np.mean([m.ctr_change for m in inserted]) > 0.05
    assert all(0.25 < m.ctr_before < 0.6 for m in inserted)  # a plausible ratio read from the lungs
    assert all(m.lung_dice_outside > 0.95 for m in inserted)
    assert not any(anatomy_reasons(m, INSERT, QCThresholds(), True) for m in inserted)
    assert not any(anatomy_reasons(m, DELETE, QCThresholds(), True) for m in deleted)


def test_a_cardiomegaly_insert_that_does_not_widen_the_heart_is_rejected(segmenter, pairs):
    normal, _, region = pairs
    unchanged = measure_anatomy(segmenter, normal, normal, region)  # the "edit" left the heart as it was
    assert all(m.ctr_change == 0 and m.lung_dice_outside == 1.0 for m in unchanged)
    for measure in unchanged:
        assert anatomy_reasons(measure, INSERT, QCThresholds(), True) == [
            "cardiomegaly insert did not widen the heart (cardiothoracic ratio)"]
        assert anatomy_reasons(measure, DELETE, QCThresholds(), True) == [
            "cardiomegaly delete did not narrow the heart (cardiothoracic ratio)"]
        assert anatomy_reasons(measure, EFFUSION, QCThresholds(), True) == []


def test_moved_lungs_and_a_redrawn_heart_are_rejected(segmenter, pairs):
    normal, _, region = pairs
    shifted = np.roll(normal, 12, axis=2)  # the whole chest moved sideways: anatomy outside the region changed
    for measure in measure_anatomy(segmenter, normal, shifted, region):
        assert "lungs moved outside the edit region (segmenter Dice)" in anatomy_reasons(
            measure, EFFUSION, QCThresholds(), True)
        assert measure.lung_dice_outside < 0.9
    redrawn = AnatomyMeasure(lung_dice_outside=0.99, ctr_before=0.40, ctr_after=0.80)
    assert anatomy_reasons(redrawn, EFFUSION, QCThresholds(), True) == [
        "heart size changed by an edit of another finding (cardiothoracic ratio)"]
    assert anatomy_reasons(redrawn, EFFUSION, QCThresholds(), require_fidelity=False) == []  # the ablation


def test_below_128_px_the_ratio_is_recorded_not_judged(segmenter, pairs):
    normal, _, region = pairs
    small = normal[:, ::2, ::2]
    measure = measure_anatomy(segmenter, small, small, region[:, ::2, ::2])[0]
    assert not measure.ctr_judged and measure.ctr_before is not None
    assert anatomy_reasons(measure, INSERT, QCThresholds(), True) == []


def test_no_two_lungs_no_ratio():
    assert cardiothoracic_ratio(np.zeros((128, 128), np.float32)) is None
    heart_unmeasurable = AnatomyMeasure(1.0, None, None)
    assert anatomy_reasons(heart_unmeasurable, INSERT, QCThresholds(), True) == [
        "heart size not measurable: the segmenter found no two lungs"]
