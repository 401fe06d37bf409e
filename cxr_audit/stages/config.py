"""The configuration of a run: every input and option a stage may read, with one set of defaults.

A command builds it from three layers: the defaults here, what the run recorded in request.json, and the
options the user typed (which win). Whether the result may replace what the run recorded is decided by the
stages it would change (`stages.pipeline.open_run`). Paths are stored as the run records them: relative to
the run inside it, else absolute.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxr_audit.classifier.finetune import FinetuneConfig
from cxr_audit.data.readers import FORMATS as READ_FORMATS
from cxr_audit.errors import UserInputError
from cxr_audit.rundir import RunDir
from cxr_audit.synthesis.editor import EditSettings

# baseline: the deployed model; recalibrated: its probabilities recalibrated on the site's validation split
# (post hoc, no training); the rest are fine-tuned copies.
ARMS = ("baseline", "recalibrated", "real_only", "cars", "unconstrained", "null_edits")
POSTHOC_ARMS = ("recalibrated",)
FINETUNE_ARMS = ("real_only", "cars", "unconstrained", "null_edits")
DATA_FORMATS = ("auto", *READ_FORMATS)
DEFAULT_INTENDED_USE = ("Triage support: flag frontal chest radiographs of adults for the findings listed, for "
                        "review by a radiologist.")
PATH_KEYS = ("data", "labels", "root", "spec", "card", "predictions", "probe_predictions", "generator", "checker")
# Each input path's option and what it must be: a file, a folder, or either (the MIMIC layout is a folder; a
# model may be a folder when a classifier backend stores it so).
_PATH_KINDS = {"data": ("--data", "file or folder"), "labels": ("--labels", "file"), "root": ("--root", "folder"), "spec": ("--spec", "file"),
               "models": ("--model", "file or folder"), "card": ("--card", "file"), "predictions": ("--predictions", "file"),
               "probe_predictions": ("--predictions", "file"),
               "generator": ("--generator", "folder"), "checker": ("--checker", "file")}


def check_input_paths(run: RunDir, typed: dict[str, Any]) -> None:
    """Every input path the user typed exists and is what its option needs (inputs a run makes for itself,
    in its inputs/ folder, are made by its first stages)."""
    for key, (option, kind) in _PATH_KINDS.items():
        values = typed.get(key)
        for value in (values if isinstance(values, list) else [values] if values is not None else []):
            path = Path(value)
            if "\0" in str(value):
                raise UserInputError(f"{option} {value!r} contains a NUL byte; pass a real path.")
            if path.resolve().is_relative_to(run.inputs.resolve()):
                continue
            if not path.exists():
                raise UserInputError(f"{option} {path} does not exist. Check the path.")
            if kind == "file" and not path.is_file():
                raise UserInputError(f"{option} {path} is a folder; pass the file.")
            if kind == "folder" and not path.is_dir():
                raise UserInputError(f"{option} {path} is a file; pass the folder.")


def _finetune_options(config: FinetuneConfig) -> dict[str, Any]:
    """Fine-tune options as recorded: the seed is the run's own (one seed per run)."""
    options = asdict(config)
    options.pop("seed")
    return options


class GeneratorTraining(BaseModel):
    """How a generator is trained in the run (`cxr-audit train-generator`, or `audit` without --generator)."""

    model_config = ConfigDict(extra="forbid")
    size: int = Field(64, ge=16, description="image size the generator works at")
    steps: int = Field(1500, ge=1)
    minutes: float | None = Field(None, gt=0, description="stop (and save) after this long")
    batch_size: int = Field(16, ge=1)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 32], min_length=1)
    lr: float = Field(1e-3, gt=0)
    timestep_exponent: float = Field(0.5, gt=0)
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    base: str | None = Field(None, description="a local diffusers text-to-image pipeline to fine-tune with LoRA "
                             "(size, channels, timestep exponent and prediction type are then the base's own)")
    lora_rank: int = Field(8, ge=1, le=512, description="rank of the LoRA adapters (with base)")

    def declared(self) -> dict:
        """What the generator stage declares as its settings: without a base, the native generator's fields
        only (so runs made before LoRA existed keep their stage records)."""
        return self.model_dump(mode="json", exclude=None if self.base else {"base", "lora_rank"})


class RunConfig(BaseModel):
    """request.json's `config`."""

    model_config = ConfigDict(extra="forbid")
    data: str | None = None
    format: Literal[DATA_FORMATS] = "auto"  # type: ignore[valid-type] - the readers' formats
    labels: str | None = Field(None, description="MIMIC: a chexpert labels file in place of the folder's")
    root: str | None = None
    allow_duplicates: bool = Field(False, description="keep a repeated row (same image, same labels) once")
    allow_near_duplicates: bool = Field(False, description="go on when test images are near-duplicates of images in "
                                        "other partitions (listed in the data sheet and noted)")
    spec: str | None = None
    models: list[str] = Field(default_factory=list, description="the deployed model; several: an ensemble")
    card: str | None = None
    predictions: str | None = Field(None, description="a black box's predictions of the evaluated images")
    probe_predictions: str | None = Field(None, description="a black box's scores of the probe's images "
                                          "(score_me.csv), for `probe --predictions`")
    allow_pickle: bool = False
    generator: str | None = Field(None, description="a trained generator; without one the run trains one")
    checker: str | None = Field(None, description="an independent QC checker; without one the run trains one")
    accept_ungradable: bool = Field(False, description="keep edits of concepts the checker is not fit to grade "
                                    "(counted and reported as ungradable; rejected by default)")
    # Which images coverage counts and evaluation scores. The audit's flow: coverage of the training split,
    # scores on the test split. The stand-alone `coverage` and `evaluate` commands default to 'auto' (train /
    # test when the data has its own splits, else every image). Recorded, so later commands read the same.
    coverage_split: Literal["auto", "train", "all"] = "train"
    evaluate_split: Literal["auto", "train", "val", "test", "all"] = "test"
    seed: int = 0
    bootstrap: int = Field(1000, ge=100)
    mc_samples: int = Field(10, ge=0)
    arms: list[str] = Field(default_factory=lambda: list(ARMS))
    recalibration: Literal["temperature", "platt", "isotonic"] = Field(
        "temperature", description="the recalibrated arm's map, fitted per concept on the validation split")
    generator_training: GeneratorTraining = Field(default_factory=GeneratorTraining)
    # Strength 1.0: the region is regenerated from noise (an inpainting generator sees the image around it);
    # outside the region the source is kept exactly.
    edit: dict[str, Any] = Field(default_factory=lambda: asdict(EditSettings(steps=30, strength=1.0, guidance=3.0)))
    finetune: dict[str, Any] = Field(default_factory=lambda: _finetune_options(FinetuneConfig()))
    intended_use: str = DEFAULT_INTENDED_USE
    gallery_size: int = Field(8, ge=0)

    @field_validator("arms")
    @classmethod
    def _known_arms(cls, arms: list[str]) -> list[str]:
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
        return [a for a in ARMS if a == "baseline" or a in arms]  # baseline always, in the flow's order

    @field_validator("edit")
    @classmethod
    def _edit(cls, value: dict[str, Any]) -> dict[str, Any]:
        settings = EditSettings(**value)
        if not 0 < settings.strength <= 1 or settings.steps < 1 or settings.guidance < 0:
            raise ValueError(f"edit settings {value} need 0 < strength <= 1, steps >= 1, guidance >= 0")
        return asdict(settings)

    @field_validator("finetune")
    @classmethod
    def _finetune(cls, value: dict[str, Any]) -> dict[str, Any]:
        config = FinetuneConfig(**value)
        positive = ("steps", "batch_size", "eval_every", "patience", "checkpoint_every", "micro_batches")
        if any(getattr(config, name) < 1 for name in positive) or not config.lr > 0 or config.weight_decay < 0:
            raise ValueError(f"fine-tune options {value} need steps, batch_size, eval_every, patience, "
                             "checkpoint_every and micro_batches of at least 1, lr above 0 and weight_decay of at "
                             "least 0")
        if config.batch_size % config.micro_batches:
            raise ValueError(f"the fine-tune batch ({config.batch_size}) does not split into {config.micro_batches} "
                             "equal micro-batches: choose --micro-batches dividing it")
        return _finetune_options(config)

    @property
    def edit_settings(self) -> EditSettings:
        return EditSettings(**self.edit)

    @property
    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(**self.finetune, seed=self.seed)


def recorded_settings(config: RunConfig) -> dict[str, Any]:
    """request.json's `config`: the inputs given and the settings the run's stages read. A model known only by
    its predictions has no card, pickle, MC dropout or fine-tune arms, and its audit synthesizes (so trains a
    checker and edits) only with a given generator; a given generator is not trained."""
    unused: set[str] = set()
    if not config.models and config.predictions is not None:
        unused |= {"models", "card", "allow_pickle", "mc_samples", "arms", "finetune"}
        if config.generator is None:
            unused |= {"generator_training", "edit", "checker", "gallery_size", "accept_ungradable"}
    if config.generator is not None:
        unused.add("generator_training")
    return {key: value for key, value in config.model_dump(mode="json", exclude=unused).items() if value is not None}


def merge_config(run: RunDir, given: dict[str, Any], defaults: dict[str, Any] | None = None) -> RunConfig:
    """defaults (RunConfig's, then the command's `defaults`) <- what RUN recorded <- what the user typed
    (`given`, None meaning 'not typed').

    Paths the user typed are recorded relative to the run when inside it (a copied run keeps working)."""
    typed = {k: v for k, v in given.items() if v is not None}
    if "data" in typed:  # a format belongs to its data: new data without --format is detected afresh
        typed.setdefault("format", "auto")
    check_input_paths(run, typed)
    for key in PATH_KEYS:
        if key in typed:
            typed[key] = run.relative(Path(typed[key]))
    if "models" in typed:
        typed["models"] = [run.relative(Path(m)) for m in typed["models"]]
    merged = {**(defaults or {}), **run.recorded_config(), **typed}
    for key in ("generator_training", "edit", "finetune"):  # nested options merge key by key
        if key in typed:
            merged[key] = {**run.recorded_config().get(key, {}), **typed[key]}
    try:
        config = RunConfig.model_validate(merged)
    except Exception as error:  # pydantic.ValidationError: a bad option value
        from pydantic import ValidationError

        if not isinstance(error, ValidationError):
            raise
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in error.errors())
        raise UserInputError(f"Invalid options for {run.path}: {problems}.") from None
    return config
