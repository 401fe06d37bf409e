"""Realism measures with planted answers: copies of real images cannot be told from real ones; blurred or
noise-filled 'synthetic' images are caught; distances of copies sit within the real-vs-real reference."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from cxr_audit.classifier.small_cnn import train_small_classifier
from cxr_audit.data import phantom
from cxr_audit.data.readers import read_manifest
from cxr_audit.evaluation.realism import (
    DiscriminatorOptions,
    checker_features,
    discriminator_scores,
    feature_distances,
    frechet_distance,
    kernel_distance,
    two_sample_auroc,
)


@pytest.fixture(scope="module")
def real(phantom_dataset):
    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    images = train.images(32)
    return images, train.frame["patient_id"].astype(str).to_numpy(), train.frame[list(phantom.PHANTOM_FINDINGS)]


def _test(real_images, real_patients, synthetic, synthetic_patients, subsets=None):
    torch.set_num_threads(2)
    scores = discriminator_scores(real_images, synthetic, real_patients, synthetic_patients,
                                  DiscriminatorOptions(folds=3, epochs=6, seed=1))
    assert np.isfinite(scores).all()
    is_synthetic = np.r_[np.zeros(len(real_images)), np.ones(len(synthetic))]
    return two_sample_auroc(scores, is_synthetic, np.r_[real_patients, synthetic_patients], subsets, replicates=300)


def test_copies_of_real_images_cannot_be_told_apart(real):
    images, patients, _ = real
    rng = np.random.default_rng(0)
    picked = rng.choice(len(images), 60, replace=False)
    results = _test(images, patients, images[picked].copy(), patients[picked])
    low, high = results["all"].ci
    assert low <= 0.5 <= high, results["all"]


@pytest.mark.parametrize("spoil", ["blur", "noise"])
def test_spoiled_images_are_caught(real, spoil):
    images, patients, _ = real
    rng = np.random.default_rng(1)
    picked = rng.choice(len(images), 60, replace=False)
    synthetic = images[picked].copy()
    if spoil == "blur":
        synthetic = ndimage.gaussian_filter(synthetic, sigma=(0, 0, 1.5, 1.5))
    else:
        synthetic = np.clip(synthetic + rng.normal(0, 0.08, synthetic.shape), 0, 1).astype(np.float32)
    half = np.arange(60) < 30
    results = _test(images, patients, synthetic, patients[picked], {"first half": half, "second half": ~half})
    assert results["all"].value > 0.9, results["all"]
    assert results["first half"].value > 0.9 and results["second half"].value > 0.9
    assert results["all"].ci[0] > 0.8


def test_distances_of_copies_sit_within_the_real_reference_and_shifted_sets_do_not(real):
    images, patients, labels = real
    torch.set_num_threads(2)
    net = train_small_classifier(images, labels.to_numpy(np.float32), epochs=2, seed=0, width=8)
    features = checker_features(net, images)
    assert features.shape == (len(images), 64)
    rng = np.random.default_rng(2)
    picked = rng.choice(len(images), 80, replace=False)
    copies = feature_distances(features, features[picked], patients, replicates=100, seed=0)
    assert copies.frechet.value <= copies.reference_frechet.ci[1], copies.to_json()
    assert copies.kernel.value <= copies.reference_kernel.ci[1]
    blurred = checker_features(net, ndimage.gaussian_filter(images[picked], sigma=(0, 0, 1.5, 1.5)))
    shifted = feature_distances(features, blurred, patients, replicates=100, seed=0)
    assert shifted.frechet.ci[0] > copies.reference_frechet.ci[1], shifted.to_json()
    assert shifted.kernel.ci[0] > copies.reference_kernel.ci[1]


def test_distances_agree_with_their_definitions():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(400, 3)), rng.normal(size=(300, 3)) + np.array([1.0, 0, 0])
    # two Gaussians of equal covariance: the Fréchet distance is the squared mean shift (plus sampling error)
    assert frechet_distance(a, b) == pytest.approx(1.0, abs=0.25)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert abs(kernel_distance(a[:200], a[200:])) < 0.05 < kernel_distance(a, b)


def test_too_few_patients_are_refused():
    images = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="two patients"):
        discriminator_scores(images, images, np.array(["a"] * 4), np.array(["a"] * 4))
