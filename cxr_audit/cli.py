"""The `cxr-audit` command line: one command per stage of the audit flow."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cxr_audit import __version__
from cxr_audit.errors import EXIT_BAD_INPUT, UserInputError
from cxr_audit.provenance import dataset_sha256

app = typer.Typer(
    name="cxr-audit",
    help="Audit chest X-ray classifiers: coverage of clinical finding combinations, targeted synthesis, "
         "metrics with confidence intervals, a PDF report and a CI gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (CI logs, files) gets a wide console so tables are not folded into 80 columns.
console = Console(width=None if Console().is_terminal else 140)
error_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


def command(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` that prints user errors as a paragraph (no traceback) and exits 2."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*f_args: Any, **f_kwargs: Any) -> Any:
            try:
                return function(*f_args, **f_kwargs)
            except UserInputError as exc:
                error_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_BAD_INPUT) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


class DataFormat(str, Enum):
    nih = "nih"
    chexpert = "chexpert"
    mimic = "mimic"
    csv = "csv"


DataOption = Annotated[Path, typer.Option("--data", help="Labels file (NIH, CheXpert, generic CSV) or MIMIC folder.")]
FormatOption = Annotated[DataFormat, typer.Option("--format", help="Format of --data.")]
RootOption = Annotated[Path | None, typer.Option("--root", help="Dataset root for image paths "
                                                "(default: beside the labels file).")]
SpecOption = Annotated[Path, typer.Option("--spec", help="Coverage spec YAML (see coverage_specs/).")]
OutOption = Annotated[Path, typer.Option("--out", help="Run directory to write into.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace results made from other inputs.")]


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        console.print(f"cxr-audit {__version__}")
        raise typer.Exit()


@command("coverage")
def coverage_command(
    data: DataOption,
    spec: SpecOption,
    out: OutOption,
    data_format: FormatOption = DataFormat.csv,
    root: RootOption = None,
    show_all: Annotated[bool, typer.Option("--all", help="List every cell, covered pairwise cells too.")] = False,
    force: ForceOption = False,
) -> None:
    """Count each clinically important cell of the spec on the training data and report deficits."""
    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.provenance import atomic_write_json, guard_artifact, sha256_file
    from cxr_audit.report.plots import cooccurrence_heatmap, coverage_bars
    from cxr_audit.spec import load_spec

    coverage_spec = load_spec(spec)
    inputs = {"spec": sha256_file(spec), "data": dataset_sha256(data)}
    target = out / "coverage.json"
    guard_artifact(target, inputs, force)
    with console.status(f"Reading {data} ({data_format.value} format)"):
        manifest = read_manifest(data, data_format.value, root)
    report = analyse_coverage(manifest, coverage_spec, spec, inputs)
    out.mkdir(parents=True, exist_ok=True)
    cooccurrence_heatmap(report, out / "cooccurrence.png")
    coverage_bars(report, out / "coverage_cells.png")
    atomic_write_json(target, report.model_dump(mode="json"))
    _print_coverage(report, show_all)
    console.print(f"Wrote {target}, {out / 'cooccurrence.png'} and {out / 'coverage_cells.png'}")


def _print_coverage(report: Any, show_all: bool) -> None:
    dataset = report.dataset
    table = Table(title=f"Coverage of {Path(report.spec_path).name} on {Path(dataset.path).name}: "
                        f"{dataset.n_images:,} {'frontal ' if dataset.frontal_only else ''}images, "
                        f"{dataset.n_patients:,} patients", title_justify="left")
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
        table.add_row("pair" if cell.id.startswith("PAIR:") else cell.id, combination,
                      cell.subgroup.label() if cell.subgroup else "all", f"{cell.count:,}",
                      f"{cell.patients:,}", f"{cell.min_count:,}", f"{cell.deficit:,}" if cell.deficit else "0",
                      status)
    console.print(table)
    n_deficit = len(report.deficits())
    n_implausible = sum(not c.plausible for c in report.cells)
    console.print(f"{len(report.cells)} cells: {n_deficit} with a deficit, {n_implausible} implausible"
                  + (f"; {hidden} covered pairwise cells not shown (--all shows them)" if hidden else ""))
    for note in dataset.notes:
        console.print(f"[yellow]note:[/] {note}")


class PredictionType(str, Enum):
    v = "v_prediction"
    epsilon = "epsilon"


class EvaluateSplit(str, Enum):
    auto = "auto"
    train = "train"
    val = "val"
    test = "test"
    all = "all"


@command("evaluate")
def evaluate_command(
    data: DataOption,
    out: OutOption,
    data_format: FormatOption = DataFormat.csv,
    model: Annotated[list[Path] | None, typer.Option("--model", help="Model file: TorchScript, ONNX, state_dict, "
                                                     "safetensors, torchxrayvision checkpoint. Repeat for an "
                                                     "ensemble.")] = None,
    card: Annotated[Path | None, typer.Option("--card", help="Model card YAML (default: <model>.card.yaml).")] = None,
    predictions: Annotated[Path | None, typer.Option("--predictions", help="CSV of a black-box model's "
                                                     "outputs, instead of --model.")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Coverage spec: concepts and cells to evaluate.")] = None,
    root: RootOption = None,
    split: Annotated[EvaluateSplit, typer.Option("--split", help="Images to evaluate (auto: the test split, "
                                                 "or all images when the data has no splits).")] = EvaluateSplit.auto,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Patient-level bootstrap replicates.")] = 1000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    mc_samples: Annotated[int, typer.Option("--mc-samples", help="MC-dropout (or TTA) passes; 0 turns off.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    workers: Annotated[int | None, typer.Option("--workers", help="DataLoader workers.")] = None,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow a pickled model (runs code from "
                                               "the file; only for files you trust).")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse or store cached predictions.")] = False,
    force: ForceOption = False,
) -> None:
    """Evaluate a model (or its predictions) on real test images: metrics per concept and cell, with CIs."""
    from cxr_audit.evaluate_stage import EvaluateOptions, run_evaluate
    from cxr_audit.inference import default_cache_dir

    if bootstrap < 100:
        raise UserInputError(f"--bootstrap {bootstrap} is too few replicates for a 95% interval; use 100 or more.")
    document, _ = run_evaluate(EvaluateOptions(
        data=data, data_format=data_format.value, out=out, models=model or [], card=card, predictions=predictions,
        spec=spec, root=root, split=split.value, bootstrap=bootstrap, seed=seed, mc_samples=mc_samples,
        batch_size=batch_size, workers=workers, allow_pickle=allow_pickle,
        cache_dir=None if no_cache else default_cache_dir(), force=force))
    _print_metrics(document)
    console.print(f"Wrote {out / 'metrics.json'} and {out / 'predictions.npz'}")


def _ci_text(entry: dict, digits: int = 3) -> str:
    if entry["value"] is None:
        return "-"
    text = f"{entry['value']:.{digits}f}"
    if entry["ci"]:
        text += f" [{entry['ci'][0]:.{digits}f}, {entry['ci'][1]:.{digits}f}]"
    return text


def _print_metrics(document: dict) -> None:
    data = document["data"]
    table = Table(title=f"{Path(document['model']['path']).name} on {Path(data['path']).name} ({data['split']}): "
                        f"{document['n_images']:,} images, {document['n_patients']:,} patients; 95% patient-level "
                        "bootstrap CIs", title_justify="left")
    table.add_column("concept / cell", no_wrap=True, min_width=16)
    for header in ("n", "pos", "AUPRC [95% CI]", "AUROC [95% CI]", "ECE [95% CI]", "thr", "recall", "prec."):
        table.add_column(header, justify="right", no_wrap=True)

    def row(name: str, m: dict) -> None:
        def plain(entry: dict) -> str:
            return "-" if entry["value"] is None else f"{entry['value']:.2f}"

        table.add_row(name, f"{m['n']:,}", f"{m['positives']:,}", _ci_text(m["auprc"]), _ci_text(m["auroc"]),
                      _ci_text(m["ece"]), f"{m['threshold']['value']:.2f}", plain(m["recall"]), plain(m["precision"]))

    for concept, m in document["concepts"].items():
        row(concept, m)
    for cell_id, m in document["cells"].items():
        if m.get("evaluated") and not cell_id.startswith("PAIR:"):
            row(cell_id, m)
    console.print(table)
    for note in document["notes"]:
        console.print(f"[yellow]note:[/] {note}")


@command("phantom")
def phantom_command(
    out: OutOption,
    n: Annotated[int, typer.Option("--n", help="Number of images (studies).")] = 2000,
    size: Annotated[int, typer.Option("--size", help="Image size in pixels (square).")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same dataset.")] = 0,
    prevalence: Annotated[Path | None, typer.Option("--prevalence", help="YAML: per-split prevalence of "
                                                    "findings and combinations.")] = None,
    dicom: Annotated[bool, typer.Option("--dicom", help="Write DICOM (made-up patient names) instead of PNG.")] = False,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes (default: CPU count, max 4).")] = None,
) -> None:
    """Generate a procedural chest X-ray phantom dataset with anatomy and finding masks."""
    from cxr_audit.data.phantom_dataset import (
        load_prevalence,
        phantom_prevalence_summary,
        write_phantom_dataset,
    )

    frame = write_phantom_dataset(out, n, size, seed, load_prevalence(prevalence), dicom, workers)
    console.print(phantom_prevalence_summary(frame))
    console.print(f"Wrote {out / 'labels.csv'} (CheXpert format: --format chexpert), images, masks and "
                  f"{out / 'samples_grid.png'}")


def _training_split(manifest, seed: int):
    """The images a model was trained on: the 'train' split, assigned by patient when the data has none."""
    from cxr_audit.data.manifest import assign_patient_splits

    if not manifest.frame["split"].notna().all():
        manifest = assign_patient_splits(manifest, seed=seed)
        console.print(f"[yellow]note:[/] no split in the data: patients assigned to train/val/test with seed {seed}")
    return manifest.split("train")


@command("plan")
def plan_command(
    data: DataOption,
    spec: SpecOption,
    out: OutOption,
    data_format: FormatOption = DataFormat.csv,
    root: RootOption = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    force: ForceOption = False,
) -> None:
    """Plan CARS edits: for each under-covered cell of the training split, sources one edit away."""
    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.provenance import atomic_write_json, guard_artifact, sha256_file
    from cxr_audit.spec import load_spec
    from cxr_audit.synthesis.planner import plan_edits

    coverage_spec = load_spec(spec)
    inputs = {"spec": sha256_file(spec), "data": dataset_sha256(data)}
    guard_artifact(out / "plan.json", inputs, force)
    manifest = read_manifest(data, data_format.value, root)
    if coverage_spec.frontal_only:
        manifest = manifest.frontal()
    train = _training_split(manifest, seed)
    coverage = analyse_coverage(train, coverage_spec, spec, inputs)
    plan = plan_edits(train, coverage_spec, coverage, seed)
    document = plan.to_json(inputs)
    document.update({"seed": seed, "data": {"path": str(data), "format": data_format.value},
                     "label_policy": coverage_spec.label_policy.model_dump(mode="json")})
    atomic_write_json(out / "plan.json", document)
    table = Table(title=f"Edit plan: {len(plan.edits)} edits from {len(train):,} training images", title_justify="left")
    for header in ("cell", "deficit", "budget", "1-edit sources", "2-edit sources", "planned", "status"):
        table.add_column(header, justify="left" if header in ("cell", "status") else "right")
    for cell in plan.cells:
        table.add_row(cell.cell_id, str(cell.deficit), str(cell.budget), str(cell.candidates_one_edit),
                      str(cell.candidates_two_edits), str(cell.planned), f"{cell.status}: {cell.reason}")
    console.print(table)
    for rejection in plan.rejections:
        console.print(f"[yellow]rejected:[/] {rejection['cell_id']}: {rejection['sources_rejected']} sources, "
                      f"{rejection['reason']}")
    console.print(f"Wrote {out / 'plan.json'}")


@command("train-generator")
def train_generator_command(
    data: DataOption,
    out: OutOption,
    data_format: FormatOption = DataFormat.csv,
    root: RootOption = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="Concepts to condition on (default: all "
                                              "labelled concepts).")] = None,
    size: Annotated[int, typer.Option("--size", help="Image size the generator works at.")] = 64,
    steps: Annotated[int, typer.Option("--steps", help="Training steps.")] = 1500,
    minutes: Annotated[float | None, typer.Option("--minutes", help="Stop (and save) after this long.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    channels: Annotated[str, typer.Option("--channels", help="UNet widths per level, e.g. 16,32,32 (CPU) or "
                                          "64,128,256,256 (GPU).")] = "16,32,32",
    lr: Annotated[float, typer.Option("--lr", help="Learning rate.")] = 1e-3,
    timestep_exponent: Annotated[float, typer.Option("--timestep-exponent", help="Timesteps drawn as T*u^x: 1 is "
                                                     "uniform, 0.5 favours the noisy steps where findings take "
                                                     "shape.")] = 0.5,
    prediction_type: Annotated[PredictionType, typer.Option(
        "--prediction-type", help="What the UNet learns to predict: v (learns faster on a small budget) or the "
                                  "noise (epsilon).")] = PredictionType.v,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train the concept-conditioned diffusion generator on the training split (resumes from a checkpoint)."""
    from cxr_audit import concepts
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import LabelPolicy, load_spec
    from cxr_audit.synthesis.generator import RegionSampler, TrainConfig, train_generator
    from cxr_audit.synthesis.run import training_anatomy

    coverage_spec = load_spec(spec) if spec else None
    manifest = read_manifest(data, data_format.value, root).frontal()
    train = _training_split(manifest, seed)
    names = concepts.findings(coverage_spec.concepts if coverage_spec else manifest.concepts)
    train.require_concepts(names, "train-generator")
    policy = coverage_spec.label_policy if coverage_spec else LabelPolicy()
    try:
        widths = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise UserInputError(f"--channels {channels!r} must be comma-separated integers, e.g. 16,32,32.") from None
    images = train.images(size, progress=True)
    anatomy = training_anatomy(train, size)
    if anatomy is None:
        console.print("[yellow]note:[/] no anatomy masks beside the images: training a whole-image generator, which "
                      "learns the concepts far more slowly. `cxr-audit segment` writes lung masks.")
    card = train_generator(images, train.labels(names, policy), names, out,
                           TrainConfig(steps=steps, batch_size=batch_size, seed=seed, max_minutes=minutes, lr=lr,
                                       timestep_exponent=timestep_exponent, prediction_type=prediction_type.value),
                           dataset_sha256(data), widths, regions=RegionSampler(anatomy, names) if anatomy else None)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one summary line
        console.print(f"Generator: {card.steps} steps on {card.training_images:,} images at {size}px, "
                      f"{len(names)} concepts; saved to {out}")


@command("synthesize")
def synthesize_command(
    run: Annotated[Path, typer.Option("--run", help="Run directory holding plan.json.")],
    generator: Annotated[Path, typer.Option("--generator", help="Folder written by train-generator.")],
    data: DataOption,
    data_format: FormatOption = DataFormat.csv,
    root: RootOption = None,
    checker: Annotated[Path | None, typer.Option("--checker", help="Independent concept checker model "
                                                 "(never the model under audit) for concept-alignment QC.")] = None,
    strength: Annotated[float, typer.Option("--strength", help="Share of the schedule re-run (0-1).")] = 1.0,
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 3.0,
    steps: Annotated[int, typer.Option("--steps", help="DDIM steps over the full schedule.")] = 30,
    unconstrained: Annotated[bool, typer.Option("--unconstrained", help="Ablation: no anatomy mask.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Default: RUN/synthetic (RUN/unconstrained).")] = None,
) -> None:
    """Carry out the edit plan: masked, anatomy-preserving edits with QC; resumable."""
    import json

    from cxr_audit.data.readers import read_manifest
    from cxr_audit.models import load_model
    from cxr_audit.synthesis.editor import EditSettings
    from cxr_audit.synthesis.generator import generator_sha256, load_generator
    from cxr_audit.synthesis.run import SynthesisOptions, run_synthesis

    plan_path = run / "plan.json"
    if not plan_path.exists():
        raise UserInputError(f"{plan_path} does not exist: run `cxr-audit plan --out {run}` first.")
    plan = json.loads(plan_path.read_text())
    if not 0 < strength <= 1:
        raise UserInputError(f"--strength {strength} must be in (0, 1].")
    model, card = load_generator(generator)
    manifest = read_manifest(data, data_format.value, root).frontal()
    checker_model = load_model(checker) if checker else None
    target = out or run / ("unconstrained" if unconstrained else "synthetic")
    summary = run_synthesis(plan, manifest, model, card, generator_sha256(generator), target, checker_model,
                            SynthesisOptions(settings=EditSettings(steps=steps, strength=strength, guidance=guidance),
                                             unconstrained=unconstrained))
    console.print(f"{summary['accepted']} of {summary['planned']} edits accepted; rejected by reason: "
                  f"{summary['rejected_by_reason'] or 'none'}; checker agreement {summary['checker_agreement']}")
    console.print(f"Wrote {target / 'synthetic_manifest.csv'} and {target / 'synthesis.json'}")


@command("concepts")
def concepts_command() -> None:
    """List the concept vocabulary: canonical names, aliases, anatomical regions."""
    from cxr_audit import concepts

    table = Table(title="Concepts")
    for header in ("concept", "group", "regions", "lateral", "aliases"):
        table.add_column(header)
    for concept in concepts.CONCEPTS:
        table.add_row(concept.name, concept.group, ", ".join(concept.regions), "yes" if concept.lateral else "",
                      ", ".join(concept.aliases))
    console.print(table)


class SchemaName(str, Enum):
    coverage = "coverage"


@command("schema")
def schema_command(name: Annotated[SchemaName, typer.Argument(help="Which artifact.")]) -> None:
    """Print the JSON Schema of an artifact (coverage.json, ...)."""
    from cxr_audit.coverage import CoverageReport

    models = {SchemaName.coverage: CoverageReport}
    print(json.dumps(models[name].model_json_schema(), indent=2))


# The whole-audit commands live in their own modules; importing them registers them on `app`.
from cxr_audit import cli_anatomy, cli_audit, cli_gate  # noqa: F401


def main() -> None:
    app()


if __name__ == "__main__":
    # `python -m cxr_audit.cli` (what torchrun starts) runs this file as __main__; the command modules register
    # on the imported cxr_audit.cli, so run that one's app or only the commands defined above would exist.
    from cxr_audit.cli import main as registered_main

    registered_main()
