"""`cxr-audit reader-study export|score`: a blinded reader study of a run's synthetic images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import ForceOption, RunOption, app, command, console, log, note
from cxr_audit.errors import UserInputError

reader_study = typer.Typer(name="reader-study", no_args_is_help=True, rich_markup_mode=None,
                           help="A blinded reader study of the run's synthetic images: export a kit for readers, "
                                "then score their answers.")
app.add_typer(reader_study)


def _existing_run(run: Path):
    """The run as it recorded itself: a reader study reads its edits and data and changes none of its stages, so
    the run's request is neither checked against new options nor rewritten."""
    from cxr_audit.classifier.inference import default_cache_dir
    from cxr_audit.rundir import RunDir
    from cxr_audit.stages.config import merge_config
    from cxr_audit.stages.context import RunContext

    directory = RunDir(run)
    if not directory.request.is_file():
        raise UserInputError(f"--run {run} is not a run (no request.json): audit first, then export its reader study.")
    return RunContext(directory, merge_config(directory, {}), cache_dir=default_cache_dir(), log=log)


@command("export", group=reader_study)
def export_command(
    run: RunOption,
    out: Annotated[Path, typer.Option("--out", help="Folder for the kit (outside the run): case images, form.html, "
                                      "responses_template.csv, kit.json.")],
    n: Annotated[int, typer.Option("--n", min=2, help="Cases in the kit.")] = 100,
    synthetic_fraction: Annotated[float, typer.Option("--synthetic-fraction", min=0.0, max=1.0,
                                                      help="Share of the cases that are synthetic.")] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Which cases, and their order.")] = 0,
    pairs: Annotated[bool, typer.Option("--pairs", help="Show the chosen edits' sources as the real cases (a paired "
                                        "design); by default an edit's source is never in its kit.")] = False,
    force: ForceOption = False,
) -> None:
    """Export a blinded, shuffled kit of real training images and accepted synthetic edits (evenly across
    operations and concepts), renamed case_NNNN with every identifying trace removed, with a form that works
    offline in a browser. The key stays in RUN/reader_study/key.json; the kit holds only its SHA-256."""
    from cxr_audit.stages.reader_study import export_kit

    ctx = _existing_run(run)
    kit = export_kit(ctx, out, n, synthetic_fraction, seed, pairs, force)
    for line in kit["notes"]:
        note(line)
    console.print(f"Wrote a kit of {len(kit['cases'])} cases to {out} (form.html, responses_template.csv"
                  f"{', DICOM and PNG images' if kit['dicom'] else ', PNG images'}); the key is in "
                  f"{ctx.run.reader_study.key} (SHA-256 {kit['key_sha256'][:16]}...).", markup=False)


@command("score", group=reader_study)
def score_command(
    run: RunOption,
    responses: Annotated[list[Path], typer.Option("--responses", help="A responses CSV (repeat for each reader's "
                                                  "file).")],
) -> None:
    """Score the readers' answers against the run's key: RUN/reader_study/reader_study.json. An audited run's
    audit.json and report are made again with the reader study."""
    from cxr_audit.stages.pipeline import run_stages
    from cxr_audit.stages.reader_study import score_responses

    ctx = _existing_run(run)
    document = score_responses(ctx, list(responses))
    if ctx.run.stage_record("assemble").exists():
        from cxr_audit.stages.assemble import AssembleStage
        from cxr_audit.stages.report import ReportStage

        run_stages(ctx, [AssembleStage(ctx, " ".join(sys.argv))] + ([ReportStage(ctx.run)] if ctx.run.report.exists()
                                                                     else []), force=True)
    table = Table(title=f"Reader study: {len(document['readers'])} readers, {document['cases']} cases",
                  title_justify="left")
    for header in ("", "synthetic judged real", "real judged real", "finding agreement", "detection AUROC"):
        table.add_column(header)

    def share(entry: dict | None) -> str:
        if not entry or entry.get("value") is None:
            return "-"
        return f"{entry['value']:.2f} [{entry['ci_low']:.2f}, {entry['ci_high']:.2f}] (n={entry['n']})"

    overall = document["overall"]
    table.add_row("all readers", share(overall["synthetic_judged_real"]), share(overall.get("real_judged_real")),
                  share(overall["finding_agreement"]), "")
    for reader, entry in document["by_reader"].items():
        table.add_row(escape(reader), share(entry["synthetic_judged_real"]), share(entry.get("real_judged_real")),
                      share(entry["finding_agreement"]), share(entry["detection_auroc"]))
    console.print(table)
    agreement = document["agreement"]
    if agreement["kappa"] is not None:
        console.print(f"{agreement['method']} between {agreement['readers']} readers: {agreement['kappa']:.3f}",
                      markup=False)
    console.print(f"Wrote {ctx.run.reader_study.results}", markup=False)
