"""CARS on real chest X-rays, from one command: `docs/real_edits.md` and its pictures.

    python benchmarks/bench_real_edits.py --out /tmp/real --doc docs/real_edits.md --steps 400

On `../shared/data/nih621` (621 NIH ChestX-ray14 frontal studies, one per patient), at 128 px:
1. the images resized once into OUT/data (the dataset root: the shared folder is never written), and lung masks
   for each from the shipped segmenter (`cxr-audit segment`; its held-out Dice on covid_lungs is in its card);
2. a plan for the congestive-heart-failure cell (Cardiomegaly + Effusion), the generator the CPU affords
   (the native inpainting generator, `--steps` of training: 400 is about 12 minutes on 2 cores), the run's own QC checker, the CARS edits and
   the unconstrained ablation with equal budgets, and the realism stage (discriminator, Fréchet distance, KID);
3. the LoRA path on a tiny random Stable-Diffusion-layout pipeline built here (64 px), to show that
   `train-generator --base` trains, saves, loads and edits on real images (its pictures are noise: the base
   is random);
4. the tables (checker grading, QC, equal budgets, anatomy, realism, throughput) and a picture of accepted
   edits, written into `--doc`.

Every number comes from the run folders under OUT; rerunning reuses finished stages.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr_audit.rundir import RunDir
from cxr_audit.stages.pipeline import open_run, run_stages, stages_for

REPO = Path(__file__).resolve().parents[1]
SIZE = 128
SPEC = """version: 1
concepts: [Atelectasis, Cardiomegaly, Effusion, Infiltration, Mass, Nodule, Pneumonia, Pneumothorax,
           Consolidation, Edema, Emphysema, Fibrosis, Pleural_Thickening, Hernia]
cells:
  - {id: NIH-COV-001, all_of: [Cardiomegaly, Effusion], min_count: 500}
synthesis: {budget_per_cell: 40}
"""


def prepare_data(source: Path, out: Path) -> Path:
    """The NIH images at SIZE px under OUT/data with their labels, and lung masks beside them."""
    from cxr_audit.anatomy.segmenter import LungSegmenter, write_masks
    from cxr_audit.data.readers import read_manifest

    labels = out / "labels.csv"
    if not labels.exists():
        out.mkdir(parents=True, exist_ok=True)
        frame = pd.read_csv(source / "labels.csv")
        for name in frame["Image Index"]:
            image = Image.open(source / "images" / name).convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            image.save(out / name)
        frame.to_csv(labels, index=False)
    if not (out / "masks").exists():
        write_masks(LungSegmenter(), read_manifest(labels, "nih", root=out), out, size=SIZE, progress=False)
    return labels


def run_native(labels: Path, out: Path, spec: Path, steps: int) -> RunDir:
    """Plan, native generator, checker, CARS and unconstrained edits, realism."""
    run = RunDir(out)
    # The run's checker trains on 435 images and is graded on about 60: it can grade almost no NIH finding, so
    # its edits are kept as ungradable (recorded) and judged by the other checks, as the page says.
    given = {"data": str(labels), "format": "nih", "root": str(labels.parent), "spec": str(spec), "seed": 0,
             "arms": ["baseline", "cars", "unconstrained"], "accept_ungradable": True,
             "generator_training": {"size": SIZE, "channels": [16, 32, 64, 64], "batch_size": 16, "lr": 5e-4,
                                    "steps": steps}}
    ctx = open_run(run, given, False, progress=True)
    run_stages(ctx, stages_for(ctx, ["realism"]), False)
    return run


def run_lora(labels: Path, out: Path, spec: Path, base: Path, steps: int) -> RunDir:
    """LoRA adapters for a tiny random pipeline, then its CARS edits and their realism."""
    run = RunDir(out)
    given = {"data": str(labels), "format": "nih", "root": str(labels.parent), "spec": str(spec), "seed": 0,
             "arms": ["baseline", "cars"], "accept_ungradable": True,
             "generator_training": {"base": str(base), "steps": steps, "batch_size": 4, "lr": 1e-4, "lora_rank": 4}}
    ctx = open_run(run, given, False, progress=True)
    run_stages(ctx, stages_for(ctx, ["realism"]), False)
    return run


def tiny_base(folder: Path) -> Path:
    if not (folder / "model_index.json").exists():
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_diffusers import build_tiny_pipeline

        build_tiny_pipeline(folder)
    return folder


def picture(run: RunDir, path: Path, count: int = 8) -> None:
    """Accepted CARS edits: source, region, edit, signed difference; one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_audit.stages.synthesize import read_records

    layout = run.synthesis("cars")
    records = [r for r in read_records(layout) if r.qc.passed][:count]
    if not records:
        return
    fig, axes = plt.subplots(len(records), 4, figsize=(6.4, 1.65 * len(records)), squeeze=False)
    for row, record in zip(axes, records):
        source = np.asarray(Image.open(layout.source(record.edit_id)), np.float32) / 255
        edit = np.asarray(Image.open(layout.image(record.edit_id)), np.float32) / 255
        region = np.asarray(Image.open(layout.mask(record.edit_id)), np.float32) / 255
        panels = [(source, "gray", 0, 1), (region, "gray", 0, 1), (edit, "gray", 0, 1), (edit - source, "coolwarm", -0.3, 0.3)]
        for axis, (image, cmap, low, high) in zip(row, panels):
            axis.imshow(image, cmap=cmap, vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
        row[0].set_ylabel(", ".join(o.label.replace("insert ", "+") for o in record.operations), fontsize=6)
    for axis, title in zip(axes[0], ("source", "region", "edit", "edit - source")):
        axis.set_title(title, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _ci(interval: dict | None, digits: int = 3) -> str:
    if not interval or interval.get("value") is None:
        return "not measured"
    ci = interval.get("ci")
    text = f"{interval['value']:.{digits}f}"
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci and ci[0] is not None else "")


def tables(native: RunDir, lora: RunDir) -> dict:
    """Every number the document shows, from the two runs' files."""
    from cxr_audit.synthesis.generator.store import GENERATOR_CARD
    from cxr_audit.synthesis.lora_store import LORA_CARD

    def summary(run: RunDir, mode: str) -> dict:
        return json.loads(run.synthesis(mode).summary.read_text())

    def stage_seconds(run: RunDir, name: str) -> float | None:
        path = run.stages / f"{name}.json"
        return json.loads(path.read_text()).get("seconds") if path.exists() else None

    card = json.loads((native.generator / GENERATOR_CARD).read_text())
    seconds = stage_seconds(native, "generator")
    realism = {name: json.loads(run.path.joinpath("realism", "realism.json").read_text())
               for name, run in (("native", native), ("lora", lora)) if run.path.joinpath("realism", "realism.json").exists()}
    return {"generator": card, "generator_seconds": seconds,
            "images_per_second": card["steps"] * card["batch_size"] / seconds if seconds else None,
            "lora": json.loads((lora.generator / LORA_CARD).read_text()), "lora_seconds": stage_seconds(lora, "generator"),
            "cars": summary(native, "cars"), "unconstrained": summary(native, "unconstrained"),
            "lora_cars": summary(lora, "cars"), "realism": realism,
            "plan": json.loads(native.plan.read_text())["cells"],
            "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_cores": __import__("os").cpu_count(), "python": platform.python_version()}}


def document(numbers: dict, picture_path: str) -> str:
    cars, unconstrained, lora_cars = numbers["cars"], numbers["unconstrained"], numbers["lora_cars"]
    generator = numbers["generator"]
    grading = cars.get("checker_grading") or {}
    gradable = sum(bool(g.get("gradable")) for g in grading.values())
    validation = max((g.get("positives", 0) + g.get("negatives", 0) for g in grading.values()), default=0)
    lines = [
        "# CARS edits on real chest X-rays (NIH ChestX-ray14)",
        "",
        "Made by one command on 2 CPU cores: `python benchmarks/bench_real_edits.py --out /tmp/real "
        "--doc docs/real_edits.md` (400 generator training steps). The images are the 621 frontal "
        "NIH ChestX-ray14 studies of `../shared/data/nih621` (NIH Clinical Center; Wang et al., \"ChestX-ray8\", "
        "CVPR 2017), resized to 128 px; lung masks from the shipped segmenter (trained on the 90 hand-drawn masks "
        "of `covid_lungs`, held-out Dice 0.963).",
        "",
        "**What a CPU affords is a weak generator, and the tool says so.** The numbers below are the tool's "
        f"measurements of it and of its QC: a checker that can grade {gradable} of {len(grading)} NIH findings "
        f"on the {validation} validation images (so the edits are kept as *ungradable*, `--accept-ungradable`, "
        "recorded, and judged by the other checks), the anatomy read by the lung segmenter, and a discriminator "
        "that tries to tell the accepted edits from real images. A masked edit is mostly its real source: a "
        "discriminator AUROC near 0.5 says the edited region blends in, not that the finding is well drawn (QC's "
        "texture and heart-size rejections speak to that). The point of this page is that each of these is "
        "measured, with its interval, on real images.",
        "",
        f"![Accepted CARS edits]({picture_path})",
        "",
        "Each row: the source (a training image), the edit region (from the segmented lungs), the edit, and the "
        "signed difference (red brighter, blue darker). Outside the region the edit is the source, pixel for pixel.",
        "",
        "## Generator",
        "",
        "| | native (inpainting UNet2DModel) | LoRA on a tiny random Stable-Diffusion-layout pipeline |",
        "| --- | --- | --- |",
        f"| training | {generator['steps']:,} steps of {generator['batch_size']} images at {generator['image_size']} px, "
        f"{numbers['generator_seconds'] or 0:.0f} s ({numbers['images_per_second'] or 0:.1f} images/s) | "
        f"{numbers['lora']['steps']} steps of {numbers['lora']['batch_size']} at {numbers['lora']['image_size']} px, "
        f"rank {numbers['lora']['rank']}, {numbers['lora_seconds'] or 0:.0f} s |",
        f"| denoising loss | | {numbers['lora']['eval_loss_before']:.4f} -> {numbers['lora']['eval_loss_after']:.4f} "
        "(a fixed set of training images, noise and timesteps) |",
        f"| training images | {generator['training_images']} (patient-level split; the test split is never a source) | "
        f"{numbers['lora']['training_images']} |",
        "",
        "## The checker, fit to grade (validation split)",
        "",
        "| concept | AUROC [95% CI] | positives / negatives | grades edits |",
        "| --- | --- | --- | --- |",
    ]
    for concept, grade in (cars.get("checker_grading") or {}).items():
        lines.append(f"| {concept} | {_ci(grade.get('auroc'))} | {grade.get('positives')} / {grade.get('negatives')} | "
                     f"{'yes' if grade.get('gradable') else 'no: ' + str(grade.get('reason', ''))} |")
    lines += ["", "## Quality control and equal budgets", "",
              "| arm | edits made | accepted | per cell: accepted / planned (attempts) | rejected by reason |",
              "| --- | --- | --- | --- | --- |"]
    for name, summary in (("CARS (masked)", cars), ("unconstrained ablation", unconstrained),
                          ("CARS, LoRA on the tiny pipeline", lora_cars)):
        budgets = "; ".join(f"{cell}: {b['accepted']} / {b['target']} ({b['attempts']})"
                            for cell, b in summary.get("budgets", {}).items())
        reasons = "; ".join(f"{reason}: {count}" for reason, count in summary["rejected_by_reason"].items()) or "none"
        lines.append(f"| {name} | {summary['planned']} | {summary['accepted']} | {budgets} | {reasons} |")
    lines += ["", "## Anatomy (the lung segmenter on source and edit)", "",
              "| arm | edit | edits | cardiothoracic ratio change, mean [min, max] | heart size as required | lungs outside the region (Dice) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, summary in (("CARS", cars), ("unconstrained", unconstrained)):
        anatomy = summary.get("anatomy") or {}
        dice = anatomy.get("lung_dice_outside", {})
        for label, change in anatomy.get("ctr_change", {}).items():
            lines.append(f"| {name} | {label} | {change['n']} | {change['mean']:+.3f} [{change['min']:+.3f}, "
                         f"{change['max']:+.3f}] | {change['passed']} of {change['n']} | mean {dice.get('mean', 0):.3f}, "
                         f"min {dice.get('min', 0):.3f} |")
    lines += ["", "## Realism (accepted edits against real training images)", "",
              "| generator | set | edits | discriminator AUROC [95% CI] (0.5: indistinguishable) | Fréchet distance [CI] | "
              "real-vs-real reference | KID |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for generator_name, realism in numbers["realism"].items():
        for mode, entry in realism.get("modes", {}).items():
            discriminator, features = entry.get("discriminator") or {}, entry.get("features") or {}
            if entry.get("skipped"):
                lines.append(f"| {generator_name} | {mode} | {entry.get('n_synthetic')} | not measured: "
                             f"{entry['skipped']} | | | |")
                continue
            lines.append(f"| {generator_name} | {mode} | {entry.get('n_synthetic')} | {_ci(discriminator.get('auroc'))} | "
                         f"{_ci(features.get('frechet'), 1)} | {_ci(features.get('reference_frechet'), 1)} | "
                         f"{_ci(features.get('kernel'), 4)} |")
    small = [entry.get("n_synthetic") for realism in numbers["realism"].values()
             for entry in realism.get("modes", {}).values() if entry.get("discriminator")]
    if small and min(small) < 100:
        lines += ["", f"With {min(small)} accepted edits the discriminator has little to learn from, so its interval is "
                  "wide and a point near 0.5 is weak evidence of realism: the pictures above show seams and blotchy "
                  "texture inside the regions that a reader would see. A generator trained for longer (a GPU) and "
                  "more edits are what would make this table informative; the tool measures it either way."]
    lines += ["", f"Environment: torch {numbers['environment']['torch']}, {numbers['environment']['threads']} threads, "
              f"{numbers['environment']['cpu_cores']} CPU cores, Python {numbers['environment']['python']}; no GPU.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "nih621")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxr-audit-real-edits"),
                        help="work folder (reused: finished stages are skipped)")
    parser.add_argument("--steps", type=int, default=400, help="native generator training steps")
    parser.add_argument("--lora-steps", type=int, default=60)
    parser.add_argument("--doc", type=Path, help="write the page here (its picture beside it, in images/)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.monotonic()
    labels = prepare_data(args.data, args.out / "data")
    spec = args.out / "spec.yaml"
    spec.write_text(SPEC)
    native = run_native(labels, args.out / "native", spec, args.steps)
    lora = run_lora(labels, args.out / "lora", spec, tiny_base(args.out / "tiny-base"), args.lora_steps)
    numbers = tables(native, lora)
    (args.out / "real_edits.json").write_text(json.dumps(numbers, indent=1, default=str) + "\n")
    print(json.dumps({k: numbers[k] for k in ("images_per_second",)}, indent=1))
    if args.doc:
        image = args.doc.parent / "images" / "nih621_edits_128px.png"
        picture(native, image)
        args.doc.write_text(document(numbers, f"images/{image.name}"))
        print(f"wrote {args.doc} and {image}")
    print(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
