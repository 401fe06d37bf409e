"""Phantom rendering speed: images per second at 128 and 256 px, one process, and the dataset writer
(rendering + PNG + masks) with all cores."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from cxr_audit.data import phantom
from cxr_audit.data.phantom.dataset import write_phantom_dataset


def render_rate(size: int, n: int) -> float:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for i in range(n):
        present = {f for f in phantom.PHANTOM_FINDINGS if rng.random() < 0.2}
        study = phantom.make_study(f"p{i}", 1, "MF"[i % 2], i, 10_000 + i, present)
        phantom.render(study, size)
    return n / (time.perf_counter() - start)


def main() -> None:
    for size, n in ((128, 200), (256, 60)):
        print(f"render only, 1 process, {size} px: {render_rate(size, n):7.1f} images/s")
    for size, n in ((128, 600), (256, 200)):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            write_phantom_dataset(f"{out}/ds", n, size=size, progress=False)
            rate = n / (time.perf_counter() - start)
        print(f"dataset writer ({os.cpu_count()} cores, PNG + masks), {size} px: {rate:7.1f} images/s")


if __name__ == "__main__":
    main()
