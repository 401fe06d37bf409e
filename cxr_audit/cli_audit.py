"""Commands of the whole-audit flow: audit, finetune, probe, report, demo, gate, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxr_audit.cli import DataFormat, DataOption, ForceOption, FormatOption, RootOption, SpecOption, command, console
from cxr_audit.errors import UserInputError

RunOption = Annotated[Path, typer.Option("--run", help="Audit run directory.")]
ArmsOption = Annotated[str, typer.Option("--arms", help="Comma-separated arms: baseline, real_only, cars, "
                                         "unconstrained.")]


def _arms(text: str) -> list[str]:
    return [a.strip() for a in text.split(",") if a.strip()]


@command("audit")
def audit_command(
    model: Annotated[Path, typer.Option("--model", help="The deployed classifier (TorchScript, torchvision or "
                                        "torchxrayvision weights; ONNX for evaluation and probe only).")],
    data: DataOption,
    spec: SpecOption,
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; an existing run of other inputs "
                                      "is never overwritten).")],
    data_format: FormatOption = DataFormat.chexpert,
    root: RootOption = None,
    card: Annotated[Path | None, typer.Option("--card", help="Model card YAML (default: <model>.card.yaml).")] = None,
    generator: Annotated[Path | None, typer.Option("--generator", help="Trained generator folder; without one "
                                                   "the audit trains one on the training split.")] = None,
    checker: Annotated[Path | None, typer.Option("--checker", help="Independent concept checker for synthesis "
                                                 "QC (never the audited model); default: one trained here.")] = None,
    arms: ArmsOption = "baseline,real_only,cars,unconstrained",
    finetune_steps: Annotated[int, typer.Option("--finetune-steps", help="Optimizer steps per fine-tune arm.")] = 300,
    generator_steps: Annotated[int, typer.Option("--generator-steps")] = 1500,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Patient-level bootstrap replicates.")] = 1000,
    mc_samples: Annotated[int, typer.Option("--mc-samples", help="MC-dropout passes (0: off).")] = 10,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    intended_use: Annotated[str | None, typer.Option("--intended-use", help="Text for the report's cover.")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Stop after audit.json.")] = False,
    force: ForceOption = False,
) -> None:
    """Run the whole audit into one run directory: coverage, evaluation, plan, synthesis, fine-tune arms,
    probe, audit.json and report.pdf. Re-running resumes; finished stages with unchanged inputs are skipped."""
    from cxr_audit.finetune import FinetuneConfig
    from cxr_audit.pipeline import AuditOptions, run_audit

    options = AuditOptions(model=model, data=data, spec=spec, out=out, data_format=data_format.value, root=root,
                           card=card, generator=generator, checker=checker, arms=_arms(arms),
                           generator_steps=generator_steps, finetune=FinetuneConfig(steps=finetune_steps, seed=seed),
                           bootstrap=bootstrap, mc_samples=mc_samples, seed=seed, force=force)
    if intended_use:
        options.intended_use = intended_use
    document = run_audit(options)
    _finish(out, document, no_report)


def _finish(out: Path, document: dict, no_report: bool) -> None:
    from cxr_audit.report.render import render_report

    verdict = document["verdict"]
    console.print(f"[bold]Verdict:[/] {verdict['status']}: {verdict['headline']}")
    for concern in verdict["concerns"]:
        console.print(f"  - {concern}")
    for strength in verdict["strengths"]:
        console.print(f"  + {strength}")
    console.print(f"Wrote {out / 'audit.json'}")
    if not no_report:
        console.print(f"Wrote {render_report(out)}")


@command("report")
def report_command(
    run: RunOption,
    out: Annotated[Path | None, typer.Option("--out", help="PDF path (default: RUN/report.pdf).")] = None,
) -> None:
    """Render the PDF again from RUN/audit.json alone."""
    from cxr_audit.report.render import render_report

    console.print(f"Wrote {render_report(run, out)}")


@command("finetune")
def finetune_command(run: RunOption, arms: ArmsOption = "real_only,cars,unconstrained") -> None:
    """Fine-tune copies of the run's model (the given arms), resuming from checkpoints; then evaluate them."""
    from cxr_audit.pipeline import ARMS, options_from_run, prepare

    stages = prepare(options_from_run(run))
    stages.plan(stages.coverage())
    generator_dir, generator_hash = stages.generator()
    checker = stages.checker()
    table = Table(title="Fine-tune arms", title_justify="left")
    for header in ("arm", "mean AUPRC (test)", "candidate"):
        table.add_column(header)
    for arm in _arms(arms):
        if arm not in ARMS or arm == "baseline":
            raise UserInputError(f"--arms: {arm!r} is not a fine-tune arm (real_only, cars, unconstrained).")
        if arm in ("cars", "unconstrained"):
            folder = "synthetic" if arm == "cars" else "unconstrained"
            stages.synthesize(folder, generator_dir, generator_hash, checker, arm == "unconstrained")
        candidate = stages.finetune(arm)
        metrics = stages.evaluate(arm, candidate, None)
        values = [v["auprc"]["value"] for v in metrics["concepts"].values() if v["auprc"]["value"] is not None]
        table.add_row(arm, f"{sum(values) / len(values):.3f}" if values else "-", str(candidate))
    console.print(table)


@command("probe")
def probe_command(run: RunOption) -> None:
    """Score the frozen model on every accepted (source, edited) pair of the run's CARS edits."""
    from cxr_audit.pipeline import options_from_run, prepare

    stages = prepare(options_from_run(run))
    stages.plan(stages.coverage())
    generator_dir, generator_hash = stages.generator()
    stages.synthesize("synthetic", generator_dir, generator_hash, stages.checker(), False)
    document = stages.probe(stages.evaluate("baseline", stages.options.model, stages.options.card))
    table = Table(title=f"Probe: {document['pairs_scored']} pairs", title_justify="left")
    for header in ("edit", "pairs", "score before -> after", "expected direction", "flip rate", "leakage"):
        table.add_column(header)
    for key, entry in document["by_concept"].items():
        table.add_row(key, str(entry["pairs"]), f"{entry['mean_score_before']:.3f} -> {entry['mean_score_after']:.3f}",
                      f"{entry['share_expected_direction']['value']:.2f}", f"{entry['flip_rate']['value']:.2f}",
                      f"{entry['leakage']['value']:.3f}")
    console.print(table)
    console.print(f"Wrote {run / 'probe' / 'probe.json'}")


@command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Run directory of the demo audit.")] = Path("reports/demo"),
    rebuild_generator: Annotated[bool, typer.Option("--rebuild-generator", help="Retrain the shipped demo "
                                                    "generator (minutes on CPU) instead of using it.")] = False,
    minutes: Annotated[float, typer.Option("--generator-minutes", help="Time budget for --rebuild-generator.")] = 12.0,
) -> None:
    """The full audit on the embedded phantom: dataset with a rare cell, a small deployed classifier, the
    shipped generator, every stage, and report.pdf."""
    from cxr_audit.demo import run_demo

    document = run_demo(out, retrain_generator=rebuild_generator, generator_minutes=minutes)
    _finish(out, document, False)
