"""Context gaps: a finding scored where a cell's other conditions hold against where they do not, with a paired
patient-bootstrap interval; AUPRC at matched prevalence, so prevalence alone is never a gap."""

import numpy as np
import pytest

from cxr_audit.evaluation.context_gaps import context_gaps
from cxr_audit.metrics.bootstrap import patient_weights
from cxr_audit.spec import Cell

CONCEPTS = ["Pleural Effusion", "Support Devices"]
WITHOUT_DEVICES = Cell(id="C1", all_of=["Pleural Effusion"], none_of=["Support Devices"], min_count=1)


def _data(n: int, rng, informative_without_devices: bool, prevalence_with=0.3, prevalence_without=0.3):
    devices = rng.random(n) < 0.5
    effusion = np.where(devices, rng.random(n) < prevalence_with, rng.random(n) < prevalence_without)
    signal = np.where(devices | informative_without_devices, 2.0, 0.0)
    score = 1 / (1 + np.exp(-(signal * (effusion - 0.5) + rng.normal(0, 0.8, n))))
    probabilities = np.c_[score, devices * 0.8 + 0.1]
    labels = np.c_[effusion, devices].astype(float)
    return probabilities, labels, patient_weights(np.arange(n).astype(str), 300, seed=0)


def test_a_model_blind_in_the_cell_context_shows_a_gap_whose_interval_excludes_zero():
    probabilities, labels, weights = _data(800, np.random.default_rng(1), informative_without_devices=False)
    gaps, replicates = context_gaps([WITHOUT_DEVICES], CONCEPTS, probabilities, labels, weights)
    gap = gaps["C1"]["Pleural Effusion"]
    assert gap.context == "Pleural Effusion without Support Devices"
    assert gap.auroc_cell_context.value < 0.65  # chance, give or take the sampling noise of 400 images
    assert gap.auroc_covered.value > 0.8
    assert gap.auroc_gap.ci[1] < 0 and gap.auprc_gap.ci[1] < 0
    assert gap.n_cell_context + gap.n_covered == 800
    # the replicates carry the gap, so two models' gaps compare pairwise
    point, reps = replicates["gap:C1:Pleural Effusion"]["auroc_gap"]
    assert point == pytest.approx(gap.auroc_gap.difference) and reps.shape == (300,)


def test_equal_skill_at_different_prevalence_is_no_gap():
    probabilities, labels, weights = _data(1600, np.random.default_rng(2), informative_without_devices=True,
                                           prevalence_with=0.5, prevalence_without=0.1)
    gap = context_gaps([WITHOUT_DEVICES], CONCEPTS, probabilities, labels, weights)[0]["C1"]["Pleural Effusion"]
    # raw AUPRC would differ a lot (0.1 vs 0.5 prevalence); matched, the interval holds 0
    assert gap.auprc_gap.ci[0] < 0 < gap.auprc_gap.ci[1]
    assert gap.auroc_gap.ci[0] < 0 < gap.auroc_gap.ci[1]


def test_too_few_positives_in_a_context_is_listed_not_scored():
    probabilities, labels, weights = _data(200, np.random.default_rng(3), True, prevalence_without=0.0)
    gap = context_gaps([WITHOUT_DEVICES], CONCEPTS, probabilities, labels, weights)[0]["C1"]["Pleural Effusion"]
    assert gap.auroc_gap is None and "fewer than" in gap.reason


def test_cells_without_a_context_are_skipped():
    single = Cell(id="C2", all_of=["Pleural Effusion"], min_count=1)
    probabilities, labels, weights = _data(200, np.random.default_rng(4), True)
    assert context_gaps([single], CONCEPTS, probabilities, labels, weights)[0] == {}


def test_a_none_of_concept_is_scored_in_the_context_of_the_rest_of_the_cell():
    """Devices without effusion: a shortcut model calls effusion wherever devices are, so effusion is detected
    worse among images with devices (the cell's members are its false positives)."""
    rng = np.random.default_rng(5)
    n = 1000
    devices = rng.random(n) < 0.5
    effusion = rng.random(n) < 0.3
    score = 1 / (1 + np.exp(-(2.0 * (effusion - 0.5) + 2.5 * devices + rng.normal(0, 1.0, n) * (1 + devices))))
    labels = np.c_[effusion, devices].astype(float)
    probabilities = np.c_[score, devices * 0.8 + 0.1]
    cell = Cell(id="C3", all_of=["Support Devices"], none_of=["Pleural Effusion"], min_count=1)
    gaps = context_gaps([cell], CONCEPTS, probabilities, labels, patient_weights(np.arange(n).astype(str), 300))[0]
    effusion_gap = gaps["C3"]["Pleural Effusion"]
    assert effusion_gap.context == "Pleural Effusion with Support Devices"
    assert effusion_gap.auroc_gap.ci[1] < 0
