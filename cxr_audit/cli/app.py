"""The Typer app, the options every command shares, and how a command opens its run. Imports no command:
the command modules import this one and register on `app` (cxr_audit.cli imports them all)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from cxr_audit import __version__
from cxr_audit.data.readers import FORMATS
from cxr_audit.errors import EXIT_BAD_INPUT, UserInputError

app = typer.Typer(
    name="cxr-audit",
    help="Audit chest X-ray classifiers: coverage of clinical finding combinations, targeted synthesis, "
         "metrics with confidence intervals, a PDF report and a CI gate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: '[...]' in them is printed as written
)
# Piped output (CI logs, files) gets a wide console so tables are not folded into 80 columns.
console = Console(width=None if Console().is_terminal else 140)
error_console = Console(stderr=True, width=None if Console(stderr=True).is_terminal else 140)


def print_error(message: str) -> None:
    """A user error as one paragraph: the message is printed as written (never read as markup)."""
    error_console.print("error:", style="bold red", end=" ")
    error_console.print(message, markup=False, highlight=False, soft_wrap=True)


def note(message: str) -> None:
    console.print("note:", style="yellow", end=" ")
    console.print(message, markup=False, highlight=False)


def log(message: str) -> None:
    """Progress of the stages (stderr, so stdout stays the command's result)."""
    error_console.print(message, markup=False, highlight=False, style="dim" if "skipped" in message else "bold")


def command(*args: Any, group: typer.Typer | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command` (or a command `group`'s) that prints user errors as a paragraph (no traceback) and exits 2."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*f_args: Any, **f_kwargs: Any) -> Any:
            from cxr_audit import distributed

            # under torchrun every process runs the command; the main process speaks for them (errors too: every
            # process raises the same one)
            console.quiet = error_console.quiet = distributed.launched() and not distributed.is_main()
            try:
                return function(*f_args, **f_kwargs)
            except UserInputError as exc:
                print_error(str(exc))
                raise typer.Exit(EXIT_BAD_INPUT) from None

        return (group or app).command(*args, **kwargs)(wrapper)

    return decorate


DataFormat = Enum("DataFormat", {name: name for name in ("auto", *FORMATS)}, type=str)  # the readers' formats


# Options default to None: "what the run recorded, else the built-in default". A value typed on the command
# line that differs from what the run recorded is refused without --force.
DataOption = Annotated[Path | None, typer.Option("--data", help="Labels file (NIH, CheXpert, generic CSV) or MIMIC "
                                                 "folder (default: what the run recorded).")]
FormatOption = Annotated[DataFormat | None, typer.Option("--format", help="Format of --data (default: auto, "
                                                         "detected from the file).")]
RootOption = Annotated[Path | None, typer.Option("--root", help="Dataset root for image paths (default: beside "
                                                 "the labels file).")]
SpecOption = Annotated[Path | None, typer.Option("--spec", help="Coverage spec YAML (see coverage_specs/).")]
OutOption = Annotated[Path, typer.Option("--out", "--run", help="Run directory: created, or an existing run of the "
                                         "same inputs to resume or extend.")]
RunOption = Annotated[Path, typer.Option("--run", "--out", help="Run directory made by another command or `audit`.")]
ForceOption = Annotated[bool, typer.Option("--force", help="Redo stages whose results were made from other inputs "
                                           "(otherwise refused).")]
AllowDuplicatesOption = Annotated[bool, typer.Option("--allow-duplicates", help="Keep a row repeated with the same "
                                                  "labels once, with a note (else a repeated image is refused).")]
AllowNearDuplicatesOption = Annotated[bool, typer.Option(
    "--allow-near-duplicates", help="Go on when test images are near-duplicates (perceptual hash) of images in other "
    "partitions, with a note (else refused).")]
AcceptUngradableOption = Annotated[bool, typer.Option(
    "--accept-ungradable", help="Keep edits of concepts the QC checker is not fit to grade (validation AUROC lower "
    "bound under 0.7, or under 10 validation positives); they are counted and reported as ungradable. Default: "
    "rejected.")]
SeedOption = Annotated[int | None, typer.Option("--seed", help="Seed of every random choice (default 0).")]


LabelsOption = Annotated[Path | None, typer.Option("--labels", help="MIMIC-CXR-JPG: a chexpert labels file in "
                                                   "place of the folder's (e.g. from `label-reports`).")]


def dataset(data: Path | None, data_format: DataFormat | None, root: Path | None,
            allow_duplicates: bool = False, labels: Path | None = None) -> dict[str, Any]:
    """The dataset options of a command, as `open_run` takes them."""
    return {"data": data, "format": data_format, "root": root, "allow_duplicates": allow_duplicates or None,
            "labels": labels}


def open_run(out: Path, given: dict[str, Any], force: bool, **context: Any):
    """The run at `out` with the options typed (`given`, None = not typed) merged into what it recorded.
    Commands reuse cached predictions and decoded images ($CXR_AUDIT_CACHE, default ~/.cache/cxr-audit)
    unless they say otherwise."""
    from cxr_audit.classifier.inference import default_cache_dir
    from cxr_audit.rundir import RunDir
    from cxr_audit.stages.pipeline import open_run as open_stages

    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in given.items()}
    context.setdefault("cache_dir", default_cache_dir())
    return open_stages(RunDir(out), given, force, log=log, **context)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        console.print(f"cxr-audit {__version__}")
        raise typer.Exit()
