"""Budget-matched ablation of the method study: does CARS lose to unconstrained regeneration only because the
unconstrained arm trains on more accepted images?

For each seed the method study (bench_method.py) finished, the unconstrained arm's accepted images are
subsampled, per target cell, to the number of CARS edits QC accepted for that cell; a copy of the deployed
model is fine-tuned on real + that subsample with the same settings and seed, and scored on the same test
images with the same patient bootstrap, so its replicates pair with every other arm's. Printed: per target
cell, cell AUPRC of CARS minus the budget-matched arm, of the matched arm minus the full unconstrained arm
(what the extra images bought), pooled over seeds.

    python benchmarks/bench_method.py --seeds 0 1 2 --out /tmp/method    # first
    python benchmarks/bench_budget_matched.py --out /tmp/method [--json docs/method_budget_matched.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit.evaluation.scoring import load_replicates
from cxr_audit.rundir import RunDir
from cxr_audit.stages.demo import DEMO_TARGET_CELLS, SHIPPED_GENERATOR, demo_context

MATCHED = "unconstrained_matched"


def matched_rows(run: RunDir, seed: int) -> np.ndarray:
    """Row indices of the unconstrained manifest: per cell, as many as CARS had accepted (seeded draw)."""
    cars = pd.read_csv(run.synthesis("cars").manifest)
    unconstrained = pd.read_csv(run.synthesis("unconstrained").manifest)
    rng = np.random.default_rng(seed)
    picked = []
    for cell, group in unconstrained.groupby("cell_id"):
        wanted = int((cars["cell_id"] == cell).sum())
        picked += sorted(rng.choice(group.index.to_numpy(), size=min(wanted, len(group)), replace=False).tolist())
    return np.array(sorted(picked), dtype=int)


def run_matched_arm(out: Path, seed: int) -> dict:
    from cxr_audit.classifier.finetune import TrainingImages
    from cxr_audit.stages.evaluate import EvaluateStage
    from cxr_audit.stages.finetune import FinetuneStage, finetune_into, read_synthetic_training_images

    ctx = demo_context(out, progress=False, log=lambda message: None, check_generator=False, seed=seed,
                       generator=str(SHIPPED_GENERATOR))
    run = ctx.run
    if not run.evaluation(MATCHED).replicates.exists():
        model = ctx.model
        outputs, size = model.concepts, model.card.input_size
        rows = matched_rows(run, seed)
        synthetic = read_synthetic_training_images(run.synthesis("unconstrained"), outputs, size)
        subsample = TrainingImages(synthetic.images.take(rows), synthetic.labels[rows], synthetic.synthetic[rows])
        train = TrainingImages.concatenate([TrainingImages.real(ctx.images("train", size),
                                                                ctx.labels("train", outputs)), subsample])
        validation = TrainingImages.real(ctx.images("val", size), ctx.labels("val", outputs))
        inputs = {**FinetuneStage(ctx, "unconstrained").inputs(), "rows": ",".join(map(str, rows))}
        finetune_into(run.finetune(MATCHED), model, train, validation, ctx.config.finetune_config, MATCHED,
                      {k: str(v) for k, v in inputs.items()}, progress=False)
        EvaluateStage(ctx, MATCHED).run()
    accepted = {mode: len(pd.read_csv(run.synthesis(mode).manifest)) for mode in ("cars", "unconstrained")}
    return {"accepted": {**accepted, MATCHED: len(matched_rows(run, seed))},
            "replicates": {arm: load_replicates(run.evaluation(arm).replicates)
                           for arm in ("cars", "unconstrained", MATCHED, "real_only")}}


def _ci(values: np.ndarray) -> list[float]:
    values = values[np.isfinite(values)]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))]


def compare(results: dict[int, dict]) -> dict:
    table = {}
    pairs = (("cars", MATCHED), (MATCHED, "unconstrained"), (MATCHED, "real_only"), ("cars", "unconstrained"))
    for cell in DEMO_TARGET_CELLS:
        target = f"cell:{cell}"
        for new, old in pairs:
            points, reps = [], []
            for seed in sorted(results):
                replicates = results[seed]["replicates"]
                a, b = replicates[new][target]["auprc"], replicates[old][target]["auprc"]
                points.append(a[0] - b[0])
                reps.append(a[1] - b[1])
            table[f"{cell}: {new} minus {old}"] = {"per_seed": points, "pooled": float(np.mean(points)),
                                                   "pooled_ci": _ci(np.mean(reps, axis=0))}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="The method study's folder (seed<N>/ inside).")
    parser.add_argument("--json", type=Path, help="Write the comparison here.")
    args = parser.parse_args()
    seeds = sorted(int(p.name.removeprefix("seed")) for p in args.out.glob("seed*") if (p / "audit.json").exists())
    if not seeds:
        raise SystemExit(f"{args.out} holds no finished seed of bench_method.py; run it first.")
    results = {seed: run_matched_arm(args.out / f"seed{seed}", seed) for seed in seeds}
    for seed in seeds:
        print(f"seed {seed}: accepted images {results[seed]['accepted']}")
    table = compare(results)
    print("\ncell AUPRC differences, pooled over seeds [95% CI]; per seed")
    for key, row in table.items():
        per_seed = " ".join(f"{v:+.3f}" for v in row["per_seed"])
        print(f"  {key:<60} {row['pooled']:+.3f} [{row['pooled_ci'][0]:+.3f}, {row['pooled_ci'][1]:+.3f}]   "
              f"{per_seed}")
    if args.json:
        args.json.write_text(json.dumps({"seeds": seeds, "accepted": {s: results[s]["accepted"] for s in seeds},
                                         "differences": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
