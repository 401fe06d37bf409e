"""Coverage analysis at real scale: NIH ChestX-ray14's 112,120 label rows with coverage_specs/nih.yaml.

Target (issue: foundation): the whole analysis (read, count 103 cells, write coverage.json and plots) in
under 60 s on 2 CPU cores. Prints the time of each step.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from cxr_audit.coverage import analyse_coverage
from cxr_audit.data.readers import read_manifest
from cxr_audit.provenance import atomic_write_json, sha256_file
from cxr_audit.report import figures
from cxr_audit.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "nih_data_entry_2017.csv.gz"
SPEC = REPO / "coverage_specs" / "nih.yaml"


def main() -> int:
    if not DATA.exists():
        print(f"skipped: {DATA} not found")
        return 0
    timings = {}
    start = time.perf_counter()
    spec = load_spec(SPEC)
    manifest = read_manifest(DATA, "nih")
    timings["read labels"] = time.perf_counter() - start
    t = time.perf_counter()
    report = analyse_coverage(manifest, spec, SPEC, {"spec": sha256_file(SPEC), "data": sha256_file(DATA)})
    timings[f"count {len(report.cells)} cells"] = time.perf_counter() - t
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        figures.save_png(figures.cooccurrence_figure(report.cooccurrence, report.dataset.n_images),
                         Path(out) / "cooccurrence.png")
        figures.save_png(figures.coverage_figure(report.cells), Path(out) / "cells.png")
        atomic_write_json(Path(out) / "coverage.json", report.model_dump(mode="json"))
    timings["plots + json"] = time.perf_counter() - t
    total = time.perf_counter() - start
    for step, seconds in timings.items():
        print(f"{step:>22}: {seconds:6.2f} s")
    print(f"{'total':>22}: {total:6.2f} s for {len(manifest):,} images (target < 60 s)")
    print(f"{'peak RSS':>22}: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:6.0f} MiB")
    return 0 if total < 60 else 1


if __name__ == "__main__":
    sys.exit(main())
