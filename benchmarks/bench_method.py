"""The method validation study: the demo scenario (cxr_audit/demo.py: silhouette-sign interaction, ICU-film
confounding, subtle findings) audited over several seeds, each seed drawing its own phantom data, deployed model
and synthesis. Prints, per target cell and arm, AUPRC, ECE and mean predictive entropy; the paired differences
of CARS against every control (real-only, unconstrained, null edits, the deployed model) per seed and pooled
over seeds; the deployed model's context gaps; and the probe's harmful side effects.

    python benchmarks/bench_method.py --seeds 0 1 2 3 4 --out /tmp/method   # about 15 min a seed on 2 cores
    python benchmarks/bench_method.py --out /tmp/method --json docs/method_validation.json \\
        --figure docs/images/method_validation.png                          # reuses finished seeds

Every seed uses the shipped demo generator (trained on seed 0's training split only; other seeds' phantoms are
new patients, so no seed's test images were seen by it). Pooled intervals average the per-seed bootstrap
replicates of each paired difference (independent seeds, so replicate r of the mean is the mean of replicate r).
Never tune a setting to a seed: report what comes out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cxr_audit.audit.document import load_audit
from cxr_audit.audit.findings import CONTROLS
from cxr_audit.evaluation.scoring import load_replicates
from cxr_audit.rundir import RunDir
from cxr_audit.stages.config import ARMS
from cxr_audit.stages.demo import DEMO_TARGET_CELLS, SHIPPED_GENERATOR, demo_context
from cxr_audit.stages.pipeline import run_audit

METRICS = ("auprc", "ece", "entropy")


def run_seed(out: Path, seed: int, images: int) -> Path:
    started = time.monotonic()
    ctx = demo_context(out, images=images, progress=False, log=lambda message: None, check_generator=False,
                       seed=seed, generator=str(SHIPPED_GENERATOR))
    run_audit(ctx, report=False)
    print(f"seed {seed}: audited in {time.monotonic() - started:.0f} s ({out})", flush=True)
    return out


def _ci(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return None if values.size < 100 else [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def collect(runs: dict[int, Path]) -> dict:
    """Everything the tables print, as one JSON-able dict."""
    result: dict = {"seeds": sorted(runs), "cells": {}, "gaps": {}, "probe": {}}
    replicates = {seed: {arm: load_replicates(RunDir(path).evaluation(arm).replicates) for arm in ARMS}
                  for seed, path in runs.items()}
    audits = {seed: load_audit(RunDir(path).audit) for seed, path in runs.items()}
    for cell in DEMO_TARGET_CELLS:
        target = f"cell:{cell}"
        entry: dict = {"arms": {}, "cars_minus": {}}
        for arm in replicates[min(runs)]:
            entry["arms"][arm] = {metric: [replicates[s][arm][target][metric][0] for s in sorted(runs)]
                                  for metric in METRICS}
        for control in CONTROLS:
            per_metric = {}
            for metric in METRICS:
                points, reps = [], []
                for seed in sorted(runs):
                    new, old = replicates[seed]["cars"][target][metric], replicates[seed][control][target][metric]
                    points.append(new[0] - old[0])
                    reps.append(new[1] - old[1])
                per_seed = [{"difference": p, "ci": _ci(r)} for p, r in zip(points, reps)]
                per_metric[metric] = {"per_seed": per_seed, "pooled": float(np.mean(points)),
                                      "pooled_ci": _ci(np.mean(reps, axis=0))}
            entry["cars_minus"][control] = per_metric
        result["cells"][cell] = entry
    for cell in DEMO_TARGET_CELLS:
        keys = sorted({k for s in runs for k in replicates[s]["baseline"] if k.startswith(f"gap:{cell}:")})
        for key in keys:
            finding = key.split(":", 2)[2]
            result["gaps"][f"{cell} {finding}"] = {}
            for arm in replicates[min(runs)]:
                present = [s for s in sorted(runs) if key in replicates[s][arm]]
                if not present:
                    continue
                reps = [replicates[s][arm][key]["auroc_gap"] for s in present]
                result["gaps"][f"{cell} {finding}"][arm] = {
                    "per_seed": [{"gap": r[0], "ci": _ci(r[1])} for r in reps],
                    "pooled": float(np.mean([r[0] for r in reps])),
                    "pooled_ci": _ci(np.mean([r[1] for r in reps], axis=0)),
                    "context": audits[present[0]].metrics(arm).context_gaps[cell][finding].context}
    for seed, audit in audits.items():
        result["probe"][seed] = {key: {"share_harmful": e.share_harmful.value, "share_ci": e.share_harmful.ci,
                                       "mean_harm": e.mean_harm.value, "pairs": e.pairs, "harmful": e.harmful}
                                 for key, e in audit.probe.side_effects.items()}
        result.setdefault("synthesis", {})[seed] = {
            mode: {"edits_made": s.planned, "accepted": s.accepted,
                   "by_cell": {cell: f"{b['accepted']}/{b['target']} ({b['attempts']} attempts)"
                               for cell, b in s.budgets.items()}}
            for mode, s in audit.synthesis.items()}
    result["environment"] = environment()
    return result


def environment() -> dict:
    """What the study was made with: the commit (and whether the tree had changes), threads, packages, CPU."""
    import platform
    import subprocess

    import torch

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"commit": git("rev-parse", "HEAD"), "tree_clean": git("status", "--porcelain", "--untracked-files=no") == "",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "numpy": np.__version__,
            "python": platform.python_version(), "cpu": cpu, "cores": __import__("os").cpu_count()}


def _fmt(value, ci=None) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    text = f"{value:+.3f}"
    return text + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else " [n/e]")


def print_tables(result: dict) -> None:
    seeds = result["seeds"]
    print(f"\nseeds: {seeds}")
    for cell, entry in result["cells"].items():
        print(f"\n== {cell}: per arm, one value per seed")
        print(f"{'arm':<14}" + "".join(f"{m:>26}" for m in METRICS))
        for arm, metrics in entry["arms"].items():
            print(f"{arm:<14}" + "".join(f"{' '.join(f'{v:.3f}' for v in metrics[m]):>26}" for m in METRICS))
        print("-- CARS minus control: pooled over seeds [95% CI]; per seed")
        for control, metrics in entry["cars_minus"].items():
            for metric in METRICS:
                m = metrics[metric]
                seeds_text = "; ".join(_fmt(s["difference"], s["ci"]) for s in m["per_seed"])
                print(f"  vs {control:<13} {metric:<8} pooled {_fmt(m['pooled'], m['pooled_ci'])}   per seed {seeds_text}")
    print("\n== context gaps (AUROC, cell context minus covered): pooled [95% CI]")
    for key, by_arm in result["gaps"].items():
        context = next(iter(by_arm.values()))["context"]
        print(f"  {key} ({context})")
        for arm, g in by_arm.items():
            print(f"    {arm:<14} pooled {_fmt(g['pooled'], g['pooled_ci'])}   per seed "
                  + "; ".join(_fmt(s["gap"], s["ci"]) for s in g["per_seed"]))
    print("\n== accepted edits per cell: accepted / the plan's count (attempts), per seed and arm")
    for seed, modes in result.get("synthesis", {}).items():
        for mode, entry in modes.items():
            cells = "; ".join(f"{cell.replace('PHANTOM-', '')} {text}" for cell, text in entry["by_cell"].items())
            print(f"  seed {seed} {mode:<14} {entry['accepted']} of {entry['edits_made']} made: {cells}")
    print("\n== probe: side effects flagged harmful (share of pairs moving the wrong way)")
    for seed, effects in result["probe"].items():
        flagged = [f"{k}: {e['share_harmful']:.2f} of {e['pairs']}" for k, e in effects.items() if e["harmful"]]
        print(f"  seed {seed}: " + ("; ".join(flagged) or "none"))


def markdown(result: dict) -> str:
    """The study's tables in Markdown (docs/method_validation.md pastes them)."""
    seeds = result["seeds"]
    lines = ["| cell | arm | AUPRC per seed | ECE per seed | entropy per seed |", "| --- | --- | --- | --- | --- |"]
    for cell, entry in result["cells"].items():
        for arm, metrics in entry["arms"].items():
            lines.append(f"| {cell} | {arm} | " + " | ".join(" / ".join(f"{v:.3f}" for v in metrics[m]) for m in METRICS)
                         + " |")
    lines += ["", "| cell | CARS minus | Δ AUPRC pooled [95% CI] | per seed | Δ ECE pooled | Δ entropy pooled |",
              "| --- | --- | --- | --- | --- | --- |"]
    for cell, entry in result["cells"].items():
        for control, metrics in entry["cars_minus"].items():
            auprc = metrics["auprc"]
            lines.append(f"| {cell} | {control} | {_fmt(auprc['pooled'], auprc['pooled_ci'])} | "
                         + " / ".join(f"{s['difference']:+.3f}" for s in auprc["per_seed"]) + " | "
                         + " | ".join(_fmt(metrics[m]["pooled"], metrics[m]["pooled_ci"]) for m in ("ece", "entropy"))
                         + " |")
    lines += ["", "| context (cell) | arm | AUROC gap pooled [95% CI] | per seed |", "| --- | --- | --- | --- |"]
    for key, by_arm in result["gaps"].items():
        cell, finding = key.split(" ", 1)
        for arm, gap in by_arm.items():
            lines.append(f"| {finding} {gap['context']} ({cell}) | {arm} | {_fmt(gap['pooled'], gap['pooled_ci'])} | "
                         + " / ".join(f"{s['gap']:+.3f}" for s in gap["per_seed"]) + " |")
    lines += ["", "| seed | arm | edits made | accepted | per cell: accepted / planned (attempts) |",
              "| --- | --- | --- | --- | --- |"]
    for seed, modes in result.get("synthesis", {}).items():
        for mode, entry in modes.items():
            cells = "; ".join(f"{cell.replace('PHANTOM-', '')} {text}" for cell, text in entry["by_cell"].items())
            lines.append(f"| {seed} | {mode} | {entry['edits_made']} | {entry['accepted']} | {cells} |")
    lines += ["", "| seed | harmful side effects flagged by the probe |", "| --- | --- |"]
    for seed, effects in result["probe"].items():
        flagged = [f"{k}: {e['share_harmful']:.2f} of {e['pairs']}" for k, e in effects.items() if e["harmful"]]
        lines.append(f"| {seed} | {'; '.join(flagged) or 'none'} |")
    environment = result.get("environment", {})
    lines += ["", f"Seeds {', '.join(map(str, seeds))}; commit `{environment.get('commit', '?')}`"
              f"{'' if environment.get('tree_clean', True) else ' (with uncommitted changes)'}; torch "
              f"{environment.get('torch')}, {environment.get('threads')} threads, {environment.get('cores')} cores "
              f"({environment.get('cpu')}), Python {environment.get('python')}, numpy {environment.get('numpy')}."]
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_audit.report.figures import ARM_COLOURS, ARM_LABELS

    cells = list(result["cells"])
    fig, axes = plt.subplots(1, len(cells), figsize=(4.2 * len(cells), 3.6), squeeze=False)
    for axis, cell in zip(axes[0], cells):
        arms = result["cells"][cell]["arms"]
        for k, (arm, metrics) in enumerate(arms.items()):
            values = metrics["auprc"]
            axis.scatter([k] * len(values), values, color=ARM_COLOURS.get(arm, "k"), s=22)
            axis.hlines(np.mean(values), k - 0.3, k + 0.3, color=ARM_COLOURS.get(arm, "k"))
        axis.set_xticks(range(len(arms)), [ARM_LABELS.get(a, a) for a in arms], rotation=35, ha="right", fontsize=7)
        axis.set_title(f"{cell}: cell AUPRC per seed", fontsize=9)
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=1600)
    parser.add_argument("--out", type=Path, required=True, help="folder for one demo run per seed (reused)")
    parser.add_argument("--json", type=Path, help="write the tables' numbers here")
    parser.add_argument("--figure", type=Path, help="write the per-seed AUPRC figure here")
    parser.add_argument("--markdown", type=Path, help="write the tables in Markdown here")
    args = parser.parse_args()
    runs = {seed: run_seed(args.out / f"seed{seed}", seed, args.images) for seed in args.seeds}
    result = collect(runs)
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.figure:
        figure(result, args.figure)
    if args.markdown:
        args.markdown.write_text(markdown(result))


if __name__ == "__main__":
    main()
