"""What a generator learns in a bounded training time: train one on the demo phantom's training split for
`--minutes` (the demo recipe), then insert Cardiomegaly and Pleural Effusion into normal test studies with
masked edits and count how many an independent checker (a classifier trained on real phantom images, not
the audited model) reads as positive. Also prints the change outside the edit region.

    python benchmarks/bench_generator_budget.py --minutes 6 --seed 0
    python benchmarks/bench_generator_budget.py --generator cxr_audit/demo_assets/generator   # no training
    python benchmarks/bench_generator_budget.py --generator GEN --figure docs/images/phantom_inserts.png

Needs the demo's phantom (`make demo` renders it into reports/.demo-inputs/phantom); prints numbers only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr_audit import concepts
from cxr_audit.anatomy.masks import dataset_anatomy
from cxr_audit.anatomy.regions import edit_mask
from cxr_audit.classifier.small_cnn import predict_probabilities, train_checker
from cxr_audit.data import phantom
from cxr_audit.data.phantom.dataset import study_of
from cxr_audit.data.readers import read_manifest
from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import RunDir
from cxr_audit.spec import load_spec
from cxr_audit.stages import demo
from cxr_audit.stages.runner import run_stage
from cxr_audit.synthesis.editor import EditSettings, edit
from cxr_audit.synthesis.generator.regions import RegionSampler
from cxr_audit.synthesis.generator.store import load_generator
from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

INSERTED = ("Cardiomegaly", "Pleural Effusion")


def train(labels: Path, out: Path, args: argparse.Namespace) -> None:
    names = concepts.findings(load_spec(demo.DEMO_SPEC).concepts)
    train_split = read_manifest(labels, "chexpert").split("train")
    images, targets = train_split.images(demo.DEMO_SIZE), train_split.frame[names].to_numpy(np.float32)
    regions = RegionSampler(dataset_anatomy(train_split, demo.DEMO_SIZE), names, focus=demo.DEMO_FOCUS,
                            p_one_side=args.p_one_side)
    config = TrainConfig(steps=100_000, lr=1e-3, max_minutes=args.minutes, seed=args.seed,
                         timestep_exponent=args.timestep_exponent, prediction_type=args.prediction_type)
    started = time.monotonic()
    card = train_generator(images, targets, names, out, config, sha256_file(labels), regions=regions, progress=False)
    print(f"trained: {card.steps} steps in {time.monotonic() - started:.0f} s ({torch.get_num_threads()} threads, "
          f"prediction {card.prediction_type}, timestep exponent {card.timestep_exponent}, "
          f"one-sided regions {args.p_one_side})")


def agreement(labels: Path, generators: list[Path], normals: int, guidances: list[float],
              figure: Path | None) -> None:
    manifest = read_manifest(labels, "chexpert")
    train_split = manifest.split("train")
    findings = list(phantom.PHANTOM_FINDINGS)
    # the audit's own QC checker recipe, trained on the real phantom images
    checker = train_checker(train_split.images(demo.DEMO_SIZE), train_split.frame[findings].to_numpy(np.float32))
    test = manifest.split("test").frame
    sources = test[test[findings].sum(axis=1) == 0].head(normals)
    for generator in generators:
        model, card = load_generator(generator)
        print(f"{generator}: {card.steps} steps, prediction {card.prediction_type}")
        shown = inserts(model, card, sources, checker, findings, guidances)
        if figure is not None and generator == generators[0]:
            save_figure(shown, figure, guidances[0])


def save_figure(shown: dict, path: Path, guidance: float, rows: int = 6) -> None:
    """Source | each insert beside the phantom's true counterfactual, for the first `rows` studies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("source", shown["source"])]
    for concept in INSERTED:
        columns += [(f"insert {concept}", shown[concept]["edited"]), ("true counterfactual", shown[concept]["truth"])]
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.6 * len(columns), 1.6 * rows))
    for col, (title, images) in enumerate(columns):
        for row in range(rows):
            axes[row, col].imshow(images[row], cmap="gray", vmin=0, vmax=1)
            axes[row, col].axis("off")
        axes[0, col].set_title(title, fontsize=7)
    fig.suptitle(f"Masked inserts into normal phantom test studies (guidance {guidance:g}, 30 DDIM steps)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def inserts(model, card, sources, checker, findings: list[str], guidances: list[float]) -> dict:
    """Prints the checker's agreement per concept and guidance; returns the first guidance's images to show."""
    rng = np.random.default_rng(0)  # the same sides for every generator
    shown: dict = {}
    for concept in INSERTED:
        images, targets, hard, soft, truths = [], [], [], [], []
        for _, row in sources.iterrows():
            study = study_of(row)
            rendered = phantom.render(study, demo.DEMO_SIZE)
            truths.append(phantom.render(phantom.counterfactual(study, add=concept), demo.DEMO_SIZE).image)
            # inserts edit one side of a one-sided finding, as synthesis does
            side = str(rng.choice(["right", "left"])) if concepts.get(concept).lateral else "both"
            anatomy = {name: rendered.masks[name] for name in ("lung_right", "lung_left", "heart", "mediastinum")}
            binary, feathered = edit_mask([concept], anatomy, side=side)
            target = row[card.concepts].to_numpy(np.float32).copy()
            target[card.concepts.index(concept)] = 1
            images.append(rendered.image), targets.append(target), hard.append(binary), soft.append(feathered)
        images, targets, hard, soft = map(np.stack, (images, targets, hard, soft))
        reads = predict_probabilities(checker, np.stack(truths)[:, None])[:, findings.index(concept)] > 0.5
        shown["source"] = images
        print(f"{concept:<17} the checker reads the phantom's true counterfactuals as positive: {reads.mean():.2f}")
        for guidance in guidances:
            edited = edit(model, images, targets, hard, soft, EditSettings(steps=30, strength=1.0, guidance=guidance),
                          seed=0)
            shown.setdefault(concept, {"edited": edited, "truth": np.stack(truths)})
            positive = predict_probabilities(checker, edited[:, None])[:, findings.index(concept)] > 0.5
            print(f"{concept:<17} guidance {guidance:g}: checker agrees on {positive.mean():.2f} of {len(images)} "
                  f"inserts; mean change outside the region {np.abs(edited - images)[~hard].mean():.2e}")
    return shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", default="v_prediction", choices=["v_prediction", "epsilon"])
    parser.add_argument("--timestep-exponent", type=float, default=0.5)
    parser.add_argument("--p-one-side", type=float, default=0.5)
    parser.add_argument("--generator", type=Path, nargs="+", help="evaluate these generators instead of training one")
    parser.add_argument("--normals", type=int, default=32)
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    parser.add_argument("--figure", type=Path, help="also save a PNG of the first generator's inserts here")
    parser.add_argument("--inputs", type=Path, default=Path("reports/generator-budget"),
                        help="Run folder for the phantom dataset (made once, reused).")
    args = parser.parse_args()
    stage = demo.PhantomStage(RunDir(args.inputs))
    run_stage(stage.rundir, stage)
    labels = stage.outputs()[0]
    with tempfile.TemporaryDirectory() as scratch:
        generators = args.generator
        if generators is None:
            generators = [Path(scratch) / "generator"]
            train(labels, generators[0], args)
        agreement(labels, generators, args.normals, args.guidance, args.figure)


if __name__ == "__main__":
    main()
