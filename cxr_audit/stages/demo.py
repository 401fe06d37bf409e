"""The demo on the embedded default: the whole audit on a procedural phantom, in minutes on two CPU cores.

1. A phantom dataset (64 px) with two coverage failures as they occur in real films (`DEMO_SCENARIO`):
   - interaction: Cardiomegaly + Pleural Effusion is rare in training (1%) but common at the deployment site
     (val and test, 12%), and fluid against the heart effaces its border (the silhouette sign), so an enlarged
     heart under an effusion looks unlike one alone (cell PHANTOM-COV-001);
   - confounding: in training, effusions come with support devices (ICU films: 95% against 5% without), at
     the site they are independent; the cells that break the shortcut (PHANTOM-COV-006, -007) are thin.
   Findings are drawn at 28% contrast from severity 0.2 up, so they are not trivially separable (at full
   contrast a converged small CNN reaches AUROC 0.99 on every finding, and no coverage gap can show).
   Training is the vendor's development data; val and test are the deployment site's.
2. A small "deployed" classifier (SmallCXRNet) trained to convergence (early stopping on validation loss)
   on the training split, so that fine-tuning arms differ by the data they see, not by extra steps.
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

from cxr_audit.classifier.card import card_file
from cxr_audit.classifier.finetune import FinetuneConfig
from cxr_audit.data.phantom.dataset import (
    PHANTOM_VERSION,
    AppearanceSettings,
    Combination,
    Dependence,
    Prevalence,
    write_phantom_dataset,
)
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file
from cxr_audit.rundir import RunDir
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.runner import run_stage

DEMO_IMAGES = 1600
DEMO_SIZE = 64
DEMO_SEED = 0
# The demo's CPU threads, fixed whatever the machine: float sums split over threads round differently, so a
# model trained on 1, 2 or 4 threads differs in its last bits after a few steps, and an audit's numbers follow
# (the demo took min(4, cores) before, so machines with different core counts disagreed). With the count fixed,
# the demo gives the method study's seed-0 numbers on any machine of the same CPU architecture.
DEMO_THREADS = 2
ASSETS = Path(__file__).parents[1] / "demo_assets"
SHIPPED_GENERATOR = ASSETS / "generator"
DEMO_SPEC = Path(__file__).resolve().parents[2] / "coverage_specs" / "phantom.yaml"
DEMO_SCENARIO = Prevalence(
    combinations=[Combination(all_of=["Cardiomegaly", "Pleural Effusion"],
                              probability={"train": 0.01, "val": 0.12, "test": 0.12})],
    dependencies=[Dependence(finding="Support Devices", on="Pleural Effusion",
                             if_present={"train": 0.95, "default": 0.25}, if_absent={"train": 0.05, "default": 0.25})],
    appearance=AppearanceSettings(silhouette=True, contrast=0.28, severity=(0.2, 1.0)),
)
# The cells the scenario plants (the method validation measures these).
DEMO_TARGET_CELLS = ["PHANTOM-COV-001", "PHANTOM-COV-006", "PHANTOM-COV-007"]
# The concepts the demo's plan edits (a test checks this against the plan): most training regions go to them.
DEMO_FOCUS = ["Cardiomegaly", "Pleural Effusion", "Support Devices", "Pneumothorax"]
DEMO_CLASSIFIER = {"max_epochs": 40, "patience": 4, "width": 8, "lr": 2e-3}
DEMO_INTENDED_USE = ("Demonstration on the procedural phantom: the small classifier stands in for a deployed chest "
                     "X-ray triage model that flags eight findings on frontal radiographs.")


class PhantomStage:
    """The demo's dataset: the phantom with its rare cell."""

    name = "demo_phantom"
    needs = ()

    def __init__(self, run: RunDir, images: int = DEMO_IMAGES, seed: int = DEMO_SEED):
        self.rundir, self.images, self.seed = run, images, seed
        self.folder = self.rundir.made_dataset.parent

    def outputs(self) -> list[Path]:
        return [self.rundir.made_dataset]

    def inputs(self) -> dict:
        return {"images": self.images, "size": DEMO_SIZE, "seed": self.seed, "phantom_version": PHANTOM_VERSION,
                "prevalence": DEMO_SCENARIO.model_dump(mode="json")}

    def run(self) -> None:
        write_phantom_dataset(self.folder, self.images, size=DEMO_SIZE, seed=self.seed, prevalence=DEMO_SCENARIO)


class DeployedModelStage:
    """The demo's "deployed" model: a SmallCXRNet trained to convergence on the phantom's training split
    (early stopping on the validation split); its card records the training."""

    name = "demo_model"
    needs = ("demo_phantom",)

    def __init__(self, ctx: RunContext, seed: int = DEMO_SEED):
        self.ctx, self.seed = ctx, seed
        self.folder = self.ctx.run.made_model.parent

    def outputs(self) -> list[Path]:
        return [self.ctx.run.made_model, card_file(self.ctx.run.made_model)]

    def inputs(self) -> dict:
        return {"data": sha256_file(self.ctx.run.made_dataset), "seed": self.seed, "size": DEMO_SIZE,
                "training": "to convergence", **DEMO_CLASSIFIER}

    def run(self) -> None:
        from cxr_audit.classifier.small_cnn import save_classifier, train_to_convergence
        from cxr_audit.data.phantom import PHANTOM_FINDINGS

        names, ctx = list(PHANTOM_FINDINGS), self.ctx
        # the demo's phantom is small: its model trains from memory
        net, record = train_to_convergence(ctx.images("train", DEMO_SIZE).to_array(), ctx.labels("train", names),
                                           ctx.images("val", DEMO_SIZE).to_array(), ctx.labels("val", names),
                                           seed=self.seed,
                                           progress=ctx.progress, **DEMO_CLASSIFIER)
        save_classifier(net, ctx.run.made_model, names, DEMO_SIZE,
                        training={"data": "the phantom's training split", **record.card_entry()})


def demo_context(out: Path, force: bool = False, images: int = DEMO_IMAGES, progress: bool = True,
                 log=None, check_generator: bool = True, seed: int = DEMO_SEED, labels_from_reports: bool = False,
                 **changes) -> RunContext:
    """The demo run at `out` with its inputs made (or reused): ready for the audit's stages. `seed` draws the
    data, the deployed model and the run (the method benchmark repeats the demo over seeds); with
    `labels_from_reports` the concept vectors come from the phantom's reports (`label-reports`), not from its
    known findings; `changes` override configuration values (tests use smaller budgets)."""
    from cxr_audit.stages.pipeline import open_run
    from cxr_audit.stages.report_labels import ReportLabelsStage

    torch.set_num_threads(DEMO_THREADS)
    run = RunDir(out)
    finetune = FinetuneConfig(steps=300, batch_size=32, lr=5e-4, eval_every=50, patience=4)
    data = ({"data": run.made_report_labels, "format": "csv", "root": run.made_dataset.parent} if labels_from_reports
            else {"data": run.made_dataset, "format": "chexpert"})
    given = {**data, "spec": DEMO_SPEC, "models": [run.made_model],
             "generator": SHIPPED_GENERATOR, "finetune": {k: v for k, v in finetune.__dict__.items() if k != "seed"},
             "bootstrap": 1000, "mc_samples": 10, "seed": seed, "intended_use": DEMO_INTENDED_USE, **changes}
    ctx = open_run(run, given, force, progress=progress, log=log or print)
    run_stage(run, PhantomStage(run, images, seed), force, ctx.log)
    if labels_from_reports:
        run_stage(run, ReportLabelsStage(run), force, ctx.log)
    if check_generator:
        _check_shipped_generator(ctx)
    run_stage(run, DeployedModelStage(ctx, seed), force, ctx.log)
    return ctx


def _check_shipped_generator(ctx: RunContext) -> None:
    card_path = SHIPPED_GENERATOR / "generator_card.json"
    if ctx.path("generator") != SHIPPED_GENERATOR:
        return
    if not card_path.exists():
        raise UserInputError(f"The demo generator is missing ({card_path}). Rebuild it with "
                             "`cxr-audit demo --rebuild-generator`.")
    # the generator was trained on the phantom's images and known findings (also under labels from reports)
    if json.loads(card_path.read_text())["training_data_sha256"] != sha256_file(ctx.run.made_dataset):
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

