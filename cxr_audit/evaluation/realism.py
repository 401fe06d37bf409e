"""Realism of a synthetic set, judged as a whole (arrays in, numbers out; the fitness stage does the I/O).

Two measures, as the image-synthesis literature reports them:

* **A classifier two-sample test.** A small discriminator learns to tell real training images from
  synthetic ones; cross-fitted on patient-disjoint folds (an edit sits in its source patient's fold), every
  image is scored by a discriminator that never saw it or its patient. The AUROC of those out-of-fold scores
  is 0.5 when the two sets cannot be told apart and 1.0 when every synthetic image gives itself away; its
  interval is a patient-level bootstrap. Reported overall and per subset (operation, concept).
* **Feature distances.** The Fréchet distance and the kernel (KID, the unbiased MMD² with a cubic
  polynomial kernel) between real and synthetic images in a feature space (the run's checker: the input of
  its last linear layer). A distance means little alone, so it comes with its reference: the same distance
  between two patient-disjoint halves of the real images, at the synthetic set's size (both distances are
  biased upward at small sizes, alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxr_audit.metrics.bootstrap import Estimate, patient_weights, percentile_ci
from cxr_audit.metrics.discrimination import weighted_auroc

DEFAULT_FOLDS = 3
# Feature-distance replicates: each needs a matrix square root, so fewer than the metrics' 1,000.
DISTANCE_REPLICATES = 200


@dataclass
class DiscriminatorOptions:
    folds: int = DEFAULT_FOLDS
    epochs: int = 6
    width: int = 8
    batch_size: int = 32
    seed: int = 0


def discriminator_scores(real: np.ndarray, synthetic: np.ndarray, real_patients: np.ndarray,
                         synthetic_patients: np.ndarray, options: DiscriminatorOptions | None = None,
                         progress: bool = False) -> np.ndarray:
    """Out-of-fold 'synthetic' probabilities for real (first) then synthetic images, (N, 1, H, W) in [0, 1].

    Folds are patient-disjoint and stratified (StratifiedGroupKFold): no patient's image, real or edited,
    is scored by a discriminator trained on that patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    from cxr_audit.classifier.small_cnn import predict_probabilities, train_small_classifier
    from cxr_audit.progress import progress_bar

    options = options or DiscriminatorOptions()
    images = np.concatenate([real, synthetic]).astype(np.float32, copy=False)
    is_synthetic = np.r_[np.zeros(len(real)), np.ones(len(synthetic))]
    patients = np.r_[np.asarray(real_patients, str), np.asarray(synthetic_patients, str)]
    folds = fold_count(options, real_patients, synthetic_patients)
    if folds < 2:
        raise ValueError("a two-sample test needs real and synthetic images from at least two patients each")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=options.seed)
    scores = np.full(len(images), np.nan)
    bar = progress_bar(total=folds, desc="realism discriminator", unit="fold", disable=not progress)
    for fold, (train, held_out) in enumerate(splitter.split(images, is_synthetic, patients)):
        train = _balanced(train, is_synthetic)
        net = train_small_classifier(images[train], is_synthetic[train, None], epochs=options.epochs,
                                     batch_size=options.batch_size, seed=options.seed + fold, width=options.width)
        scores[held_out] = predict_probabilities(net, images[held_out])[:, 0]
        bar.update()
    bar.close()
    return scores


def fold_count(options: DiscriminatorOptions, real_patients: np.ndarray, synthetic_patients: np.ndarray) -> int:
    """The folds the discriminator is cross-fitted on: as asked, but no more than either side has patients."""
    return min(options.folds, len(np.unique(np.asarray(real_patients, str))),
               len(np.unique(np.asarray(synthetic_patients, str))))


def _balanced(rows: np.ndarray, is_synthetic: np.ndarray) -> np.ndarray:
    """`rows` with the smaller class repeated to about the larger one's count: a discriminator trained on
    four real images to each synthetic one learns to say 'real' before it learns what gives an edit away."""
    classes = [rows[is_synthetic[rows] == c] for c in (0, 1)]
    small, large = sorted(classes, key=len)
    if not len(small):
        return rows
    repeats = max(1, round(len(large) / len(small)))
    return np.sort(np.concatenate([large, np.tile(small, repeats)]))


def two_sample_auroc(scores: np.ndarray, is_synthetic: np.ndarray, patients: np.ndarray,
                     subsets: dict[str, np.ndarray] | None = None, replicates: int = 1000,
                     seed: int = 0) -> dict[str, Estimate]:
    """The discriminator's AUROC (synthetic as positives) with a patient-level bootstrap interval: 'all', and
    for each named subset of the synthetic images (a boolean mask over the synthetic ones) against every real
    image."""
    is_synthetic = np.asarray(is_synthetic, bool)
    weights = patient_weights(np.asarray(patients, str), replicates, seed)
    results = {"all": _auroc(scores, is_synthetic, weights)}
    for name, mask in (subsets or {}).items():
        keep = ~is_synthetic
        keep[np.flatnonzero(is_synthetic)[np.asarray(mask, bool)]] = True
        results[name] = _auroc(scores[keep], is_synthetic[keep], weights[:, keep])
    return results


def _auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> Estimate:
    point = float(weighted_auroc(scores, labels)[0])
    return percentile_ci(point, weighted_auroc(scores, labels, weights))


@torch.inference_mode()
def checker_features(module: torch.nn.Module, images: np.ndarray, preprocess=None,
                     batch_size: int = 256) -> np.ndarray:
    """The input of `module`'s last linear layer for each image: the feature space the checker decides in.
    `preprocess` maps a [0, 1] batch to the module's input (the model card's normalisation and channels)."""
    heads = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not heads:
        raise ValueError("the checker has no linear layer whose input could serve as its features")
    captured: list[torch.Tensor] = []
    hook = heads[-1].register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1).float()))
    try:
        module.eval()
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], np.float32))
            module(preprocess(x) if preprocess else x)
    finally:
        hook.remove()
    return torch.cat(captured).numpy().astype(np.float64) if captured else np.zeros((0, heads[-1].in_features))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½) between two feature sets (rows are samples).

    Tr (S_a S_b)^½ is taken as the sum of the square roots of the eigenvalues of S_a^½ S_b S_a^½ (the same
    trace, of a symmetric matrix): stable where a small set's covariance is singular, which a general matrix
    square root is not."""
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(mu @ mu + max(np.trace(cov_a) + np.trace(cov_b) - 2 * cross, 0.0))


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """KID: the unbiased squared MMD with the kernel (x·y / d + 1)³ (0 in expectation for one distribution)."""
    d = a.shape[1]
    k_aa, k_bb, k_ab = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    m, n = len(a), len(b)
    return float((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1)) + (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
                 - 2 * k_ab.mean())


@dataclass
class FeatureDistances:
    frechet: Estimate
    kernel: Estimate
    reference_frechet: Estimate     # two patient-disjoint real halves, at the synthetic set's size
    reference_kernel: Estimate
    n_real: int
    n_synthetic: int

    def to_json(self) -> dict:
        return {"frechet": self.frechet.to_json(), "kernel": self.kernel.to_json(),
                "reference_frechet": self.reference_frechet.to_json(), "reference_kernel": self.reference_kernel.to_json(),
                "n_real": self.n_real, "n_synthetic": self.n_synthetic}


def feature_distances(real: np.ndarray, synthetic: np.ndarray, real_patients: np.ndarray,
                      replicates: int = DISTANCE_REPLICATES, seed: int = 0) -> FeatureDistances:
    """Fréchet and kernel distances of `synthetic` features from one half of the real ones (split by patient,
    seeded), and the reference: the same distances from that half to the other half, subsampled to the
    synthetic set's size. Intervals resample the rows of each set (a percentile bootstrap)."""
    rng = np.random.default_rng(seed)
    patients = np.unique(np.asarray(real_patients, str))
    if len(patients) < 4 or len(synthetic) < 3:
        raise ValueError("feature distances need real images of at least 4 patients and 3 synthetic images")
    half = set(rng.permutation(patients)[: len(patients) // 2])
    in_half = np.array([p in half for p in np.asarray(real_patients, str)])
    anchor, other = real[in_half], real[~in_half]
    other = other[np.sort(rng.permutation(len(other))[: len(synthetic)])]

    def estimate(b: np.ndarray, distance) -> Estimate:
        draws = [distance(anchor[rng.integers(0, len(anchor), len(anchor))], b[rng.integers(0, len(b), len(b))])
                 for _ in range(replicates)]
        return percentile_ci(distance(anchor, b), np.asarray(draws))

    return FeatureDistances(estimate(synthetic, frechet_distance), estimate(synthetic, kernel_distance),
                            estimate(other, frechet_distance), estimate(other, kernel_distance),
                            len(real), len(synthetic))
