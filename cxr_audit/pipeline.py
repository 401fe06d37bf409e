"""`cxr-audit audit`: every stage into one run directory, resumable, then audit.json and the PDF.

Run directory layout (RUN):
  request.json              what was asked (input hashes, options); a different request is refused
  stages/<stage>.json       each finished stage: its input hashes and a small result; unchanged -> skipped
  coverage/ plan/ generator/ checker/ synthetic/ unconstrained/ finetune/<arm>/ evaluate/<arm>/ probe/ gallery/
  audit.json                the one document the report and the gate read
  report.pdf                rendered from audit.json (`cxr-audit report --run RUN` re-renders it)

A stage's inputs include the hashes of the upstream artifacts it reads, so changing an input re-runs just
what depends on it. Every artifact is written atomically, so a run killed mid-way resumes at the stage
(and, for synthesis and fine-tuning, the step) it was in.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console

from cxr_audit import __version__, concepts
from cxr_audit.errors import UserInputError
from cxr_audit.finetune import FinetuneConfig
from cxr_audit.provenance import atomic_write_json, dataset_sha256, read_json, sha256_file
from cxr_audit.synthesis.editor import EditSettings

AUDIT_SCHEMA_VERSION = "1.0"
ARMS = ("baseline", "real_only", "cars", "unconstrained")
ARM_TITLES = {"baseline": "Deployed model (no fine-tune)", "real_only": "Fine-tuned on real only",
              "cars": "Fine-tuned on real + CARS edits", "unconstrained": "Fine-tuned on real + unconstrained regeneration"}
# Paired comparisons in the report: (new, old). The CARS arm against the real-only arm is the one that
# controls for extra training; against the unconstrained arm, for anatomy preservation.
COMPARISONS = (("cars", "real_only"), ("cars", "baseline"), ("real_only", "baseline"), ("unconstrained", "real_only"),
               ("cars", "unconstrained"))
console = Console(stderr=True)


@dataclass
class AuditOptions:
    model: Path
    data: Path
    spec: Path
    out: Path
    data_format: str = "chexpert"
    root: Path | None = None
    card: Path | None = None
    generator: Path | None = None          # a trained generator; without one the audit trains one
    checker: Path | None = None            # an independent concept checker for synthesis QC
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    generator_size: int = 64
    generator_steps: int = 1500
    generator_minutes: float | None = None
    # Strength 1.0: the region is regenerated from noise (the inpainting generator sees the image around it);
    # outside the region the source is kept exactly.
    edit: EditSettings = field(default_factory=lambda: EditSettings(steps=30, strength=1.0, guidance=3.0))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    bootstrap: int = 1000
    mc_samples: int = 10
    seed: int = 0
    intended_use: str = ("Triage support: flag frontal chest radiographs of adults for the findings listed, "
                         "for review by a radiologist.")
    gallery_size: int = 8
    force: bool = False
    progress: bool = True
    command_line: list[str] = field(default_factory=lambda: list(sys.argv))


class Run:
    """A run directory: the request guard and the per-stage skip logic."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def claim(self, request: dict, force: bool) -> None:
        request_path = self.path / "request.json"
        if request_path.exists() and not force:
            recorded = json.loads(request_path.read_text())
            if recorded.get("fingerprint") != request["fingerprint"]:
                changed = sorted(k for k in request["fingerprint"]
                                 if recorded.get("fingerprint", {}).get(k) != request["fingerprint"][k])
                raise UserInputError(
                    f"{self.path} holds an audit of other inputs or options (differs in: {', '.join(changed)}). "
                    "A run never overwrites another run: choose a new --out folder, or pass --force to redo it.")
        elif self.path.exists() and any(self.path.iterdir()) and not request_path.exists() and not force:
            raise UserInputError(f"{self.path} exists and is not an audit run directory. Choose a new --out folder.")
        atomic_write_json(request_path, request)

    def stage(self, name: str, inputs: dict, work) -> dict:
        record_path = self.path / "stages" / f"{name}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("inputs") == inputs:
                console.print(f"[dim]stage {name}: inputs unchanged, skipped[/]")
                return record["result"]
        console.print(f"[bold]stage {name}[/]")
        started = time.monotonic()
        result = work()
        atomic_write_json(record_path, {"stage": name, "inputs": inputs, "result": result,
                                        "seconds": round(time.monotonic() - started, 1)})
        return result

    def seconds(self) -> dict[str, float]:
        return {p.stem: json.loads(p.read_text()).get("seconds") for p in sorted((self.path / "stages").glob("*.json"))}


def environment() -> dict:
    import importlib.metadata as metadata

    import torch

    packages = {}
    for name in ("numpy", "pandas", "scikit-learn", "torchvision", "diffusers", "accelerate", "netcal", "pydicom",
                 "weasyprint", "jinja2", "matplotlib", "onnxruntime", "torchxrayvision"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "cpu_threads": torch.get_num_threads(), "packages": packages}


def prepare(options: AuditOptions) -> "_Stages":
    """Check the inputs, claim the run directory and split the data: everything the stages share."""
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import load_spec

    for arm in options.arms:
        if arm not in ARMS:
            raise UserInputError(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}.")
    if "baseline" not in options.arms:
        options.arms = ["baseline", *options.arms]
    spec = load_spec(options.spec)
    hashes = {"model": sha256_file(options.model), "data": dataset_sha256(options.data),
              "spec": sha256_file(options.spec)}
    if options.card:
        hashes["card"] = sha256_file(options.card)
    if options.generator:
        from cxr_audit.synthesis.generator import generator_sha256
        hashes["generator"] = generator_sha256(options.generator)
    if options.checker:
        hashes["checker"] = sha256_file(options.checker)
    settings = {"arms": options.arms, "seed": options.seed, "bootstrap": options.bootstrap,
                "mc_samples": options.mc_samples, "generator_size": options.generator_size,
                "generator_steps": options.generator_steps, "edit": asdict(options.edit),
                "finetune": asdict(options.finetune), "data_format": options.data_format}
    run = Run(options.out)
    run.claim({"fingerprint": {**hashes, "settings": json.dumps(settings, sort_keys=True)},
               "options": _options_to_json(options), "tool_version": __version__}, options.force)

    manifest = read_manifest(options.data, options.data_format, options.root)
    if spec.frontal_only:
        manifest = manifest.frontal()
    from cxr_audit.data.manifest import assign_patient_splits

    notes: list[str] = list(manifest.notes)
    if not manifest.frame["split"].notna().all():
        manifest = assign_patient_splits(manifest, seed=options.seed)
        notes.append(f"no split in the data: patients assigned to train/val/test with seed {options.seed}")
    train, validation, test = (manifest.split(name) for name in ("train", "val", "test"))
    for name, part in (("train", train), ("val", validation), ("test", test)):
        if len(part) == 0:
            raise UserInputError(f"{options.data}: the audit needs train, val and test splits; '{name}' is empty. "
                                 "Fix the split column, or drop it to let the tool assign patients to splits.")
    return _Stages(options, run, spec, hashes, manifest, train, validation, notes)


def run_audit(options: AuditOptions) -> dict:
    """Run every stage of the audit and write RUN/audit.json; returns the document."""
    stages = prepare(options)
    run, spec, hashes, notes = stages.run, stages.spec, stages.hashes, stages.notes
    coverage = stages.coverage()
    baseline = stages.evaluate("baseline", options.model, options.card)
    plan = stages.plan(coverage)
    # The CARS edits are always made: the probe of the frozen model needs them even when no arm trains on them.
    generator_dir, generator_hash = stages.generator()
    checker = stages.checker()
    synthesis = {"cars": stages.synthesize("synthetic", generator_dir, generator_hash, checker, False)}
    if "unconstrained" in options.arms:
        synthesis["unconstrained"] = stages.synthesize("unconstrained", generator_dir, generator_hash, checker, True)
    arms = {"baseline": baseline}
    for arm in ("real_only", "cars", "unconstrained"):
        if arm in options.arms:
            candidate = stages.finetune(arm)
            arms[arm] = stages.evaluate(arm, candidate, None)
    probe = stages.probe(baseline)
    gallery = stages.gallery()
    document = assemble(options, run, spec, hashes, notes, coverage, plan, synthesis, arms, probe, gallery)
    atomic_write_json(run.path / "audit.json", document)
    return document


@dataclass
class _Stages:
    options: AuditOptions
    run: Run
    spec: object
    hashes: dict
    manifest: object
    train: object
    validation: object
    notes: list[str]
    _loaded: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def findings(self) -> list[str]:
        return concepts.findings(self.spec.concepts)

    def images(self, split: str, size: int) -> np.ndarray:
        """The split's images at `size`, read once for every stage that needs them (generator, checker, arms)."""
        if (split, size) not in self._loaded:
            part = {"train": self.train, "val": self.validation}[split]
            self._loaded[(split, size)] = part.images(size, self.options.progress)
        return self._loaded[(split, size)]

    def coverage(self) -> dict:
        from cxr_audit.coverage import analyse_coverage

        inputs = {"data": self.hashes["data"], "spec": self.hashes["spec"], "seed": self.options.seed}

        def work() -> dict:
            report = analyse_coverage(self.train, self.spec, self.options.spec, {k: self.hashes[k] for k in ("data", "spec")})
            document = report.model_dump(mode="json")
            atomic_write_json(self.path / "coverage" / "coverage.json", document)
            return {"path": "coverage/coverage.json"}

        self.run.stage("coverage", inputs, work)
        return json.loads((self.path / "coverage" / "coverage.json").read_text())

    def evaluate(self, arm: str, model: Path, card: Path | None) -> dict:
        from cxr_audit.evaluate_stage import EvaluateOptions, run_evaluate
        from cxr_audit.evaluation import save_replicates

        out = self.path / "evaluate" / arm
        inputs = {"model": sha256_file(model), "data": self.hashes["data"], "spec": self.hashes["spec"],
                  "bootstrap": self.options.bootstrap, "mc_samples": self.options.mc_samples, "seed": self.options.seed}

        def work() -> dict:
            _, evaluation = run_evaluate(EvaluateOptions(
                data=self.options.data, data_format=self.options.data_format, out=out, models=[model], card=card,
                split="test",
                spec=self.options.spec, root=self.options.root, bootstrap=self.options.bootstrap, seed=self.options.seed,
                mc_samples=self.options.mc_samples, force=True, progress=self.options.progress))
            save_replicates(out / "replicates.npz", evaluation.replicates)
            return {"metrics": f"evaluate/{arm}/metrics.json", "replicates": f"evaluate/{arm}/replicates.npz"}

        self.run.stage(f"evaluate_{arm}", inputs, work)
        return json.loads((out / "metrics.json").read_text())

    def plan(self, coverage: dict) -> dict:
        from cxr_audit.coverage import CoverageReport
        from cxr_audit.synthesis.planner import plan_edits

        inputs = {"coverage": sha256_file(self.path / "coverage" / "coverage.json"), "seed": self.options.seed}

        def work() -> dict:
            plan = plan_edits(self.train, self.spec, CoverageReport.model_validate(coverage), self.options.seed)
            document = plan.to_json({k: self.hashes[k] for k in ("data", "spec")})
            document.update({"seed": self.options.seed, "label_policy": self.spec.label_policy.model_dump(mode="json")})
            atomic_write_json(self.path / "plan" / "plan.json", document)
            return {"edits": len(plan.edits)}

        self.run.stage("plan", inputs, work)
        return json.loads((self.path / "plan" / "plan.json").read_text())

    def generator(self) -> tuple[Path, str]:
        from cxr_audit.synthesis.generator import generator_sha256

        if self.options.generator:
            return self.options.generator, self.hashes["generator"]
        from cxr_audit.synthesis.generator import RegionSampler, TrainConfig, train_generator
        from cxr_audit.synthesis.run import training_anatomy

        out = self.path / "generator"
        names = self.findings
        inputs = {"data": self.hashes["data"], "spec": self.hashes["spec"], "size": self.options.generator_size,
                  "steps": self.options.generator_steps, "seed": self.options.seed}

        def work() -> dict:
            size = self.options.generator_size
            anatomy = training_anatomy(self.train, size)
            card = train_generator(self.images("train", size), self.train.labels(names, self.spec.label_policy), names, out,
                                   TrainConfig(steps=self.options.generator_steps, seed=self.options.seed, lr=1e-3,
                                               max_minutes=self.options.generator_minutes),
                                   self.hashes["data"], progress=self.options.progress,
                                   regions=RegionSampler(anatomy, names) if anatomy else None)
            return {"steps": card.steps}

        self.run.stage("generator", inputs, work)
        return out, generator_sha256(out)

    def checker(self):
        """The concept checker for synthesis QC: the user's, or a small one trained here on the real training
        split. Never the model under audit: a model grading its own edits would pass its own blind spots."""
        from cxr_audit.models import load_model

        if self.options.checker:
            return load_model(self.options.checker)
        from cxr_audit.train_classifier import save_classifier, train_checker

        path = self.path / "checker" / "checker.pt"
        names = self.findings
        size = self.options.generator_size
        inputs = {"data": self.hashes["data"], "spec": self.hashes["spec"], "size": size, "seed": self.options.seed}

        def work() -> dict:
            net = train_checker(self.images("train", size), self.train.labels(names, self.spec.label_policy),
                                seed=self.options.seed, progress=self.options.progress)
            save_classifier(net, path, names, size)
            return {"path": "checker/checker.pt", "sha256": sha256_file(path)}

        self.run.stage("checker", inputs, work)
        return load_model(path)

    def synthesize(self, folder: str, generator_dir: Path, generator_hash: str, checker, unconstrained: bool) -> dict:
        from cxr_audit.synthesis.generator import load_generator
        from cxr_audit.synthesis.run import SynthesisOptions, run_synthesis

        inputs = {"plan": sha256_file(self.path / "plan" / "plan.json"), "generator": generator_hash,
                  "checker": checker.sha256, "edit": asdict(self.options.edit)}

        def work() -> dict:
            generator, card = load_generator(generator_dir)
            plan = json.loads((self.path / "plan" / "plan.json").read_text())
            summary = run_synthesis(plan, self.manifest, generator, card, generator_hash, self.path / folder, checker,
                                    SynthesisOptions(settings=self.options.edit, unconstrained=unconstrained,
                                                     progress=self.options.progress))
            return {"accepted": summary["accepted"], "planned": summary["planned"]}

        self.run.stage(folder, inputs, work)
        return json.loads((self.path / folder / "synthesis.json").read_text())

    def finetune(self, arm: str) -> Path:
        from cxr_audit.finetune import CANDIDATE_FILE, TrainingImages, finetune, synthetic_training_images
        from cxr_audit.models import load_model

        out = self.path / "finetune" / arm
        folder = {"cars": "synthetic", "unconstrained": "unconstrained"}.get(arm)
        inputs = {"model": self.hashes["model"], "data": self.hashes["data"], "config": asdict(self.options.finetune),
                  "synthetic": sha256_file(self.path / folder / "synthetic_manifest.csv") if folder else None}

        def work() -> dict:
            model = load_model(self.options.model, self.options.card)
            outputs, policy, size = model.concepts, self.spec.label_policy, model.card.input_size
            if not all(c in self.train.concepts for c in outputs):
                raise UserInputError(f"fine-tuning needs labels for every model output ({', '.join(outputs)}) "
                                     f"in {self.options.data}.")
            real = TrainingImages.real(self.images("train", size), self.train.labels(outputs, policy))
            parts = [real] + ([synthetic_training_images(self.path / folder, outputs, size)] if folder else [])
            validation = TrainingImages.real(self.images("val", size), self.validation.labels(outputs, policy))
            record = finetune(model, TrainingImages.concatenate(parts), validation, out, self.options.finetune, arm,
                              {k: str(v) for k, v in inputs.items()}, self.options.progress)
            return {"candidate": f"finetune/{arm}/{CANDIDATE_FILE}", "sha256": record["candidate"]["sha256"]}

        result = self.run.stage(f"finetune_{arm}", inputs, work)
        return self.path / result["candidate"]

    def probe(self, baseline: dict) -> dict:
        from cxr_audit.models import load_model
        from cxr_audit.probe import probe

        inputs = {"model": self.hashes["model"], "synthesis": sha256_file(self.path / "synthetic" / "synthesis.json"),
                  "seed": self.options.seed}

        def work() -> dict:
            model = load_model(self.options.model, self.options.card)
            thresholds = {c: v["threshold"]["value"] for c, v in baseline["concepts"].items()}
            document = probe(model, self.path / "synthetic", self.manifest, thresholds, seed=self.options.seed,
                             replicates=self.options.bootstrap, progress=self.options.progress)
            atomic_write_json(self.path / "probe" / "probe.json", document)
            return {"pairs": document["pairs_scored"]}

        self.run.stage("probe", inputs, work)
        return json.loads((self.path / "probe" / "probe.json").read_text())

    def gallery(self) -> list[dict]:
        from cxr_audit.report.gallery import build_gallery

        inputs = {"synthesis": sha256_file(self.path / "synthetic" / "synthesis.json"), "size": self.options.gallery_size}

        def work() -> dict:
            return {"items": build_gallery(self.path, self.manifest, self.options.gallery_size)}

        return self.run.stage("gallery", inputs, work)["items"]


def _options_to_json(options: AuditOptions) -> dict:
    document = asdict(options)
    for key in ("model", "data", "spec", "out", "root", "card", "generator", "checker"):
        document[key] = str(document[key]) if document[key] is not None else None
    return document


def options_from_run(run: Path, **changes) -> AuditOptions:
    """The options an existing run was made with (RUN/request.json), for re-running single stages."""
    saved = read_json(Path(run) / "request.json", f"{run} is not an audit run. Start one with "
                      "`cxr-audit audit --out RUN ...`.")["options"]
    for key in ("model", "data", "spec", "out", "root", "card", "generator", "checker"):
        saved[key] = Path(saved[key]) if saved[key] is not None else None
    saved["edit"] = EditSettings(**saved["edit"])
    saved["finetune"] = FinetuneConfig(**saved["finetune"])
    saved.update(changes)
    return AuditOptions(**saved)


def assemble(options: AuditOptions, run: Run, spec, hashes: dict, notes: list[str], coverage: dict, plan: dict,
             synthesis: dict, arms: dict, probe: dict, gallery: list[dict]) -> dict:
    from cxr_audit.evaluation import Evaluation, compare, load_replicates, test_set_sha256
    from cxr_audit.verdict import audit_verdict

    replicates = {arm: load_replicates(run.path / "evaluate" / arm / "replicates.npz") for arm in arms}
    comparisons = {}
    for new, old in COMPARISONS:
        if new in arms and old in arms:
            comparisons[f"{new} vs {old}"] = {"new": new, "old": old, "differences": compare(
                Evaluation(arms[old], replicates[old]), Evaluation(arms[new], replicates[new]))}
    predictions = run.path / "evaluate" / "baseline" / "predictions.npz"
    finetune_records = {arm: json.loads((run.path / "finetune" / arm / "finetune.json").read_text())
                        for arm in arms if arm != "baseline"}
    plan_summary = {"edits": len(plan["edits"]), "cells": plan["cells"], "rejections": plan["rejections"]}
    document = {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scope": {"intended_use": options.intended_use, "model": options.model.name,
                  "concepts": list(arms["baseline"]["concepts"]), "cells": [c.id for c in spec.all_cells()],
                  "test_split": arms["baseline"]["data"]["split"], "n_test_images": arms["baseline"]["n_images"],
                  "n_test_patients": arms["baseline"]["n_patients"]},
        "inputs": {
            "model": {"path": str(options.model), "sha256": hashes["model"], "card": arms["baseline"]["model"]["card"],
                      "format": arms["baseline"]["model"]["format"]},
            "data": {"path": str(options.data), "sha256": hashes["data"], "format": options.data_format},
            "spec": {"path": str(options.spec), "sha256": hashes["spec"]},
            "generator": {"path": str(options.generator or run.path / "generator"),
                          "sha256": synthesis.get("cars", {}).get("generator_sha256"),
                          "trained_in_run": options.generator is None},
            "checker": {"path": str(options.checker or run.path / "checker" / "checker.pt"),
                        "trained_in_run": options.checker is None},
        },
        "environment": environment(),
        "seeds": {"audit": options.seed, "bootstrap": options.seed, "synthesis": "per edit, from the plan"},
        "command_line": " ".join(options.command_line),
        "stage_seconds": run.seconds(),
        "notes": notes,
        "coverage": coverage,
        "plan": plan_summary,
        "synthesis": synthesis,
        "gallery": gallery,
        "arms": {arm: {"title": ARM_TITLES[arm], "metrics": metrics, "finetune": finetune_records.get(arm)}
                 for arm, metrics in arms.items()},
        "comparisons": comparisons,
        "probe": probe,
        "test_set": {"sha256": test_set_sha256(predictions), "predictions": "evaluate/baseline/predictions.npz",
                     "predictions_sha256": sha256_file(predictions),
                     "replicates": "evaluate/baseline/replicates.npz",
                     "replicates_sha256": sha256_file(run.path / "evaluate" / "baseline" / "replicates.npz"),
                     "bootstrap": arms["baseline"]["bootstrap"]},
    }
    document["verdict"] = audit_verdict(document)
    return document
