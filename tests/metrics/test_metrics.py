"""Metrics: equal to scikit-learn and netcal where those are right, analytic values, CI coverage."""

import numpy as np
import pytest
from netcal.metrics import ACE, ECE, MCE
from sklearn.metrics import average_precision_score, roc_auc_score

from cxr_audit.metrics.bootstrap import paired_difference, patient_weights, percentile_ci
from cxr_audit.metrics.calibration import calibration_errors, reliability_diagram
from cxr_audit.metrics.discrimination import (
    choose_threshold,
    threshold_metrics,
    weighted_auroc,
    weighted_average_precision,
)
from cxr_audit.metrics.uncertainty import binary_entropy, decompose


@pytest.mark.parametrize("seed", range(5))
def test_auprc_and_auroc_equal_scikit_learn_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    labels = (rng.random(n) < 0.3).astype(int)
    scores = np.round(rng.random(n) * 0.6 + 0.4 * labels, 1 + seed % 3)  # rounding makes ties
    assert weighted_auroc(scores, labels)[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert weighted_average_precision(scores, labels)[0] == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12)


def test_weights_equal_replicating_images():
    rng = np.random.default_rng(7)
    labels = (rng.random(200) < 0.4).astype(int)
    scores = rng.random(200) + 0.3 * labels
    weights = rng.integers(0, 3, size=200).astype(float)
    replicated = np.repeat(np.arange(200), weights.astype(int))
    assert weighted_auroc(scores, labels, weights[None])[0] == pytest.approx(
        roc_auc_score(labels[replicated], scores[replicated]))
    assert weighted_average_precision(scores, labels, weights[None])[0] == pytest.approx(
        average_precision_score(labels[replicated], scores[replicated]))
    assert calibration_errors(scores.clip(0, 1), labels, weights[None])["brier"][0] == pytest.approx(
        np.mean((scores.clip(0, 1)[replicated] - labels[replicated]) ** 2))


def test_undefined_metrics_are_nan_not_errors():
    assert np.isnan(weighted_auroc(np.array([0.2, 0.9]), np.array([1, 1]))[0])
    assert np.isnan(weighted_average_precision(np.array([0.2, 0.9]), np.array([0, 0]))[0])


def test_ece_of_a_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    errors = calibration_errors(p, y)
    assert errors["ece"][0] < 0.005 and errors["ace"][0] < 0.005
    assert errors["brier"][0] == pytest.approx(1 / 6, abs=0.003)  # E[p(1-p)] for uniform p


def test_ece_of_known_miscalibration_equals_the_analytic_value():
    rng = np.random.default_rng(1)
    p = rng.random(400_000)
    y = (rng.random(p.size) < p ** 2).astype(int)  # true frequency p^2: overconfident everywhere
    # |p - p^2| never changes sign on [0, 1], so binning loses nothing: ECE = int_0^1 (p - p^2) dp = 1/6
    assert calibration_errors(p, y)["ece"][0] == pytest.approx(1 / 6, abs=0.003)
    constant = np.full(100_000, 0.9)
    y_constant = (rng.random(constant.size) < 0.7).astype(int)
    errors = calibration_errors(constant, y_constant)
    assert errors["ece"][0] == pytest.approx(0.2, abs=0.005) and errors["mce"][0] == pytest.approx(0.2, abs=0.005)


@pytest.mark.parametrize("seed", range(3))
def test_netcal_and_own_implementation_agree_one_label_at_a_time(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(3000)
    y = (rng.random(p.size) < p ** 2 + 0.2 * np.sin(9 * p) ** 2).astype(int)  # gap changes sign
    own = calibration_errors(p, y)
    assert own["ece"][0] == pytest.approx(ECE(10).measure(p, y), abs=1e-9)
    assert own["mce"][0] == pytest.approx(MCE(10).measure(p, y), abs=1e-9)
    # netcal's ACE defaults to equal-WIDTH bins; the adaptive ACE of Nixon et al. needs this flag.
    assert own["ace"][0] == pytest.approx(ACE(10, equal_intervals=False).measure(p, y), abs=1e-9)
    assert own["ace"][0] != pytest.approx(own["ece"][0], abs=1e-4)


def test_reliability_diagram_counts_every_image():
    rng = np.random.default_rng(0)
    p = rng.random(500)
    diagram = reliability_diagram(p, (rng.random(500) < p).astype(int))
    assert sum(diagram["count"]) == 500 and len(diagram["bin_edges"]) == 11


def test_threshold_metrics_and_threshold_choice():
    scores = np.array([0.1, 0.4, 0.6, 0.8, 0.9])
    labels = np.array([0, 0, 1, 0, 1])
    m = {k: v[0] for k, v in threshold_metrics(scores, labels, 0.5).items()}
    assert (m["precision"], m["recall"], m["specificity"]) == pytest.approx((2 / 3, 1.0, 2 / 3))
    assert m["f1"] == pytest.approx(0.8)
    assert choose_threshold(scores, labels) in (0.6, 0.9)


def test_entropy_and_mutual_information():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])).max() < 1e-5
    agreeing = np.full((10, 4, 1), 0.5)
    disagreeing = np.concatenate([np.full((5, 4, 1), 0.01), np.full((5, 4, 1), 0.99)])
    assert decompose(agreeing)["mutual_information"].max() < 1e-9  # same entropy, all aleatoric
    assert decompose(disagreeing)["mutual_information"].min() > 0.9  # members disagree: epistemic


def test_patient_bootstrap_keeps_patients_together():
    patients = np.array(["a", "a", "b", "c", "c", "c"])
    weights = patient_weights(patients, 200, seed=0)
    assert np.all(weights[:, 0] == weights[:, 1]) and np.all(weights[:, 3] == weights[:, 5])
    assert np.allclose(weights[:, [0, 2, 3]].sum(axis=1), 3)  # 3 patients drawn per replicate


def test_bootstrap_ci_covers_the_true_auroc_about_95_percent_of_the_time():
    # Scores N(0,1) for negatives, N(1,1) for positives: true AUROC = Phi(1 / sqrt(2)).
    from scipy.stats import norm

    truth = norm.cdf(1 / np.sqrt(2))
    rng = np.random.default_rng(3)
    hits, trials = 0, 300
    for trial in range(trials):
        labels = (rng.random(150) < 0.4).astype(int)
        scores = rng.normal(labels.astype(float), 1.0)
        patients = np.arange(150)
        point = weighted_auroc(scores, labels)[0]
        replicates = weighted_auroc(scores, labels, patient_weights(patients, 400, seed=trial))
        lo, hi = percentile_ci(point, replicates).ci
        hits += lo <= truth <= hi
    assert 0.91 <= hits / trials <= 0.98, hits / trials


def test_paired_bootstrap_detects_a_real_improvement_and_not_a_null_one():
    rng = np.random.default_rng(5)
    n = 400
    labels = (rng.random(n) < 0.3).astype(int)
    old = rng.normal(labels * 0.8, 1.0)
    better = rng.normal(labels * 1.8, 1.0)
    same = old + rng.normal(0, 1e-3, n)
    weights = patient_weights(np.arange(n), 1000, seed=1)
    def diff(a, b):
        return paired_difference(weighted_auroc(a, labels)[0], weighted_auroc(b, labels)[0],
                                 weighted_auroc(a, labels, weights), weighted_auroc(b, labels, weights))
    improved, null = diff(old, better), diff(old, same)
    assert improved.difference > 0 and improved.ci[0] > 0 and improved.p_value < 0.01
    assert null.ci[0] <= 0 <= null.ci[1] and null.p_value > 0.05


def test_a_share_gets_a_wilson_interval_that_never_degenerates():
    from cxr_audit.metrics.bootstrap import proportion_interval

    assert proportion_interval(10, 20).ci == pytest.approx((0.2993, 0.7007), abs=1e-4)  # the textbook value
    all_agree = proportion_interval(5, 5)
    assert all_agree.value == 1.0 and all_agree.ci[0] == pytest.approx(0.5655, abs=1e-4) and all_agree.ci[1] == 1.0
    assert proportion_interval(0, 0).value is None
