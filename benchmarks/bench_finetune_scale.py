"""Training cost as the archive grows: fine-tune, checker and generator read their batches from the
decoded-image store, so steps/s and peak memory should not depend on how many training images there are.

    python benchmarks/bench_finetune_scale.py [--quick]

Phantom datasets (100,000 images at 64 px and 16,000 at 224 px) are generated once into
$CXR_AUDIT_BENCH_CACHE (default ~/.cache/cxr-audit-bench), outside the repository; the first N images of a
dataset are the training set. For each N:
  cold   a fresh store is filled with the N images (hashing + decoding: what a run's first training stage pays)
  warm   fine-tune (steps of 32), checker (steps of 32) and generator (steps of 16) read from the filled store
Each measurement runs in its own process, so its peak RSS (ru_maxrss; the read-ahead worker's reported
apart) is its own. Then the store itself: bytes per image, random-batch read rate, and what a 16-bit store
would change in the model inputs and in a fine-tuned model's scores (why the store stays float32).
`--quick`: 1k and 4k at 64 px only (minutes; the full run takes about half an hour the first time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("CXR_AUDIT_BENCH_CACHE", "~/.cache/cxr-audit-bench")).expanduser()
NIH621 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nih621"  # real radiographs, for the dtype check
CONCEPTS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Nodule",
            "Support Devices"]

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, torch
mode, folder, n, size, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(2)
CONCEPTS = json.loads(sys.argv[6])
out = {}


def peak_mib():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, workers


def stored(store_dir):
    from cxr_audit.data.image_rows import StoredImages
    from cxr_audit.data.decoded import DecodedImageStore
    rows = np.load(store_dir / "rows.npy")
    return StoredImages(DecodedImageStore(store_dir, size).pixels_path, size, rows)


store_dir = folder / "store"
if mode == "fill":  # the cold store: hash and decode the first n images of the dataset into a fresh store
    import pandas as pd
    from cxr_audit.data.decoded import store_images
    frame = pd.read_csv(folder / "dataset" / "labels.csv", nrows=n)
    paths = [folder / "dataset" / p for p in frame["Path"]]
    start = time.perf_counter()
    images = store_images(paths, size, store_dir, workers=2)
    out["seconds"] = time.perf_counter() - start
    np.save(store_dir / "rows.npy", images.rows)
    np.save(store_dir / "labels.npy", frame[CONCEPTS].fillna(0).clip(lower=0).to_numpy(np.float32))
    from cxr_audit.anatomy.masks import mask_folder
    (store_dir / "masks.txt").write_text("\n".join(str(folder / "dataset" / mask_folder(p)) for p in frame["Path"]))
elif mode == "finetune":
    from cxr_audit.classifier.finetune import FinetuneConfig, TrainingImages
    from cxr_audit.classifier.loading import load_model
    from cxr_audit.classifier.small_cnn import SmallCXRNet, save_classifier
    from cxr_audit.rundir import FinetuneLayout
    from cxr_audit.stages.finetune import finetune_into
    images, labels = stored(store_dir), np.load(store_dir / "labels.npy")
    torch.manual_seed(0)
    save_classifier(SmallCXRNet(len(CONCEPTS), width=8), folder / "m.safetensors", CONCEPTS, size)
    val = np.arange(len(images) - 200, len(images))
    train = TrainingImages.real(images, labels)
    validation = TrainingImages.real(images.take(val), labels[val])
    start = time.perf_counter()
    finetune_into(FinetuneLayout(folder / "ft"), load_model(folder / "m.safetensors"), train, validation,
                  FinetuneConfig(steps=steps, batch_size=32, eval_every=steps, checkpoint_every=steps), "real_only", {},
                  progress=False)
    out["seconds"] = time.perf_counter() - start
elif mode == "checker":
    from cxr_audit.classifier.small_cnn import train_small_classifier
    images, labels = stored(store_dir), np.load(store_dir / "labels.npy")
    start = time.perf_counter()
    train_small_classifier(images, labels, epochs=-(-steps * 32 // len(images)), width=12, max_steps=steps)
    out["seconds"] = time.perf_counter() - start
elif mode == "generator":
    from cxr_audit.anatomy.masks import DatasetAnatomy
    from cxr_audit.synthesis.generator.regions import RegionSampler
    from cxr_audit.synthesis.generator.training import TrainConfig, train_generator
    images, labels = stored(store_dir), np.load(store_dir / "labels.npy")
    folders = [Path(line) for line in (store_dir / "masks.txt").read_text().splitlines()]
    regions = RegionSampler(DatasetAnatomy(folders, size), CONCEPTS)
    start = time.perf_counter()
    train_generator(images, labels, CONCEPTS, folder / "gen", TrainConfig(steps=steps, batch_size=16,
                    checkpoint_every=10**9), "bench", (16, 32, 32), progress=False, regions=regions)
    out["seconds"] = time.perf_counter() - start
elif mode == "store":  # bytes per image, random batch reads, and what a 16-bit store would change
    import pandas as pd
    from cxr_audit.classifier.small_cnn import predict_probabilities, train_small_classifier
    from cxr_audit.data.decoded import load_images
    images = stored(store_dir)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(images), 32) for _ in range(steps)]
    start = time.perf_counter()
    for rows in batches:
        images.take(rows)
    seconds = time.perf_counter() - start
    out.update(bytes_per_image=size * size * 4, read_images_per_s=32 * steps / seconds,
               read_mb_per_s=32 * steps * size * size * 4 / seconds / 1e6)
    # Real radiographs, resized as a run resizes them (the phantom is drawn at its size, and 8-bit pixels
    # that are not resampled sit exactly on a 16-bit grid: no error to see there).
    nih = Path(sys.argv[7])
    frame = pd.read_csv(nih / "labels.csv")
    sample = load_images([nih / "images" / name for name in frame["Image Index"]], size, workers=2)
    findings = frame["Finding Labels"].str.split("|")
    labels = np.stack([findings.map(lambda f: name in f) for name in ("Cardiomegaly", "Effusion", "Atelectasis",
                                                                      "Infiltration")], axis=1).astype(np.float32)
    as_f16 = sample.astype(np.float16).astype(np.float32)
    as_u16 = (np.round(sample * 65535).astype(np.uint16) / np.float32(65535)).astype(np.float32)
    out["sample"] = len(sample)
    out.update(float16_max_error=float(np.abs(as_f16 - sample).max()),
               uint16_max_error=float(np.abs(as_u16 - sample).max()))
    net = train_small_classifier(sample, labels, epochs=3, width=8)
    reference = predict_probabilities(net, sample)
    out.update(float16_max_score_change=float(np.abs(predict_probabilities(net, as_f16) - reference).max()),
               uint16_max_score_change=float(np.abs(predict_probabilities(net, as_u16) - reference).max()))
own, workers = peak_mib()
out.update(peak_rss_mib=own, worker_peak_rss_mib=workers)
print(json.dumps(out))
'''

STEPS = {"finetune": 100, "checker": 100, "generator": 20}


def child(mode: str, folder: Path, n: int, size: int, steps: int = 0) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), str(n), str(size), str(steps),
                             json.dumps(CONCEPTS), str(NIH621)], capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{mode} at {n} images, {size} px failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def dataset(n: int, size: int) -> Path:
    """The phantom dataset of n images at `size`, generated once into the benchmark cache."""
    from cxr_audit.data.phantom.dataset import write_phantom_dataset

    folder = CACHE / f"phantom-{size}px-{n}"
    if not (folder / "labels.csv").exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        print(f"generating {n:,} phantom images at {size} px into {folder} (once) ...", flush=True)
        write_phantom_dataset(folder, n, size=size, seed=0, workers=2, progress=False)
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def main() -> None:
    quick = "--quick" in sys.argv
    plan = [(64, 4_000, (1_000, 4_000))] if quick else [(64, 100_000, (1_000, 16_000, 100_000)),
                                                       (224, 16_000, (16_000,))]
    rows = []
    for size, generated, sizes in plan:
        source = dataset(generated, size)
        for n in sizes:
            with tempfile.TemporaryDirectory(dir=CACHE) as work:
                work = Path(work)
                (work / "dataset").symlink_to(source)
                cold = child("fill", work, n, size)
                warm = {mode: child(mode, work, n, size, steps) for mode, steps in STEPS.items()}
                store = child("store", work, n, size, 300) if n == sizes[-1] and NIH621.is_dir() else None
            rows.append((size, n, cold, warm, store))
            print_row(rows[-1], flush=True)
    print("\n" + "\n".join(table(rows)))


def print_row(row, flush=False) -> None:
    size, n, cold, warm, _ = row
    text = ", ".join(f"{mode} {STEPS[mode] / r['seconds']:.1f} steps/s {r['peak_rss_mib']:.0f} MiB"
                     for mode, r in warm.items())
    print(f"{size} px {n:>7,}: fill {n / cold['seconds']:.0f} img/s {cold['peak_rss_mib']:.0f} MiB; {text}",
          flush=flush)


def table(rows) -> list[str]:
    lines = ["| px | training images | cold store: fill img/s (peak RSS) | fine-tune steps/s (peak RSS) | "
             "checker steps/s (peak RSS) | generator steps/s (peak RSS) |",
             "|---|---|---|---|---|---|"]
    for size, n, cold, warm, _ in rows:
        cells = [f"{STEPS[m] / warm[m]['seconds']:.1f} ({warm[m]['peak_rss_mib']:.0f} MiB; worker "
                 f"{warm[m]['worker_peak_rss_mib']:.0f})" for m in STEPS]
        lines.append(f"| {size} | {n:,} | {n / cold['seconds']:.0f} ({cold['peak_rss_mib']:.0f} MiB) | "
                     + " | ".join(cells) + " |")
    for size, n, _, _, store in rows:
        if store:
            lines.append(f"\nstore at {size} px: {store['bytes_per_image'] / 1024:.0f} KiB an image, random batches "
                         f"of 32 read at {store['read_images_per_s']:,.0f} img/s ({store['read_mb_per_s']:,.0f} MB/s, "
                         f"page cache warm). A 16-bit store (NIH621's {store['sample']} radiographs resized to {size} px): "
                f"float16 changes inputs by up to "
                         f"{store['float16_max_error']:.1e} and a model's scores by up to "
                         f"{store['float16_max_score_change']:.1e}; uint16 by {store['uint16_max_error']:.1e} and "
                         f"{store['uint16_max_score_change']:.1e}.")
    return lines


if __name__ == "__main__":
    started = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    main()
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
