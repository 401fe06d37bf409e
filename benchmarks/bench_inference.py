"""Evaluation throughput against a naive one-image-at-a-time loop and against the machine's limit, on the
same model and images:

- naive: decode, tensor, model, one image at a time;
- decode limit: decoding alone on every core (a process pool); model limit: the model alone on decoded batches;
- cold: `predict` with nothing cached (DataLoader workers decode while the model runs);
- warm: `predict` with the images already in the decoded-image store (a rerun, another arm, another stage).

Targets on 2 CPU cores: batched >= 3x naive; cold >= 80% of min(decode limit, model limit); warm >= 80% of
the model limit. Peak memory must not grow with the number of images. Each variant runs in its own process
so its peak RSS is its own.

    python benchmarks/bench_inference.py [--quick]
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
from cxr_audit.data.decoded import load_images

mode, model_path, n, cache = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[5])
paths = (sorted(Path(sys.argv[4]).glob("images/*/*/*.png")) or sorted(Path(sys.argv[4]).glob("images/*.png")))
paths = (paths * (n // len(paths) + 1))[:n]
torch.set_num_threads(2)
model = load_model(model_path)
size = model.card.input_size
if mode == "warm":  # the images decoded by an earlier stage or run; no cached predictions
    load_images(paths, size, cache_dir=cache, workers=2)
if mode == "model":  # the model alone, on images already decoded into memory
    batches = torch.from_numpy(load_images(paths[:256], size, workers=2)).split(32)
    paths = paths[:256]
start = time.perf_counter()
if mode == "batched":
    predict(model, paths, batch_size=32, workers=2, cache_dir=None, progress=False)
elif mode == "warm":
    predict(model, paths, batch_size=32, workers=2, cache_dir=cache, progress=False)
elif mode == "decode":  # decoding alone, on every core
    from multiprocessing import Pool
    with Pool(2) as pool:
        pool.starmap(load_resized, [(p, size) for p in paths], chunksize=8)
elif mode == "model":
    model.module.eval()
    with torch.inference_mode():
        for batch in batches:
            model.predict(batch)
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
    with tempfile.TemporaryDirectory() as cache:
        output = subprocess.run([sys.executable, "-c", CHILD, mode, str(model), str(n), str(data), cache],
                                check=True, capture_output=True, text=True).stdout
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


def compare(label: str, model: Path, data: Path, sizes: tuple[int, ...]) -> dict:
    small = sizes[0]
    naive = run("naive", model, small, data)
    decode, alone = run("decode", model, small, data), run("model", model, small, data)
    limit = min(decode["images_per_s"], alone["images_per_s"])
    # decoding and the model share the same cores: together they can at best reach this
    shared = 1 / (1 / decode["images_per_s"] + 1 / alone["images_per_s"])
    print(f"[{label}] naive one-at-a-time, {small} images: {naive['images_per_s']:7.1f} images/s, "
          f"peak RSS {naive['peak_rss_mib']:.0f} MiB")
    print(f"[{label}] limits: decode on all cores {decode['images_per_s']:.1f} images/s, model alone "
          f"{alone['images_per_s']:.1f} images/s (both on the same cores: {shared:.1f})")
    rows = []
    for n in sizes:
        cold, warm = run("batched", model, n, data), run("warm", model, n, data)
        rows.append({"images": n, "cold": cold, "warm": warm})
        print(f"[{label}] {n:>5} images: cold {cold['images_per_s']:7.1f} images/s (peak RSS "
              f"{cold['peak_rss_mib']:.0f} MiB), warm {warm['images_per_s']:7.1f} images/s (peak RSS "
              f"{warm['peak_rss_mib']:.0f} MiB)")
    cold, warm = rows[-1]["cold"]["images_per_s"], rows[-1]["warm"]["images_per_s"]
    print(f"[{label}] batched vs naive: {cold / naive['images_per_s']:.1f}x (target >= 3x); cold vs limit "
          f"{cold / limit:.0%} (target >= 80%; {cold / shared:.0%} of the shared-core bound); warm vs model limit "
          f"{warm / alone['images_per_s']:.0%} (target >= 80%)")
    return {"label": label, "naive": naive, "decode_limit": decode, "model_limit": alone, "rows": rows,
            "cold_vs_limit": cold / limit, "cold_vs_shared_bound": cold / shared,
            "warm_vs_model_limit": warm / alone["images_per_s"]}


def main() -> None:
    quick = "--quick" in sys.argv
    nih = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih621"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if nih.exists():
            model = save_model(tmp / "small.ts", 128, 8)
            compare("real NIH PNGs 512 px -> 128 px model", model, nih, (621,) if quick else (621, 2484))
            if not quick:
                model = save_model(tmp / "wide.ts", 224, 16)
                compare("real NIH PNGs 512 px -> 224 px compute-bound model", model, nih, (621, 2484))


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
