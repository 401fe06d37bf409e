"""Uncertainty per label: predictive entropy of the binary output, and, from several stochastic
predictions (MC dropout, test-time augmentation, or an ensemble), mutual information and variance."""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli(p): 0 when certain, 1 at p = 0.5."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def decompose(samples: np.ndarray) -> dict[str, np.ndarray]:
    """From T stochastic predictions (T, N, K): the mean probability, total predictive entropy,
    expected (aleatoric) entropy, mutual information (epistemic: total - expected) and variance."""
    mean = samples.mean(axis=0)
    total = binary_entropy(mean)
    expected = binary_entropy(samples).mean(axis=0)
    return {"mean": mean, "entropy": total, "expected_entropy": expected,
            "mutual_information": np.clip(total - expected, 0, None), "variance": samples.var(axis=0)}
