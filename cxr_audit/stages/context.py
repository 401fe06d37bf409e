"""What the stages of one run share: the run directory, its configuration, and the data read once.

Everything here is computed lazily and kept: the labels file is read once per command, each split's images
are decoded once at each size, hashes are taken once. A stage reads what it needs from the context and
declares, in its inputs, the hashes of exactly what it read.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import numpy as np

from cxr_audit import concepts
from cxr_audit.data.image_rows import ImageRows
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import dataset_sha256, sha256_file
from cxr_audit.rundir import RunDir
from cxr_audit.spec import CoverageSpec, LabelPolicy
from cxr_audit.stages.config import RunConfig


class RunContext:
    def __init__(self, run: RunDir, config: RunConfig, progress: bool = True, batch_size: int = 32,
                 workers: int | None = None, cache_dir: Path | None = None, log=None):
        self.run, self.config, self.progress = run, config, progress
        # How inference runs: these change speed, never results, so they are not stage inputs.
        self.batch_size, self.workers, self.cache_dir = batch_size, workers, cache_dir
        self.log = log or print
        self.created = False  # whether this command created the run directory (open_run says)
        self.previous_request: bytes | None = None  # request.json as the command found it (restored on refusal)
        self._images: dict[tuple[str, int], ImageRows] = {}

    # -- inputs named in the configuration -------------------------------------------------------------------
    def path(self, key: str) -> Path | None:
        value = getattr(self.config, key)
        return None if value is None else self.run.resolve(value)

    def made_here(self, path: Path) -> Path:
        """`path`, checked: an input the run makes for itself (in RUN/inputs/) that is missing raises
        FileNotFoundError, so the stages that read it are judged after the stage that remakes it has run."""
        if not path.exists() and path.resolve().is_relative_to(self.run.inputs.resolve()):
            raise FileNotFoundError(2, "an input the run makes for itself is missing", str(path))
        return path

    def require(self, key: str, option: str) -> Path:
        path = self.path(key)
        if path is None:
            raise UserInputError(f"{self.run.path} records no {option}: pass {option}.")
        return path

    @cached_property
    def spec(self) -> CoverageSpec | None:
        from cxr_audit.spec import load_spec

        return load_spec(self.path("spec")) if self.config.spec else None

    def require_spec(self) -> CoverageSpec:
        if self.spec is None:
            raise UserInputError(f"{self.run.path} records no coverage spec: pass --spec.")
        return self.spec

    @cached_property
    def spec_sha256(self) -> str | None:
        return sha256_file(self.path("spec")) if self.config.spec else None

    @property
    def label_policy(self) -> LabelPolicy:
        return self.spec.label_policy if self.spec else LabelPolicy()

    @property
    def findings(self) -> list[str]:
        """The spec's concepts without No Finding: what a generator or checker conditions on."""
        return concepts.findings(self.require_spec().concepts)

    @cached_property
    def data_sha256(self) -> str:
        data = dataset_sha256(self.made_here(self.require("data", "--data")))
        if self.config.labels is None:
            return data
        return hashlib.sha256(f"{data} {sha256_file(self.path('labels'))}".encode()).hexdigest()  # both files

    # -- the data ---------------------------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> Manifest:
        """The labels file as read, every view and split."""
        from cxr_audit.data.readers import read_manifest

        return read_manifest(self.made_here(self.require("data", "--data")), self.config.format, self.path("root"),
                             self.config.allow_duplicates, self.path("labels"))

    @property
    def notes(self) -> list[str]:
        """What the tool decided or noticed about the data (the manifest's notes, split assignment)."""
        return list(self.manifest.notes) + self._splits[1]

    @cached_property
    def _splits(self) -> tuple[Manifest, list[str]]:
        """The manifest with a split for every image, and the note saying how splits were made."""
        from cxr_audit.data.splits import assign_patient_splits, carve_validation, has_splits

        if has_splits(self.manifest):
            return carve_validation(self.manifest, self.config.seed)
        return assign_patient_splits(self.manifest, seed=self.config.seed), [
            f"no split in the data: patients assigned to train/val/test with seed {self.config.seed}"]

    def part(self, split: str) -> Manifest:
        """Images of one split ('all': every image), every view."""
        if split == "all":
            return self.manifest
        return self._splits[0].split(split)

    def frontal(self, split: str) -> Manifest:
        """Images of one split that the audited classifiers read: frontal views, unless the spec says
        otherwise."""
        part = self.part(split)
        if self.spec is not None and not self.spec.frontal_only:
            return part
        frontal = part.frontal()
        if len(part) and not len(frontal):
            raise UserInputError(f"{self.path('data')}: none of the {len(part):,} images of split {split!r} is frontal "
                                 "(PA or AP); the audited classifiers read frontal films. Check the view column, or "
                                 "set 'frontal_only: false' in the spec to use every view.")
        return frontal

    def ids_sha256(self, split: str) -> str:
        """The identity of a split's membership: which images it holds (the labels are in the data hash)."""
        return hashlib.sha256("\n".join(self.part(split).frame["image_id"].astype(str)).encode()).hexdigest()

    def images(self, split: str, size: int) -> ImageRows:
        """A split's frontal images at `size`, decoded once for every stage that needs them: rows of the
        decoded-image store, read a batch at a time (memory does not grow with the split), or in memory when
        the run has no cache (--no-cache)."""
        if (split, size) not in self._images:
            self._images[(split, size)] = self.frontal(split).image_rows(size, self.progress, self.cache_dir,
                                                                       self.workers)
        return self._images[(split, size)]

    def labels(self, split: str, names: list[str]) -> np.ndarray:
        return self.frontal(split).labels(names, self.label_policy)

    # -- what the run makes -----------------------------------------------------------------------------------
    @property
    def black_box(self) -> bool:
        """The deployed model is known only by its predictions (no weights): nothing can be fine-tuned, and the
        probe needs the model's scores of the edits (the round trip)."""
        return not self.config.models and self.config.predictions is not None

    @property
    def arms(self) -> list[str]:
        """The arms the run evaluates. A black box has no fine-tuned arm; it is recalibrated when its predictions
        also score the validation split (what the map is fitted on)."""
        if not self.black_box:
            return self.config.arms
        return ["baseline"] + (["recalibrated"] if self.black_box_scores_validation else [])

    @cached_property
    def black_box_scores_validation(self) -> bool:
        """Whether the black box's predictions file scores every frontal image of the validation split."""
        from cxr_audit.classifier.blackbox import read_predictions

        validation = self.frontal("val")
        if not len(validation) or not self.path("predictions").is_file():
            return False
        try:
            read_predictions(self.path("predictions"), validation)
        except UserInputError:
            return False
        return True

    @property
    def synthesis_modes(self) -> list[str]:
        """The synthesize runs the run makes."""
        return self.modes_for(self.arms)

    def modes_for(self, arms: list[str]) -> list[str]:
        """The synthesize runs that `arms` need: the CARS edits, and the controls fine-tuned on. A black box's
        audit synthesizes only with a given generator (it trains none), with the null edits as the probe's
        baseline."""
        if self.black_box:
            return ["cars", "null_edits"] if self.config.generator else []
        return ["cars"] + [mode for mode in ("unconstrained", "null_edits") if mode in arms]

    @property
    def probes(self) -> bool:
        """Whether the run probes the frozen model: with the model in hand, or with a black box's scores."""
        return bool(self.synthesis_modes) and (not self.black_box or self.config.probe_predictions is not None)

    def why_no_stage(self, name: str) -> str:
        """Why a run has no stage of this name (said by a command that asked for it, and by the report)."""
        if not self.black_box:
            return "no such stage."
        if name.startswith(("finetune_", "evaluate_")):
            return ("the model is known only by its predictions (--predictions), and fine-tuning needs its weights. "
                    "Audit with --model to compare fine-tuned arms.")
        if not self.config.generator:
            return ("the model is known only by its predictions, and such an audit trains no generator: pass "
                    "--generator (a trained generator folder) to synthesize the plan's edits and probe the model.")
        if name == "probe":
            return ("the model is known only by its predictions: have it score every image listed in "
                    "synthetic/score_me.csv and null_edits/score_me.csv (a CSV with a 'path' column as listed and a "
                    "probability column per concept), then run `cxr-audit probe --run RUN --predictions SCORES.csv`.")
        return "no such stage."

    # -- the deployed model -----------------------------------------------------------------------------------
    @property
    def model_path(self) -> Path:
        if not self.config.models:
            raise UserInputError(f"{self.run.path} records no deployed model: pass --model.")
        return self.made_here(self.run.resolve(self.config.models[0]))

    @cached_property
    def model(self):
        """The deployed model, loaded once (its card checked against a dummy forward pass)."""
        from cxr_audit.classifier.loading import load_model

        return load_model(self.model_path, self.path("card"), self.config.allow_pickle)

    def model_identity(self) -> dict[str, str]:
        """The deployed model as stage inputs: its weights file and the card it is run with."""
        return {"model": self.model.sha256, "card": self.model.card.sha256()}
