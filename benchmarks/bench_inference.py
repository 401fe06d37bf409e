"""Batched evaluation (DataLoader workers, batches, inference_mode) against a naive one-image-at-a-time
loop, on the same model and images. Target: >= 3x images/s on 2 cores, and peak memory that does not grow
with the number of images.

Each variant runs in its own process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import torch
from cxr_audit.data.images import load_resized
from cxr_audit.classifier.inference import predict
from cxr_audit.classifier.loading import load_model

mode, model_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
paths = (sorted(Path(sys.argv[4]).glob("images/*/*/*.png")) or sorted(Path(sys.argv[4]).glob("images/*.png")))
paths = (paths * (n // len(paths) + 1))[:n]
torch.set_num_threads(2)
model = load_model(model_path)
start = time.perf_counter()
if mode == "batched":
    predict(model, paths, batch_size=32, workers=2, cache_dir=None, progress=False)
else:
    model.module.eval()
    for path in paths:  # naive: decode, build a tensor, run the model, one image at a time, autograd on
        x = torch.from_numpy(load_resized(path, model.card.input_size))[None, None]
        model.predict(x)
seconds = time.perf_counter() - start
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"images_per_s": len(paths) / seconds, "peak_rss_mib": rss / 1024}))
'''


def run(mode: str, model: Path, n: int, data: Path) -> dict:
    output = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(n), str(data)], check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def save_model(path: Path, input_size: int, width: int) -> Path:
    import torch
    import yaml

    from cxr_audit.classifier.small_cnn import SmallCXRNet

    torch.jit.script(SmallCXRNet(8, width=width).eval()).save(str(path))
    path.with_name(path.name + ".card.yaml").write_text(yaml.safe_dump(
        {"input_size": input_size, "output_names": ["Cardiomegaly", "Effusion", "Pneumothorax", "Consolidation",
                                                    "Edema", "Atelectasis", "Nodule", "Support Devices"]}))
    return path


def compare(label: str, model: Path, data: Path, sizes: tuple[int, int]) -> None:
    small, large = sizes
    naive = run("naive", model, small, data)
    print(f"[{label}] naive one-at-a-time, {small} images: {naive['images_per_s']:7.1f} images/s, "
          f"peak RSS {naive['peak_rss_mib']:.0f} MiB")
    for n in sizes:
        batched = run("batched", model, n, data)
        print(f"[{label}] batched (32, 2 workers), {n:>5} images: {batched['images_per_s']:7.1f} images/s, "
              f"peak RSS {batched['peak_rss_mib']:.0f} MiB")
    print(f"[{label}] speed-up: {batched['images_per_s'] / naive['images_per_s']:.1f}x (target >= 3x)")


def main() -> None:
    from cxr_audit.data.phantom.dataset import write_phantom_dataset

    nih = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih621"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if nih.exists():
            model = save_model(tmp / "small.ts", 128, 8)
            compare("real NIH PNGs 512 px -> 128 px model", model, nih, (621, 2484))
        write_phantom_dataset(tmp / "ds", 1600, size=224, seed=0, progress=False)
        model = save_model(tmp / "wide.ts", 224, 16)
        compare("phantom 224 px, compute-bound 224 px model", model, tmp / "ds", (400, 1600))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
