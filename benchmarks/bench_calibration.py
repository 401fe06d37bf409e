"""Cost of the calibration measures per scored target (a concept or a cell) with its patient bootstrap: the
binned errors (ECE/ACE/MCE/Brier), the smooth ECE (relplot's point estimate, replicates vectorised here) and
the calibration intercept and slope (Newton's method vectorised over replicates), against calling relplot's
smECE once per replicate (what relplot alone offers: no weights, a bandwidth search on every call).

    python benchmarks/bench_calibration.py [--replicates 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cxr_audit.metrics.bootstrap import patient_weights
from cxr_audit.metrics.calibration import calibration_errors, calibration_line, smooth_ece


def _seconds(work, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    import relplot

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'images':>8} {'binned (s)':>11} {'smooth ECE (s)':>15} {'slope+intercept (s)':>20} "
          f"{'relplot per replicate (s)':>26} {'speed-up':>9}")
    for n in (300, 3000, 30000):
        scores = rng.uniform(0.01, 0.99, n)
        labels = (rng.uniform(size=n) < scores ** 1.3).astype(float)
        weights = np.vstack([np.ones((1, n)), patient_weights(np.arange(n) // 2, args.replicates, seed=0)])
        binned = _seconds(lambda: calibration_errors(scores, labels, weights))
        smooth = _seconds(lambda: smooth_ece(scores, labels, weights))
        line = _seconds(lambda: calibration_line(scores, labels, weights))
        sample = 20  # relplot on 20 resampled replicates, scaled to all of them
        drawn = [np.repeat(np.arange(n), weights[k].astype(int)) for k in range(1, sample + 1)]
        per_replicate = _seconds(lambda: [relplot.smECE(scores[d], labels[d]) for d in drawn], 1) / sample
        naive = per_replicate * args.replicates
        print(f"{n:>8} {binned:>11.3f} {smooth:>15.3f} {line:>20.3f} {naive:>26.2f} {naive / smooth:>8.1f}x")


if __name__ == "__main__":
    main()
