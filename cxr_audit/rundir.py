"""A run directory: every path inside it, and the request guard.

Layout of a run (RUN):
  request.json            the run's configuration: inputs (paths, relative to RUN where they live inside it)
                          and options; a command that asks for other values is refused without --force
  stages/<stage>.json     each stage's declared inputs (hashes and options) and its outputs' hashes
  inputs/                 inputs a run makes for itself (the demo's phantom and deployed model)
  coverage/ plan/ generator/ checker/ synthetic/ unconstrained/ null_edits/ finetune/<arm>/ evaluate/<arm>/ probe/ gallery/
                          realism/
  audit.json              the one document the report and the gate read
  report.pdf

Nothing else in the package spells a path inside a run: the stages and the commands ask this module, and
only they import it (the algorithms take arrays and documents). The stage runner, with the one skip rule,
is stages/runner.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, read_json

REQUEST_FILE = "request.json"
STAGES_FOLDER = "stages"
# Run modes of synthesis -> their folders (the CARS edits, the unconstrained ablation, and the null edits: the
# same regions regenerated under the source's own vector, the texture control).
SYNTHESIS_FOLDERS = {"cars": "synthetic", "unconstrained": "unconstrained", "null_edits": "null_edits"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_name(name: str, what: str) -> str:
    """A file or folder name taken from a document (an edit id, an arm): one plain path component, so it
    can never lead outside the folder it is joined to."""
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
        raise UserInputError(f"{what} {name!r} is not a plain name (letters, digits, '_', '-', '.'; no path "
                             "separators). Was the document edited by hand?")
    return name


def _file(name: str, doc: str = "") -> property:
    """A file of a layout's folder."""
    return property(lambda self: self.folder / name, doc=doc or name)


@dataclass(frozen=True)
class CoverageLayout:
    folder: Path
    document = _file("coverage.json")
    cooccurrence_png = _file("cooccurrence.png")
    cells_png = _file("coverage_cells.png")


@dataclass(frozen=True)
class EvaluationLayout:
    folder: Path
    metrics = _file("metrics.json")
    predictions = _file("predictions.npz")
    replicates = _file("replicates.npz", "bootstrap replicates per target and metric, for paired comparisons")


@dataclass(frozen=True)
class FinetuneLayout:
    folder: Path
    record = _file("finetune.json")
    checkpoint = _file("checkpoint.pt")
    candidate_weights = _file("candidate.safetensors", "the candidate as a safetensors state dict (a model given "
                              "as weights for a known architecture)")
    candidate_torchscript = _file("candidate.pt", "the candidate as TorchScript (a model given as TorchScript or "
                                  "a pickled module)")

    def candidate(self) -> Path:
        """The candidate this folder holds (the record names its file)."""
        name = read_json(self.record, "Run the fine-tune stage first.")["candidate"]["path"]
        return self.folder / safe_name(name, f"{self.record}: candidate file")


@dataclass(frozen=True)
class SynthesisLayout:
    folder: Path
    images = _file("images")
    masks = _file("masks", "each edit's region (usable as a weak segmentation label)")
    records = _file("records", "one JSON record per edit, written as the edit finishes")
    sources = _file("sources", "each edit's source as the edit saw it (at the generator's size): the probe's pairs")
    manifest = _file("synthetic_manifest.csv", "accepted edits: CheXpert columns plus provenance")
    summary = _file("synthesis.json")
    score_list = _file("score_me.csv", "the images the probe scores (path relative to the run, role, edit id): a "
                       "model known only by its outputs scores them for `probe --predictions`")

    def image(self, edit_id: str) -> Path:
        return self.images / f"{safe_name(edit_id, 'edit id')}.png"

    def source(self, edit_id: str) -> Path:
        return self.sources / f"{safe_name(edit_id, 'edit id')}.png"

    def dicom(self, edit_id: str) -> Path:
        return self.images / f"{safe_name(edit_id, 'edit id')}.dcm"

    def mask(self, edit_id: str) -> Path:
        return self.masks / f"{safe_name(edit_id, 'edit id')}.png"

    def record(self, edit_id: str) -> Path:
        return self.records / f"{safe_name(edit_id, 'edit id')}.json"

    def manifest_image(self, relative: str) -> Path:
        """An image named in synthetic_manifest.csv ('images/<edit>.png'), refused if it leads elsewhere."""
        parts = Path(str(relative)).parts
        if len(parts) != 2 or parts[0] != "images" or not parts[1].endswith(".png"):
            raise UserInputError(f"{self.manifest}: image path {relative!r} is not 'images/<edit id>.png'.")
        return self.image(parts[1][:-len(".png")])


@dataclass(frozen=True)
class GalleryLayout:
    folder: Path
    document = _file("gallery.json")

    def image(self, edit_id: str) -> Path:
        return self.folder / f"{safe_name(edit_id, 'edit id')}.png"

    def relative_image(self, edit_id: str) -> str:
        """How audit.json names a gallery panel: relative to the run."""
        return f"{self.folder.name}/{safe_name(edit_id, 'edit id')}.png"


@dataclass(frozen=True)
class RealismLayout:
    """The realism of each synthesis mode as a whole: the two-sample discriminator and feature distances."""

    folder: Path
    document = _file("realism.json")
    scores = _file("discriminator_scores.csv", "every image's out-of-fold discriminator score (real and synthetic)")


@dataclass(frozen=True)
class ReaderStudyLayout:
    """The run's side of a blinded reader study: the key never leaves the run; the kit goes to the readers."""

    folder: Path
    key = _file("key.json", "which case is which (real, or the edit it shows): never given to readers")
    results = _file("reader_study.json", "the readers' answers scored against the key")


@dataclass(frozen=True)
class ReaderKitLayout:
    """A kit given to readers: blinded cases, the form and the template; only the key's SHA-256 ties it to
    its run."""

    folder: Path
    images = _file("images")
    form = _file("form.html", "self-contained: every case embedded, the answers saved as a CSV, works offline")
    template = _file("responses_template.csv")
    manifest = _file("kit.json", "the kit's case ids, concept list and the key's SHA-256")

    def image(self, case_id: str, suffix: str = ".png") -> Path:
        return self.images / f"{safe_name(case_id, 'case id')}{suffix}"


class RunDir:
    """A run directory and every path inside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- the run's own files ------------------------------------------------------------------------------
    @property
    def request(self) -> Path:
        return self.path / REQUEST_FILE

    @property
    def stages(self) -> Path:
        return self.path / STAGES_FOLDER

    def stage_record(self, stage: str) -> Path:
        return self.stages / f"{safe_name(stage, 'stage')}.json"

    @property
    def inputs(self) -> Path:
        """Inputs the run makes for itself (the demo's dataset and deployed model)."""
        return self.path / "inputs"

    @property
    def made_dataset(self) -> Path:
        """The labels file of a dataset the run made for itself (the demo's phantom); its images lie beside it."""
        return self.inputs / "dataset" / "labels.csv"

    @property
    def made_reports(self) -> Path:
        """The reports of the dataset the run made (the phantom writes one per study)."""
        return self.made_dataset.with_name("reports.csv")

    @property
    def made_report_labels(self) -> Path:
        """Labels the run made from those reports (`demo --labels-from-reports`)."""
        return self.inputs / "report_labels" / "labels.csv"

    @property
    def made_model(self) -> Path:
        """A deployed model the run made for itself (the demo's), with its card beside it."""
        return self.inputs / "model" / "deployed_model.safetensors"

    # -- stage outputs ---------------------------------------------------------------------------------------
    @property
    def datasheet(self) -> Path:
        return self.path / "datasheet" / "datasheet.json"

    @property
    def coverage(self) -> CoverageLayout:
        return CoverageLayout(self.path / "coverage")

    @property
    def plan(self) -> Path:
        return self.path / "plan" / "plan.json"

    @property
    def generator(self) -> Path:
        """A generator trained in the run (diffusers layout plus its card)."""
        return self.path / "generator"

    @property
    def checker(self) -> Path:
        """The QC checker trained in the run (safetensors, with its card beside it)."""
        return self.path / "checker" / "checker.safetensors"

    def synthesis(self, mode: str) -> SynthesisLayout:
        if mode not in SYNTHESIS_FOLDERS:
            raise ValueError(f"unknown synthesis mode {mode!r}")
        return SynthesisLayout(self.path / SYNTHESIS_FOLDERS[mode])

    def finetune(self, arm: str) -> FinetuneLayout:
        return FinetuneLayout(self.path / "finetune" / safe_name(arm, "arm"))

    def evaluation(self, arm: str) -> EvaluationLayout:
        return EvaluationLayout(self.path / "evaluate" / safe_name(arm, "arm"))

    @property
    def probe(self) -> Path:
        return self.path / "probe" / "probe.json"

    @property
    def gallery(self) -> GalleryLayout:
        return GalleryLayout(self.path / "gallery")

    @property
    def realism(self) -> RealismLayout:
        return RealismLayout(self.path / "realism")

    @property
    def reader_study(self) -> ReaderStudyLayout:
        return ReaderStudyLayout(self.path / "reader_study")

    @property
    def audit(self) -> Path:
        return self.path / "audit.json"

    @property
    def report(self) -> Path:
        return self.path / "report.pdf"

    def stage_folders(self) -> list[Path]:
        """Folders that belong to a stage: nothing outside the stage may write inside them."""
        return [self.stages, self.inputs, self.coverage.folder, self.plan.parent, self.generator,
                self.checker.parent, *(self.path / f for f in SYNTHESIS_FOLDERS.values()), self.path / "finetune",
                self.path / "evaluate", self.probe.parent, self.gallery.folder, self.realism.folder]

    def relative(self, path: Path) -> str:
        """`path` as recorded in documents: relative to the run when it lies inside it, else absolute."""
        resolved = Path(path).resolve()
        root = self.path.resolve()
        return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)

    def resolve(self, recorded: str) -> Path:
        """A path recorded by `relative`, wherever the run directory now is."""
        path = Path(recorded)
        return path if path.is_absolute() else self.path / path

    def is_run(self) -> bool:
        return self.request.is_file() or self.stages.is_dir()

    # -- the request guard -----------------------------------------------------------------------------------
    def recorded_config(self) -> dict[str, Any]:
        if not self.request.exists():
            return {}
        try:
            document = json.loads(self.request.read_text())
            return dict(document["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise UserInputError(f"{self.request} is not a cxr-audit request (unreadable or without 'config'). "
                                 "Was it edited by hand? Choose a new --out folder.") from None

    def check_writable(self) -> None:
        """A run directory may be created here: not a file, not a folder of something else, not inside
        another run's stage folder."""
        check_run_location(self.path)
        if self.path.exists() and not self.path.is_dir():
            raise UserInputError(f"--out {self.path} is a file; a run directory is needed. Choose a folder.")
        if self.path.exists() and any(self.path.iterdir()) and not self.is_run():
            raise UserInputError(f"{self.path} exists and is not a cxr-audit run directory. Choose a new --out "
                                 "folder (a run never writes into a folder it did not make).")

    def claim(self, config: dict[str, Any]) -> None:
        """Record `config` as the run's configuration (after `check_writable` and the stage check)."""
        self.check_writable()
        atomic_write_json(self.request, {"config": config})


def check_run_location(path: Path) -> None:
    """Refuse a run directory inside another run's stage folder (it would mix with that stage's outputs)."""
    resolved = Path(path).resolve()
    for parent in resolved.parents:
        run = RunDir(parent)
        if not run.is_run():
            continue
        for folder in run.stage_folders():
            folder = folder.resolve()
            if resolved == folder or resolved.is_relative_to(folder):
                raise UserInputError(f"{path} lies inside {folder}, a stage folder of the run {parent}. A command "
                                     f"writing there would replace that run's results; pass --out {parent} to "
                                     "work on that run, or choose a folder outside it.")


def check_output_file(path: Path, inputs: list[Path], what: str) -> Path:
    """An output file a command writes outside any run layout (a PDF, JUnit XML, a Markdown summary): never
    one of the command's inputs, never a folder, never inside a stage folder of a run."""
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a folder; name a file.")
    for source in inputs:
        if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
            raise UserInputError(f"{what} {path} is one of this command's inputs; writing it would destroy the "
                                 "input. Choose another file name.")
    parent = path.resolve().parent
    for folder in [parent, *parent.parents]:
        run = RunDir(folder)
        if run.is_run():
            inside = [f for f in run.stage_folders() if parent == f.resolve() or parent.is_relative_to(f.resolve())]
            if inside:
                raise UserInputError(f"{what} {path} lies inside {inside[0]}, a stage folder of the run {folder}; "
                                     "choose a file outside the stage folders.")
            break
    return path
