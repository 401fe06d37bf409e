"""Commands of the whole-audit flow: audit, finetune, probe, report, demo."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import AllowDuplicatesOption, AllowNearDuplicatesOption, DataOption, LabelsOption, ForceOption, FormatOption, OutOption
from cxr_audit.cli.app import RootOption, RunOption, SeedOption, SpecOption, command, console, dataset
from cxr_audit.cli.app import AcceptUngradableOption, open_run
from cxr_audit.errors import UserInputError

ArmsOption = Annotated[str | None, typer.Option("--arms", help="Comma-separated arms: baseline, recalibrated, "
                                                "real_only, cars, unconstrained, null_edits (default: all).")]


NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Neither reuse nor store cached predictions and "
                                             "decoded images ($CXR_AUDIT_CACHE).")]
MicroBatchesOption = Annotated[int | None, typer.Option(
    "--micro-batches", min=1, help="Split each fine-tune batch into this many micro-batches (at least one per "
    "process under torchrun). One process with N reproduces an N-process run.")]


def _finetune(steps: int | None, micro_batches: int | None) -> dict | None:
    options = {k: v for k, v in {"steps": steps, "micro_batches": micro_batches}.items() if v is not None}
    return options or None


def _arms(text: str | None) -> list[str] | None:
    return None if text is None else [a.strip() for a in text.split(",") if a.strip()]


@command("audit")
def audit_command(
    out: OutOption,
    model: Annotated[Path | None, typer.Option("--model", help="The deployed classifier (TorchScript, torchvision or "
                                               "torchxrayvision weights; ONNX for evaluation and probe only).")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Instead of --model: a CSV of the model's "
                                                     "outputs on the data (a black box). No fine-tune arms; the probe "
                                                     "by round trip (`probe --predictions`).")] = None,
    data: DataOption = None,
    spec: SpecOption = None,
    data_format: FormatOption = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    allow_near_duplicates: AllowNearDuplicatesOption = False,
    labels: LabelsOption = None,
    card: Annotated[Path | None, typer.Option("--card", help="Model card YAML (default: <model>.card.yaml).")] = None,
    generator: Annotated[Path | None, typer.Option("--generator", help="Trained generator folder; without one the "
                                                   "audit trains one on the training split.")] = None,
    checker: Annotated[Path | None, typer.Option("--checker", help="Independent concept checker for synthesis QC "
                                                 "(never the audited model); default: one trained here.")] = None,
    accept_ungradable: AcceptUngradableOption = False,
    arms: ArmsOption = None,
    recalibration: Annotated[str | None, typer.Option(
        "--recalibration", help="The recalibrated arm's map, fitted per concept on the validation split: temperature "
        "(default), platt or isotonic.")] = None,
    finetune_steps: Annotated[int | None, typer.Option("--finetune-steps", help="Optimizer steps per fine-tune arm "
                                                       "(default 300).")] = None,
    micro_batches: MicroBatchesOption = None,
    generator_steps: Annotated[int | None, typer.Option("--generator-steps", help="Generator training steps "
                                                        "(default 1500).")] = None,
    generator_minutes: Annotated[float | None, typer.Option("--generator-minutes", help="Generator training time "
                                                            "budget.")] = None,
    edit_steps: Annotated[int | None, typer.Option("--edit-steps", help="DDIM steps of each edit, over the full "
                                                   "schedule (default 30; fewer is faster and coarser).")] = None,
    bootstrap: Annotated[int | None, typer.Option("--bootstrap", help="Patient-level bootstrap replicates "
                                                  "(default 1000).")] = None,
    mc_samples: Annotated[int | None, typer.Option("--mc-samples", help="MC-dropout passes, 0 off (default 10).")] = None,
    seed: SeedOption = None,
    intended_use: Annotated[str | None, typer.Option("--intended-use", help="Text for the report's cover.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow a pickled model (runs code from the "
                                               "file; only for files you trust).")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Stop after audit.json.")] = False,
    no_cache: NoCacheOption = False,
    force: ForceOption = False,
) -> None:
    """Run the whole audit into one run directory: coverage, evaluation, plan, synthesis, fine-tune arms,
    probe, audit.json and report.pdf. Re-running resumes; finished stages with unchanged inputs are skipped."""
    training = {k: v for k, v in {"steps": generator_steps, "minutes": generator_minutes}.items() if v is not None}
    if predictions is not None and arms is not None:
        raise UserInputError("--arms: a model known only by its predictions (--predictions) has no weights to "
                             "fine-tune; its arms follow from the predictions: the baseline, and the recalibrated "
                             "arm when they also score the validation split. Drop --arms, or pass --model.")
    ctx = open_run(out, {"models": [model] if model else None, "predictions": predictions, "spec": spec,
                         **dataset(data, data_format, root, allow_duplicates, labels), "card": card, "generator": generator, "checker": checker, "arms": _arms(arms),
                         "accept_ungradable": accept_ungradable or None,
                         "recalibration": recalibration, "allow_near_duplicates": allow_near_duplicates or None,
                         "finetune": _finetune(finetune_steps, micro_batches),
                         "generator_training": training or None, "bootstrap": bootstrap, "mc_samples": mc_samples,
                         "edit": None if edit_steps is None else {"steps": edit_steps},
                         "seed": seed, "intended_use": intended_use, "allow_pickle": allow_pickle or None,
                         # the audit's splits, also over what a stand-alone coverage or evaluate recorded
                         "coverage_split": "train", "evaluate_split": "test"}, force,
                   **({"cache_dir": None} if no_cache else {}))
    run_audit(ctx, force, report=not no_report)


def run_audit(ctx, force: bool, report: bool = True) -> None:
    """Run every stage of the audit, then print the verdict."""
    from cxr_audit.stages.pipeline import run_audit as audit

    verdict = audit(ctx, force, report, command_line=" ".join(sys.argv)).verdict
    console.print(f"Verdict: {verdict.status}: {verdict.headline}", markup=False, style="bold")
    for concern in verdict.concerns:
        console.print(f"  - {concern}", markup=False)
    for strength in verdict.strengths:
        console.print(f"  + {strength}", markup=False)
    console.print(f"Wrote {ctx.run.audit}" + (f" and {ctx.run.report}" if report else ""), markup=False)


@command("report")
def report_command(
    run: RunOption,
    out: Annotated[Path | None, typer.Option("--pdf", help="PDF path (default: RUN/report.pdf).")] = None,
    force: ForceOption = False,
) -> None:
    """Render the PDF again from RUN/audit.json alone."""
    from cxr_audit.rundir import RunDir, check_output_file
    from cxr_audit.stages.report import ReportStage, render_run_report
    from cxr_audit.stages.runner import run_stage

    rundir = RunDir(run)
    if out is None:
        run_stage(rundir, ReportStage(rundir), force)
        out = rundir.report
    else:
        render_run_report(rundir, check_output_file(out, [rundir.audit], "--pdf"))
    console.print(f"Wrote {out}", markup=False)


@command("finetune")
def finetune_command(
    run: RunOption,
    arms: ArmsOption = None,
    model: Annotated[Path | None, typer.Option("--model", help="The deployed model, when the run records none.")] = None,
    card: Annotated[Path | None, typer.Option("--card", help="Its model card.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps per arm (default 300).")] = None,
    micro_batches: MicroBatchesOption = None,
    force: ForceOption = False,
) -> None:
    """Fine-tune copies of the run's model (the given arms), resuming from checkpoints; then evaluate them.
    Under torchrun or accelerate launch the fine-tunes are data-parallel and the evaluation is sharded."""
    from cxr_audit.stages.config import FINETUNE_ARMS
    from cxr_audit.stages.evaluate import read_metrics
    from cxr_audit.stages.pipeline import run_stages, stages_for

    chosen = _arms(arms) or list(FINETUNE_ARMS)
    for arm in chosen:
        if arm not in FINETUNE_ARMS:
            raise UserInputError(f"--arms: {arm!r} is not a fine-tune arm ({', '.join(FINETUNE_ARMS)}).")
    ctx = open_run(run, {"models": [model] if model else None, "card": card,
                         "finetune": _finetune(steps, micro_batches)}, force)
    run_stages(ctx, stages_for(ctx, [f"evaluate_{arm}" for arm in chosen]), force)
    table = Table(title="Fine-tune arms", title_justify="left")
    for header in ("arm", "mean AUPRC (test)", "candidate"):
        table.add_column(header)
    for arm in chosen:
        values = [m.auprc.value for m in read_metrics(ctx, arm).concepts.values() if m.auprc.value is not None]
        table.add_row(arm, f"{sum(values) / len(values):.3f}" if values else "-",
                      escape(str(ctx.run.finetune(arm).candidate())))
    console.print(table)


@command("probe")
def probe_command(
    run: RunOption,
    model: Annotated[Path | None, typer.Option("--model", help="The deployed model, when the run records none.")] = None,
    card: Annotated[Path | None, typer.Option("--card", help="Its model card.")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="Instead of a model: the scores a model "
                                                     "known only by its outputs gave every image listed in the run's "
                                                     "score_me.csv files (a 'path' column as listed, a probability "
                                                     "column per concept).")] = None,
    force: ForceOption = False,
) -> None:
    """Score the frozen model on every accepted (source, edited) pair of the run's CARS edits. A model known only
    by its outputs is probed by round trip: it scores the images listed in RUN/synthetic/score_me.csv (and
    RUN/null_edits/score_me.csv), and --predictions reads those scores back. An audited run's audit.json and
    report are brought up to date with the probe."""
    from cxr_audit.stages.pipeline import run_stages, stages_for
    from cxr_audit.stages.probe import read_probe

    if model is not None and predictions is not None:
        raise UserInputError("Pass --model (the model in hand) or --predictions (a black box's scores), not both.")
    ctx = open_run(run, {"models": [model] if model else None, "card": card, "probe_predictions": predictions}, force)
    audited = ctx.run.stage_record("assemble").exists()
    run_stages(ctx, stages_for(ctx, ["probe"]), force)
    if audited:  # audit.json (and its report) are made again, now with the probe
        from cxr_audit.stages.assemble import AssembleStage
        from cxr_audit.stages.report import ReportStage

        run_stages(ctx, stages_for(ctx, ["assemble"])[:-1], force)
        run_stages(ctx, [AssembleStage(ctx, " ".join(sys.argv))] + ([ReportStage(ctx.run)] if ctx.run.report.exists()
                                                                     else []), force=True)
    document = read_probe(ctx)
    table = Table(title=f"Probe: {document.pairs_scored} pairs", title_justify="left")
    for header in ("edit", "pairs", "score before -> after", "expected direction", "flip rate", "leakage"):
        table.add_column(header)
    for key, entry in document.by_concept.items():
        table.add_row(escape(key), str(entry.pairs), f"{entry.mean_score_before:.3f} -> {entry.mean_score_after:.3f}",
                      f"{entry.share_expected_direction.value:.2f}", f"{entry.flip_rate.value:.2f}",
                      f"{entry.leakage.value:.3f}")
    console.print(table)
    console.print(f"Wrote {ctx.run.probe}" + (f"; updated {ctx.run.audit}" if audited else ""), markup=False)


@command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Run directory of the demo audit.")] = Path("reports/demo"),
    rebuild_generator: Annotated[bool, typer.Option("--rebuild-generator", help="Retrain the shipped demo "
                                                    "generator (minutes on CPU) instead of using it.")] = False,
    minutes: Annotated[float, typer.Option("--generator-minutes", help="Time budget for --rebuild-generator.")] = 12.0,
    labels_from_reports: Annotated[bool, typer.Option("--labels-from-reports", help="Derive the concept vectors from "
                                                      "the phantom's radiology reports (label-reports) instead of its "
                                                      "known findings (default --out: reports/demo-from-reports).")] = False,
    force: ForceOption = False,
) -> None:
    """The full audit on the embedded phantom: dataset with a rare cell, a small deployed classifier, the
    shipped generator, every stage, and report.pdf."""
    from cxr_audit.stages.demo import demo_context, rebuild_demo_generator

    if labels_from_reports and out == Path("reports/demo"):
        out = Path("reports/demo-from-reports")  # another dataset: never the labels-run's folder
    ctx = demo_context(out, force, check_generator=not rebuild_generator, labels_from_reports=labels_from_reports)
    if rebuild_generator:
        rebuild_demo_generator(ctx, minutes)
    run_audit(ctx, force)
