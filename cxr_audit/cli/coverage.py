"""`cxr-audit coverage` and `cxr-audit phantom`: what the training data covers, and the embedded dataset."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cxr_audit.cli.app import AllowDuplicatesOption, DataOption, LabelsOption, ForceOption, FormatOption, OutOption
from cxr_audit.cli.app import RootOption, SeedOption, SpecOption, command, console, dataset, note, open_run


class CoverageSplit(str, Enum):
    auto = "auto"
    train = "train"
    all = "all"


@command("coverage")
def coverage_command(
    out: OutOption,
    data: DataOption = None,
    spec: SpecOption = None,
    data_format: FormatOption = None,
    root: RootOption = None,
    allow_duplicates: AllowDuplicatesOption = False,
    labels: LabelsOption = None,
    split: Annotated[CoverageSplit | None, typer.Option("--split", help="Images counted: train (the training split), all, "
                                                 "or auto (train when the data has splits, else all; the "
                                                 "default, or what the run recorded).")] = None,
    seed: SeedOption = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every cell, covered pairwise cells too.")] = False,
    force: ForceOption = False,
) -> None:
    """Count each clinically important cell of the spec on the training data and report deficits."""
    from cxr_audit.stages.coverage import CoverageStage, read_coverage
    from cxr_audit.stages.pipeline import run_stages

    ctx = open_run(out, {**dataset(data, data_format, root, allow_duplicates, labels), "spec": spec, "seed": seed,
                         "coverage_split": split}, force,
                   defaults={"coverage_split": "auto"})
    stage = CoverageStage(ctx)
    run_stages(ctx, [stage], force)
    _print_coverage(read_coverage(ctx), show_all)
    layout = ctx.run.coverage
    console.print(f"Wrote {layout.document}, {layout.cooccurrence_png} and {layout.cells_png}", markup=False)


def _print_coverage(report, show_all: bool) -> None:
    dataset = report.dataset
    counted = "training split" if dataset.split == "train" else "all images"
    table = Table(title=escape(f"Coverage of {Path(report.spec_path).name} on {Path(dataset.path).name} ({counted}): "
                               f"{dataset.n_images:,} {'frontal ' if dataset.frontal_only else ''}images, "
                               f"{dataset.n_patients:,} patients"), title_justify="left")
    table.add_column("cell", no_wrap=True)
    table.add_column("combination", ratio=1)
    table.add_column("subgroup")
    for header in ("count", "patients", "min", "deficit"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    hidden = 0
    for cell in report.cells:
        explicit = not cell.id.startswith("PAIR:")
        if not (show_all or explicit or cell.deficit or not cell.plausible):
            hidden += 1
            continue
        status = ("[grey50]implausible[/]" if not cell.plausible
                  else "[red]deficit[/]" if cell.deficit else "[green]covered[/]")
        combination = " + ".join(cell.all_of) + "".join(f", not {c}" for c in cell.none_of)
        table.add_row(escape("pair" if cell.id.startswith("PAIR:") else cell.id), escape(combination),
                      escape(cell.subgroup.label() if cell.subgroup else "all"), f"{cell.count:,}",
                      f"{cell.patients:,}", f"{cell.min_count:,}", f"{cell.deficit:,}" if cell.deficit else "0", status)
    console.print(table)
    n_deficit = len(report.deficits())
    n_implausible = sum(not c.plausible for c in report.cells)
    console.print(f"{len(report.cells)} cells: {n_deficit} with a deficit, {n_implausible} implausible"
                  + (f"; {hidden} covered pairwise cells not shown (--all shows them)" if hidden else ""), markup=False)
    for message in dataset.notes:
        note(message)


@command("phantom")
def phantom_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the dataset into (new).")],
    n: Annotated[int, typer.Option("--n", help="Number of images (studies).")] = 2000,
    size: Annotated[int, typer.Option("--size", help="Image size in pixels (square).")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same dataset.")] = 0,
    prevalence: Annotated[Path | None, typer.Option("--prevalence", help="YAML scenario: per-split prevalence "
                                                    "of findings and combinations, dependent findings (confounders), "
                                                    "appearance (contrast, severity, silhouette sign).")] = None,
    dicom: Annotated[bool, typer.Option("--dicom", help="Write DICOM (made-up patient names) instead of PNG.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: CPU count, max 4).")] = None,
) -> None:
    """Generate a procedural chest X-ray phantom dataset with anatomy and finding masks."""
    from cxr_audit.data.phantom.dataset import (
        load_prevalence,
        phantom_prevalence_summary,
        write_phantom_dataset,
    )

    frame = write_phantom_dataset(out, n, size, seed, load_prevalence(prevalence), dicom, workers)
    console.print(phantom_prevalence_summary(frame), markup=False)
    console.print(f"Wrote {out / 'labels.csv'} (CheXpert format), images, masks and {out / 'samples_grid.png'}",
                  markup=False)
