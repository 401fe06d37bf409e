"""`cxr-audit evaluate`: a model (or a black box's predictions) on real images, with CIs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import AllowDuplicatesOption, DataOption, LabelsOption, ForceOption, FormatOption, OutOption
from cxr_audit.cli.app import RootOption, SeedOption, command, console, dataset, note, open_run


class EvaluateSplit(str, Enum):
    auto = "auto"
    train = "train"
    val = "val"
    test = "test"
    all = "all"


@command("evaluate")
def evaluate_command(
    out: OutOption,
    data: DataOption = None,
    data_format: FormatOption = None,
    model: Annotated[list[Path] | None, typer.Option("--model", help="Model file: TorchScript, ONNX, state_dict, "
                                                     "safetensors, torchxrayvision checkpoint. Repeat for an "
                                                     "ensemble.")] = None,
    card: Annotated[Path | None, typer.Option("--card", help="Model card YAML (default: <model>.card.yaml).")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="CSV of a black-box model's "
                                                     "outputs, instead of --model.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Coverage spec: concepts and cells to evaluate.")] = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    labels: LabelsOption = None,
    split: Annotated[EvaluateSplit | None, typer.Option("--split", help="Images to evaluate (auto: the test "
                                                        "split, or all images when the data has no splits; the "
                                                        "default, or what the run recorded).")] = None,
    bootstrap: Annotated[int | None, typer.Option("--bootstrap", help="Patient-level bootstrap replicates "
                                                  "(default 1000, at least 100).")] = None,
    seed: SeedOption = None,
    mc_samples: Annotated[int | None, typer.Option("--mc-samples", help="MC-dropout (or TTA) passes; 0 turns off "
                                                   "(default 10).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="DataLoader workers.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow a pickled model (runs code from the "
                                               "file; only for files you trust).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Neither reuse nor store cached predictions and decoded images "
                                             "($CXR_AUDIT_CACHE).")] = False,
    force: ForceOption = False,
) -> None:
    """Evaluate a model (or its predictions) on real test images: metrics per concept and cell, with CIs."""
    from cxr_audit.classifier.inference import default_cache_dir
    from cxr_audit.stages.evaluate import EvaluateStage, read_metrics
    from cxr_audit.stages.pipeline import run_stages

    ctx = open_run(out, {**dataset(data, data_format, root, allow_duplicates, labels), "spec": spec, "models": model,
                         "card": card, "predictions": predictions, "bootstrap": bootstrap, "seed": seed,
                         "mc_samples": mc_samples, "allow_pickle": allow_pickle or None,
                         "evaluate_split": split}, force, defaults={"evaluate_split": "auto"},
                   batch_size=batch_size, workers=workers, cache_dir=None if no_cache else default_cache_dir())
    run_stages(ctx, [EvaluateStage(ctx, "baseline")], force)
    _print_metrics(read_metrics(ctx, "baseline"))
    layout = ctx.run.evaluation("baseline")
    console.print(f"Wrote {layout.metrics} and {layout.predictions}", markup=False)


def _ci_text(entry, digits: int = 3) -> str:
    if entry is None or entry.value is None:
        return "-"
    text = f"{entry.value:.{digits}f}"
    if entry.ci and None not in entry.ci:
        text += f" [{entry.ci[0]:.{digits}f}, {entry.ci[1]:.{digits}f}]"
    return text


def _print_metrics(document) -> None:
    data = document.data
    table = Table(title=escape(f"{document.model.path} on {Path(data.path).name} ({data.split}): "
                               f"{document.n_images:,} images, {document.n_patients:,} patients; 95% patient-level "
                               "bootstrap CIs"), title_justify="left")
    table.add_column("concept / cell", no_wrap=True, min_width=16)
    for header in ("n", "pos", "AUPRC [95% CI]", "AUROC [95% CI]", "ECE [95% CI]", "thr", "recall", "prec."):
        table.add_column(header, justify="right", no_wrap=True)

    def row(name: str, m) -> None:
        def plain(entry) -> str:
            return "-" if entry is None or entry.value is None else f"{entry.value:.2f}"

        table.add_row(escape(name), f"{m.n:,}", f"{m.positives:,}", _ci_text(m.auprc), _ci_text(m.auroc),
                      _ci_text(m.ece), f"{m.threshold.value:.2f}", plain(m.recall), plain(m.precision))

    for concept, m in document.concepts.items():
        row(concept, m)
    for cell_id, m in document.cells.items():
        if m.evaluated and not cell_id.startswith("PAIR:"):
            row(cell_id, m)
    console.print(table)
    for message in document.notes:
        note(message)
