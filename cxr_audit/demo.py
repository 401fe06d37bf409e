"""The demo on the embedded default: the whole audit on a procedural phantom, in minutes on two CPU cores.

1. A phantom dataset (64 px) in which Cardiomegaly + Pleural Effusion is rare in training (1%) but common in
   validation and test, so coverage cell PHANTOM-COV-001 is in deficit.
2. A small "deployed" classifier (SmallCXRNet) really trained on its training split.
3. The generator shipped in `cxr_audit/demo_assets/generator` (trained on the same training split with
   `cxr-audit demo --rebuild-generator`; its card pins the training data's SHA-256, and the demo checks it).
4. The full audit into the run directory, then report.pdf.

The dataset and the model are stages of the demo run (RUN/inputs/), under the same skip rule as the audit's
own stages: a second `make demo` reuses them, and a copied demo run still finds them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from cxr_audit.classifier.finetune import FinetuneConfig
from cxr_audit.data.phantom.dataset import PHANTOM_VERSION, Combination, Prevalence, write_phantom_dataset
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import FinetuneLayout, RunDir, run_stage
from cxr_audit.stages.context import RunContext

DEMO_IMAGES = 1600
DEMO_SIZE = 64
DEMO_SEED = 0
ASSETS = Path(__file__).parent / "demo_assets"
SHIPPED_GENERATOR = ASSETS / "generator"
DEMO_SPEC = Path(__file__).resolve().parents[1] / "coverage_specs" / "phantom.yaml"
DEMO_PREVALENCE = Prevalence(combinations=[
    Combination(all_of=["Cardiomegaly", "Pleural Effusion"], probability={"train": 0.01, "val": 0.12, "test": 0.12}),
])
# The concepts the demo's plan edits (a test checks this against the plan): most training regions go to them.
DEMO_FOCUS = ["Cardiomegaly", "Pleural Effusion", "Edema"]
DEMO_CLASSIFIER = {"epochs": 6, "width": 8}
DEMO_INTENDED_USE = ("Demonstration on the procedural phantom: the small classifier stands in for a deployed chest "
                     "X-ray triage model that flags eight findings on frontal radiographs.")


class PhantomStage:
    """The demo's dataset: the phantom with its rare cell."""

    name = "demo_phantom"

    def __init__(self, run: RunDir, images: int = DEMO_IMAGES):
        self.rundir, self.images = run, images
        self.folder = self.rundir.made_dataset.parent

    def outputs(self) -> list[Path]:
        return [self.rundir.made_dataset]

    def inputs(self) -> dict:
        return {"images": self.images, "size": DEMO_SIZE, "seed": DEMO_SEED, "phantom_version": PHANTOM_VERSION,
                "prevalence": DEMO_PREVALENCE.model_dump(mode="json")}

    def run(self) -> None:
        write_phantom_dataset(self.folder, self.images, size=DEMO_SIZE, seed=DEMO_SEED, prevalence=DEMO_PREVALENCE)


class DeployedModelStage:
    """The demo's "deployed" model: a SmallCXRNet really trained on the phantom's training split."""

    name = "demo_model"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.made_model.parent

    def outputs(self) -> list[Path]:
        return [self.ctx.run.made_model, FinetuneLayout.card_for(self.ctx.run.made_model)]

    def inputs(self) -> dict:
        return {"data": sha256_file(self.ctx.run.made_dataset), "seed": DEMO_SEED, "size": DEMO_SIZE, **DEMO_CLASSIFIER}

    def run(self) -> None:
        from cxr_audit.classifier.small_cnn import save_classifier, train_small_classifier
        from cxr_audit.data.phantom import PHANTOM_FINDINGS

        names = list(PHANTOM_FINDINGS)
        net = train_small_classifier(self.ctx.images("train", DEMO_SIZE), self.ctx.labels("train", names),
                                     seed=DEMO_SEED, progress=self.ctx.progress, **DEMO_CLASSIFIER)
        save_classifier(net, self.ctx.run.made_model, names, DEMO_SIZE)


def demo_context(out: Path, force: bool = False, images: int = DEMO_IMAGES, progress: bool = True,
                 log=None, check_generator: bool = True, **changes) -> RunContext:
    """The demo run at `out` with its inputs made (or reused): ready for the audit's stages. `changes` override
    configuration values (tests use smaller budgets)."""
    from cxr_audit.stages.pipeline import open_run

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    run = RunDir(out)
    finetune = FinetuneConfig(steps=300, batch_size=32, lr=5e-4, eval_every=50, patience=4)
    given = {"data": run.made_dataset, "format": "chexpert", "spec": DEMO_SPEC, "models": [run.made_model],
             "generator": SHIPPED_GENERATOR, "finetune": {k: v for k, v in finetune.__dict__.items() if k != "seed"},
             "bootstrap": 1000, "mc_samples": 10, "seed": DEMO_SEED, "intended_use": DEMO_INTENDED_USE, **changes}
    ctx = open_run(run, given, force, progress=progress, log=log or print)
    run_stage(run, PhantomStage(run, images), force, ctx.log)
    if check_generator:
        _check_shipped_generator(ctx)
    run_stage(run, DeployedModelStage(ctx), force, ctx.log)
    return ctx


def _check_shipped_generator(ctx: RunContext) -> None:
    card_path = SHIPPED_GENERATOR / "generator_card.json"
    if ctx.path("generator") != SHIPPED_GENERATOR:
        return
    if not card_path.exists():
        raise UserInputError(f"The demo generator is missing ({card_path}). Rebuild it with "
                             "`cxr-audit demo --rebuild-generator`.")
    if json.loads(card_path.read_text())["training_data_sha256"] != ctx.data_sha256:
        raise UserInputError(f"The shipped demo generator was trained on other data than {ctx.path('data')} (the "
                             "phantom renderer or the demo settings changed). Rebuild it: `cxr-audit demo "
                             "--rebuild-generator`.")


def rebuild_demo_generator(ctx: RunContext, minutes: float, steps: int = 20000) -> Path:
    """Retrain the shipped demo generator on the demo's training split (stops after `minutes`)."""
    from cxr_audit.anatomy.masks import dataset_anatomy
    from cxr_audit.synthesis.generator.regions import RegionSampler
    from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

    names = ctx.findings
    anatomy = dataset_anatomy(ctx.frontal("train"), DEMO_SIZE)
    work = ASSETS / "generator.partial"
    train_generator(ctx.images("train", DEMO_SIZE), ctx.labels("train", names), names, work,
                    TrainConfig(steps=steps, lr=1e-3, max_minutes=minutes), ctx.data_sha256,
                    regions=RegionSampler(anatomy, names, focus=DEMO_FOCUS))
    (work / "checkpoint.pt").unlink(missing_ok=True)  # the optimizer state is not shipped
    if SHIPPED_GENERATOR.exists():
        shutil.rmtree(SHIPPED_GENERATOR)
    work.rename(SHIPPED_GENERATOR)
    return SHIPPED_GENERATOR

