"""`cxr-audit plan`, `train-generator` and `synthesize`: the CARS synthesis, stage by stage."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import AllowDuplicatesOption, DataOption, LabelsOption, ForceOption, FormatOption, OutOption
from cxr_audit.cli.app import RootOption, RunOption, SeedOption, SpecOption, command, console, dataset
from cxr_audit.cli.app import AcceptUngradableOption, open_run
from cxr_audit.errors import UserInputError


@command("plan")
def plan_command(
    out: OutOption,
    data: DataOption = None,
    spec: SpecOption = None,
    data_format: FormatOption = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    labels: LabelsOption = None,
    seed: SeedOption = None,
    force: ForceOption = False,
) -> None:
    """Plan CARS edits: for each under-covered cell of the training split, sources one edit away."""
    from cxr_audit.stages.pipeline import run_stages, stages_for
    from cxr_audit.stages.plan import read_plan

    ctx = open_run(out, {**dataset(data, data_format, root, allow_duplicates, labels), "spec": spec, "seed": seed}, force)
    run_stages(ctx, stages_for(ctx, ["plan"]), force)
    plan = read_plan(ctx)
    table = Table(title=f"Edit plan: {len(plan.edits)} edits from {len(ctx.frontal('train')):,} training images",
                  title_justify="left")
    for header in ("cell", "deficit", "budget", "1-edit sources", "2-edit sources", "planned", "status"):
        table.add_column(header, justify="left" if header in ("cell", "status") else "right")
    for cell in plan.cells:
        table.add_row(escape(cell.cell_id), str(cell.deficit), str(cell.budget), str(cell.candidates_one_edit),
                      str(cell.candidates_two_edits), str(cell.planned), escape(f"{cell.status}: {cell.reason}"))
    console.print(table)
    for rejection in plan.rejections:
        console.print(f"rejected: {rejection.cell_id}: {rejection.sources_rejected} sources, {rejection.reason}",
                      markup=False)
    console.print(f"Wrote {ctx.run.plan}", markup=False)


class PredictionType(str, Enum):
    v = "v_prediction"
    epsilon = "epsilon"


@command("train-generator")
def train_generator_command(
    out: OutOption,
    data: DataOption = None,
    data_format: FormatOption = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    labels: LabelsOption = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Coverage spec: the concepts to condition on.")] = None,
    size: Annotated[int | None, typer.Option("--size", help="Image size the generator works at (default 64).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Training steps (default 1500).")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Stop (and save) after this long.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Images per step and process (default 16).")] = None,
    channels: Annotated[str | None, typer.Option("--channels", help="UNet widths per level, e.g. 16,32,32 (CPU, the "
                                                 "default) or 64,128,256,256 (GPU).")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Learning rate (default 1e-3).")] = None,
    timestep_exponent: Annotated[float | None, typer.Option(
        "--timestep-exponent", help="Timesteps drawn as T*u^x: 1 is uniform, 0.5 (default) favours the noisy steps "
                                    "where findings take shape.")] = None,
    prediction_type: Annotated[PredictionType | None, typer.Option(
        "--prediction-type", help="What the UNet learns to predict: v (default; learns faster on a small budget) "
                                  "or the noise (epsilon).")] = None,
    base: Annotated[Path | None, typer.Option("--base", help="A local diffusers text-to-image pipeline (e.g. "
                                              "RoentGen) to fine-tune with LoRA instead of training the native "
                                              "generator; the images are read at its size.")] = None,
    lora_rank: Annotated[int | None, typer.Option("--lora-rank", help="Rank of the LoRA adapters (with --base; "
                                                  "default 8).")] = None,
    seed: SeedOption = None,
    force: ForceOption = False,
) -> None:
    """Train the concept-conditioned diffusion generator on the training split into RUN/generator (resumes from
    its checkpoint); with --base, LoRA adapters for a pretrained pipeline instead. Under torchrun or accelerate
    launch it trains data-parallel."""
    from cxr_audit.stages.generator import GeneratorStage
    from cxr_audit.stages.pipeline import run_stages

    widths = None
    if channels is not None:
        try:
            widths = [int(c) for c in channels.split(",")]
        except ValueError:
            raise UserInputError(f"--channels {channels!r} must be comma-separated integers, e.g. 16,32,32.") from None
    if base is not None:
        from cxr_audit.synthesis.lora_store import check_base_pipeline

        native_only = [name for name, value in (("--size", size), ("--channels", channels),
                                                ("--timestep-exponent", timestep_exponent),
                                                ("--prediction-type", prediction_type)) if value is not None]
        if native_only:
            raise UserInputError(f"{', '.join(native_only)} set(s) the native generator; with --base the pipeline's "
                                 "own size, UNet and schedule are used. Leave them out, or drop --base.")
        base = check_base_pipeline(base).resolve()
        lr = 1e-4 if lr is None else lr  # adapters on a pretrained model: the usual LoRA rate, not the native one
    elif lora_rank is not None:
        raise UserInputError("--lora-rank is for LoRA adapters: pass --base with the pipeline to fine-tune.")
    training = {k: v for k, v in {"size": size, "steps": steps, "minutes": minutes, "batch_size": batch_size,
                                  "channels": widths, "lr": lr, "timestep_exponent": timestep_exponent,
                                  "prediction_type": prediction_type.value if prediction_type else None,
                                  "base": str(base) if base else None, "lora_rank": lora_rank}.items()
                if v is not None}
    given = {**dataset(data, data_format, root, allow_duplicates, labels), "spec": spec, "seed": seed,
             "generator_training": training or None}
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:  # one process owns the run directory; the others only train
        ctx = open_run(out, given, force)
        run_stages(ctx, [GeneratorStage(ctx)], force)
        options = ctx.config.generator_training
        if options.base:
            from cxr_audit.synthesis.lora_store import read_lora_card

            card = read_lora_card(ctx.run.generator)
            console.print(f"LoRA (rank {card.rank}, {card.steps} steps) trained for {options.base} at "
                          f"{card.image_size}px; denoising loss on a fixed set {card.eval_loss_before:.4f} -> "
                          f"{card.eval_loss_after:.4f}; saved to {ctx.run.generator}", markup=False)
        else:
            console.print(f"Generator trained on the training split at {options.size}px; saved to "
                          f"{ctx.run.generator}", markup=False)
    else:
        from cxr_audit.rundir import RunDir
        from cxr_audit.stages.config import merge_config
        from cxr_audit.stages.context import RunContext

        run = RunDir(out)
        GeneratorStage(RunContext(run, merge_config(run, {k: v for k, v in given.items() if v is not None}),
                                  progress=False)).run()


@command("synthesize")
def synthesize_command(
    run: RunOption,
    generator: Annotated[Path | None, typer.Option("--generator", help="A trained generator (a train-generator "
                                                   "RUN/generator folder) or a local diffusers pipeline; default: "
                                                   "the run's own.")] = None,
    data: DataOption = None,
    data_format: FormatOption = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    labels: LabelsOption = None,
    checker: Annotated[Path | None, typer.Option("--checker", help="Independent concept checker for QC (never the "
                                                 "model under audit); default: one trained on the run's data.")] = None,
    accept_ungradable: AcceptUngradableOption = False,
    strength: Annotated[float | None, typer.Option("--strength", help="Share of the schedule re-run, 0-1 "
                                                   "(default 1).")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance", help="Classifier-free guidance scale "
                                                   "(default 3).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="DDIM steps over the full schedule (default 30).")] = None,
    unconstrained: Annotated[bool, typer.Option("--unconstrained", help="Ablation: no anatomy mask "
                                                "(writes RUN/unconstrained).")] = False,
    null_edits: Annotated[bool, typer.Option("--null-edits", help="Texture control: the same regions regenerated "
                                             "under each source's own vector (writes RUN/null_edits).")] = False,
    force: ForceOption = False,
) -> None:
    """Carry out the run's edit plan: masked, anatomy-preserving edits with QC; resumable."""
    from cxr_audit.rundir import SYNTHESIS_FOLDERS
    from cxr_audit.stages.pipeline import check_generator_and_checker, restore_request, run_stages, stages_for
    from cxr_audit.stages.synthesize import read_summary

    edit = {k: v for k, v in {"strength": strength, "guidance": guidance, "steps": steps}.items() if v is not None}
    if unconstrained and null_edits:
        raise UserInputError("--unconstrained and --null-edits are two different controls; run them one at a time.")
    ctx = open_run(run, {**dataset(data, data_format, root, allow_duplicates, labels), "generator": generator,
                         "checker": checker, "edit": edit or None, "accept_ungradable": accept_ungradable or None},
                   force)
    try:  # every input is checked before any work (a checker trained first would be 30 s lost)
        if not ctx.run.plan.exists():
            raise UserInputError(f"{ctx.run.plan} does not exist: run `cxr-audit plan --out {run}` first.")
        check_generator_and_checker(ctx)
    except UserInputError:
        restore_request(ctx)
        raise
    mode = "unconstrained" if unconstrained else "null_edits" if null_edits else "cars"
    run_stages(ctx, stages_for(ctx, [SYNTHESIS_FOLDERS[mode]]), force)
    layout = ctx.run.synthesis(mode)
    summary = read_summary(layout)
    console.print(escape(f"{summary.accepted} of {summary.planned} edits accepted; rejected by reason: "
                         f"{summary.rejected_by_reason or 'none'}; checker agreement {summary.checker_agreement}"))
    listed = f", {layout.score_list} (the images a black box scores for `probe --predictions`)" \
        if layout.score_list.exists() else ""
    console.print(f"Wrote {layout.manifest}{listed} and {layout.summary}", markup=False)
