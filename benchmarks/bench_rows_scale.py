"""The row-scale stages at archive sizes: coverage (103 cells of coverage_specs/nih.yaml), the plan, and the
patient-level bootstrap's weight matrix, at 10k, 100k and 1M label rows.

The rows are NIH ChestX-ray14's own (../shared/data/nih_data_entry_2017.csv.gz): whole patients drawn with
replacement and renamed, so co-occurrence and patients with several studies are real. Each size is written
once to a cache folder outside the repository ($CXR_AUDIT_BENCH_CACHE, default ~/.cache/cxr-audit/bench) and
measured in its own process (peak RSS is per process). Prints time and peak RSS per step, and the growth from
one size to the next (1.0 = linear).

    python benchmarks/bench_rows_scale.py [--sizes 10000 100000 1000000] [--replicates 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NIH = REPO.parent / "shared" / "data" / "nih_data_entry_2017.csv.gz"
SPEC = REPO / "coverage_specs" / "nih.yaml"
CACHE = Path(os.environ.get("CXR_AUDIT_BENCH_CACHE", Path.home() / ".cache" / "cxr-audit" / "bench"))


def rows_file(size: int) -> Path:
    """`size` NIH-format rows of whole resampled patients (written once)."""
    import numpy as np
    import pandas as pd

    path = CACHE / f"nih_rows_{size}.csv.gz"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    source = pd.read_csv(NIH)
    by_patient = list(source.groupby("Patient ID").indices.values())
    rng = np.random.default_rng(0)
    drawn = rng.integers(0, len(by_patient), size * 2 // 3 + 10)  # enough patients (about 3.6 images each)
    sizes = np.array([len(by_patient[k]) for k in drawn])
    keep = int(np.searchsorted(np.cumsum(sizes), size)) + 1
    rows = np.concatenate([by_patient[k] for k in drawn[:keep]])[:size]
    copy = np.repeat(np.arange(1, keep + 1), sizes[:keep])[:size]  # each drawn patient is a new patient
    frame = source.iloc[rows].reset_index(drop=True)
    frame["Patient ID"] = copy
    study = frame.groupby("Patient ID").cumcount().to_numpy()
    frame["Image Index"] = [f"{p:08d}_{k:03d}.png" for p, k in zip(copy, study)]
    frame.to_csv(path, index=False)
    return path


def measure(size: int, replicates: int) -> dict:
    """One size, in this process: read, split, coverage, plan, bootstrap weights."""
    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.data.splits import assign_patient_splits
    from cxr_audit.metrics.bootstrap import patient_weights
    from cxr_audit.spec import load_spec
    from cxr_audit.synthesis.planner import plan_edits

    path, out = rows_file(size), {"rows": size}
    spec = load_spec(SPEC)

    def step(name, work):
        start = time.perf_counter()
        result = work()
        out[name] = round(time.perf_counter() - start, 2)
        out[f"{name} peak MiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return result

    manifest = step("read", lambda: assign_patient_splits(read_manifest(path, "nih"), seed=0))
    train, test = manifest.split("train"), manifest.split("test")
    coverage = step("coverage", lambda: analyse_coverage(train, spec, SPEC, {}))
    plan = step("plan", lambda: plan_edits(train, spec, coverage, seed=0))
    out["planned edits"] = len(plan.edits)
    weights = step("bootstrap weights", lambda: patient_weights(test.frame["patient_id"].to_numpy(), replicates, 0))
    out["test images"], out["weights GiB"] = len(test), round(weights.nbytes / 2**30, 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # measure one size in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.replicates)))
        return 0
    if not NIH.exists():
        print(f"skipped: {NIH} not found")
        return 0
    results = []
    for size in args.sizes:
        rows_file(size)
        done = subprocess.run([sys.executable, __file__, "--one", str(size), "--replicates", str(args.replicates)],
                              check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    steps = ("read", "coverage", "plan", "bootstrap weights")
    print(f"{'rows':>9} " + " ".join(f"{s + ' s':>19} {'peak MiB':>9}" for s in steps) + f" {'edits':>6} {'weights GiB':>11}")
    for r in results:
        print(f"{r['rows']:>9,} " + " ".join(f"{r[s]:>19} {r[s + ' peak MiB']:>9}" for s in steps)
              + f" {r['planned edits']:>6} {r['weights GiB']:>11}")
    for before, after in zip(results, results[1:]):
        factor = after["rows"] / before["rows"]
        growth = {s: round((after[s] / before[s]) / factor, 2) if before[s] else None for s in steps}
        print(f"growth {before['rows']:,} -> {after['rows']:,} (time per row, 1.0 = linear): {growth}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
