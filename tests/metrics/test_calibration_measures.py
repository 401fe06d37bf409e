"""Smooth ECE, calibration intercept and slope, and post-hoc recalibration, against the libraries that define
them, on the real CheXNet predictions of NIH images."""

import numpy as np
import pandas as pd
import pytest

from cxr_audit.metrics.bootstrap import patient_weights
from cxr_audit.metrics.calibration import calibration_line, logit, smooth_ece, smooth_reliability
from cxr_audit.metrics.recalibration import fit_recalibration

FINDINGS = {"Cardiomegaly": "Cardiomegaly", "Effusion": "Effusion", "Atelectasis": "Atelectasis",
            "Edema": "Edema"}


@pytest.fixture(scope="module")
def chexnet(shared_data):
    """(finding -> (scores, labels), patient ids) of the 621 NIH images CheXNet scored."""
    nih = shared_data / "nih621"
    labels = pd.read_csv(nih / "labels.csv")
    predictions = pd.read_csv(nih / "chexnet_predictions.csv").set_index("Image Index").loc[labels["Image Index"]]
    out = {finding: (predictions[f"prob_{finding}"].to_numpy(float),
                     labels["Finding Labels"].str.contains(finding).to_numpy(float)) for finding in FINDINGS}
    return out, labels["Patient ID"].to_numpy()


def test_smooth_ece_is_relplots_on_real_chexnet_predictions(chexnet):
    import relplot
    from relplot.metrics import smooth_ece as relplot_smooth_ece

    findings, patients = chexnet
    weights = np.vstack([np.ones((1, len(patients))), patient_weights(patients, 50, seed=0)])
    for finding, (scores, labels) in findings.items():
        values = smooth_ece(scores, labels, weights)
        assert values[0] == pytest.approx(relplot.smECE(scores, labels), abs=1e-12), finding
        # each replicate is relplot's smooth ECE of the resampled images, at the full sample's bandwidth
        _, sigma = relplot.smECE(scores, labels, return_width=True)
        for row in (1, 2, 3):
            drawn = np.repeat(np.arange(scores.size), weights[row].astype(int))
            assert values[row] == pytest.approx(relplot_smooth_ece(scores[drawn], labels[drawn], sigma), abs=1e-9)


def test_intercept_and_slope_equal_an_unpenalised_logistic_fit(chexnet):
    import statsmodels.api as sm

    findings, patients = chexnet
    for finding, (scores, labels) in findings.items():
        line = calibration_line(scores, labels)
        x = logit(scores)
        slope_fit = sm.GLM(labels, sm.add_constant(x), family=sm.families.Binomial()).fit()
        offset_fit = sm.GLM(labels, np.ones((x.size, 1)), family=sm.families.Binomial(), offset=x).fit()
        assert line["calibration_slope"][0] == pytest.approx(slope_fit.params[1], abs=1e-4), finding
        assert line["calibration_intercept"][0] == pytest.approx(offset_fit.params[0], abs=1e-4), finding
    # weighted replicates are the fit on the resampled images
    scores, labels = findings["Cardiomegaly"]
    weights = patient_weights(patients, 3, seed=1)
    drawn = np.repeat(np.arange(scores.size), weights[0].astype(int))
    refit = sm.GLM(labels[drawn], sm.add_constant(logit(scores[drawn])), family=sm.families.Binomial()).fit()
    assert calibration_line(scores, labels, weights)["calibration_slope"][0] == pytest.approx(refit.params[1], abs=1e-4)


def test_a_calibrated_model_has_slope_one_and_an_overconfident_one_below():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    calibrated = calibration_line(p, y)
    assert calibrated["calibration_slope"][0] == pytest.approx(1.0, abs=0.05)
    assert calibrated["calibration_intercept"][0] == pytest.approx(0.0, abs=0.05)
    overconfident = 1 / (1 + np.exp(-2 * logit(p)))  # logits doubled: too extreme
    assert calibration_line(overconfident, y)["calibration_slope"][0] == pytest.approx(0.5, abs=0.03)
    assert smooth_ece(overconfident, y)[0] > smooth_ece(p, y)[0] + 0.05


def test_separated_or_one_class_data_has_no_slope():
    separated = calibration_line(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert np.isnan(separated["calibration_slope"][0])
    one_class = calibration_line(np.array([0.1, 0.5, 0.9]), np.zeros(3))
    assert np.isnan(one_class["calibration_slope"][0]) and np.isnan(one_class["calibration_intercept"][0])


def test_smooth_reliability_curve_and_band():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 3000)
    y = (rng.uniform(size=p.size) < p).astype(float)
    curve = smooth_reliability(p, y, patient_weights(np.arange(p.size), 100, seed=0))
    mesh, mean = np.array(curve["mesh"]), np.array(curve["mean"])
    inside = (mesh > 0.2) & (mesh < 0.8)
    assert np.abs(mean[inside] - mesh[inside]).max() < 0.08  # a calibrated model's curve follows the diagonal
    assert (np.array(curve["lower"]) <= mean + 1e-9).all() and (mean <= np.array(curve["upper"]) + 1e-9).all()
    assert smooth_reliability(np.zeros(0), np.zeros(0)) is None


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_recalibration_on_validation_improves_calibration_and_keeps_the_ranking(method):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    truth = rng.uniform(0.05, 0.95, 6000)
    y = (rng.uniform(size=truth.size) < truth).astype(float)
    overconfident = 1 / (1 + np.exp(-3 * logit(truth)))
    validation, test = slice(0, 3000), slice(3000, None)
    fitted = fit_recalibration(method, overconfident[validation], y[validation])
    mapped = fitted.apply(overconfident[test])
    assert smooth_ece(mapped, y[test])[0] < 0.5 * smooth_ece(overconfident[test], y[test])[0]
    if method != "isotonic":  # a strictly monotone map keeps the ranking exactly (isotonic ties some scores)
        assert roc_auc_score(y[test], mapped) == pytest.approx(roc_auc_score(y[test], overconfident[test]), abs=1e-12)
    if method == "temperature":
        assert fitted.parameters["temperature"] == pytest.approx(3.0, rel=0.1)
        from scipy.optimize import minimize_scalar

        x, yv = logit(overconfident[validation]), y[validation]
        best = minimize_scalar(lambda t: np.sum(np.logaddexp(0, x / t) - yv * x / t), bounds=(0.5, 10), method="bounded",
                               options={"xatol": 1e-10})
        assert fitted.parameters["temperature"] == pytest.approx(best.x, rel=1e-5)
    if method == "platt":
        line = calibration_line(overconfident[validation], y[validation])
        assert fitted.parameters["slope"] == pytest.approx(line["calibration_slope"][0], abs=1e-4)


def test_recalibration_without_both_classes_keeps_the_probabilities():
    fitted = fit_recalibration("temperature", np.array([0.2, 0.4]), np.zeros(2))
    assert "nothing to fit" in fitted.reason
    assert np.array_equal(fitted.apply(np.array([0.3, 0.7])), np.array([0.3, 0.7]))
    with pytest.raises(ValueError, match="unknown recalibration"):
        fit_recalibration("beta", np.array([0.2]), np.array([1.0]))
