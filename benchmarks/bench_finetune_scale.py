"""Fine-tuning cost as the training set grows: seconds for a fixed budget of steps, and peak RSS, for a small
CNN at the model's input size. The steps cost the same whatever the set's size; memory grows with it,
because the training split is held in memory (N x size^2 x 4 bytes) for random batch access.

    python benchmarks/bench_finetune_scale.py [--steps 100]

Each size runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
from cxr_audit.classifier.finetune import FinetuneConfig, TrainingImages
from cxr_audit.classifier.loading import load_model
from cxr_audit.classifier.small_cnn import SmallCXRNet, save_classifier
from cxr_audit.rundir import FinetuneLayout
from cxr_audit.stages.finetune import finetune_into

n, size, steps, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(2)
torch.manual_seed(0)
save_classifier(SmallCXRNet(8, width=8), folder / "m.safetensors", ["Cardiomegaly", "Pleural Effusion",
    "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Nodule", "Support Devices"], size)
rng = np.random.default_rng(0)
train = TrainingImages.real(rng.random((n, 1, size, size), dtype=np.float32), (rng.random((n, 8)) < 0.2).astype(np.float32))
val = TrainingImages.real(rng.random((200, 1, size, size), dtype=np.float32), (rng.random((200, 8)) < 0.2).astype(np.float32))
start = time.perf_counter()
finetune_into(FinetuneLayout(folder / "ft"), load_model(folder / "m.safetensors"), train, val,
              FinetuneConfig(steps=steps, batch_size=32, eval_every=steps, checkpoint_every=steps), "real_only", {}, progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main() -> None:
    steps = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 100
    for size in (64, 128):
        for n in (1_000, 4_000, 16_000):
            with tempfile.TemporaryDirectory() as folder:
                output = subprocess.run([sys.executable, "-c", CHILD, str(n), str(size), str(steps), folder],
                                        check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            print(f"fine-tune {steps} steps of 32 at {size:>3} px, {n:>6,} training images: "
                  f"{result['seconds']:6.1f} s ({steps / result['seconds']:.1f} steps/s), "
                  f"peak RSS {result['peak_rss_mib']:,.0f} MiB (images alone {n * size * size * 4 / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
