"""The demo on the embedded default: the whole audit on a procedural phantom, in minutes on two CPU cores.

1. A phantom dataset (64 px) in which Cardiomegaly + Pleural Effusion is rare in training (1%) but common in
   validation and test, so coverage cell PHANTOM-COV-001 is in deficit.
2. A small "deployed" classifier (SmallCXRNet, TorchScript) trained on its training split.
3. The generator shipped in `cxr_audit/demo_assets/generator` (trained on the same training split with
   `cxr-audit demo --rebuild-generator`; its card pins the training data's SHA-256, and the demo checks it).
4. The full audit into the run directory, then report.pdf.

Inputs go to `<out>/../.<name>-inputs/` and are reused when present, so a second `make demo` is quick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from cxr_audit import concepts
from cxr_audit.data import phantom
from cxr_audit.data.phantom_dataset import Combination, Prevalence, write_phantom_dataset
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import sha256_file

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
console = Console(stderr=True)


def demo_dataset(inputs: Path) -> Path:
    labels = inputs / "phantom" / "labels.csv"
    if not labels.exists():
        console.print(f"[bold]demo:[/] rendering {DEMO_IMAGES} phantom studies at {DEMO_SIZE} px")
        tmp = inputs / "phantom.partial"
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        write_phantom_dataset(tmp, DEMO_IMAGES, size=DEMO_SIZE, seed=DEMO_SEED, prevalence=DEMO_PREVALENCE)
        tmp.rename(inputs / "phantom")
    return labels


def _training_arrays(labels: Path, names: list[str]):
    from cxr_audit.data.readers import read_manifest

    train = read_manifest(labels, "chexpert").split("train")
    return train.images(DEMO_SIZE), train.frame[names].to_numpy(np.float32)


def demo_classifier(inputs: Path, labels: Path) -> Path:
    """The 'deployed' model: a SmallCXRNet really trained on the phantom's training split (about a minute)."""
    from cxr_audit.train_classifier import save_classifier, train_small_classifier

    path = inputs / "deployed_model.pt"
    stamp = inputs / "deployed_model.json"
    data_hash = sha256_file(labels)
    if path.exists() and stamp.exists() and json.loads(stamp.read_text()).get("data_sha256") == data_hash:
        return path
    console.print("[bold]demo:[/] training the small deployed classifier")
    names = list(phantom.PHANTOM_FINDINGS)
    images, targets = _training_arrays(labels, names)
    torch.manual_seed(DEMO_SEED)
    net = train_small_classifier(images, targets, epochs=6, seed=DEMO_SEED, width=8, progress=True)
    save_classifier(net, path, names, DEMO_SIZE)
    stamp.write_text(json.dumps({"data_sha256": data_hash, "epochs": 6, "width": 8}))
    return path


def rebuild_generator(labels: Path, minutes: float, steps: int = 20000) -> Path:
    """Retrain the shipped demo generator on the demo's training split (stops after `minutes`)."""
    import shutil

    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import load_spec
    from cxr_audit.synthesis.generator import RegionSampler, TrainConfig, train_generator
    from cxr_audit.synthesis.run import training_anatomy

    names = concepts.findings(load_spec(DEMO_SPEC).concepts)
    train = read_manifest(labels, "chexpert").split("train")
    images, targets = train.images(DEMO_SIZE), train.frame[names].to_numpy(np.float32)
    anatomy = training_anatomy(train, DEMO_SIZE)
    work = ASSETS / "generator.partial"
    train_generator(images, targets, names, work, TrainConfig(steps=steps, lr=1e-3, max_minutes=minutes),
                    sha256_file(labels), regions=RegionSampler(anatomy, names, focus=DEMO_FOCUS))
    (work / "checkpoint.pt").unlink(missing_ok=True)  # the optimizer state is not shipped
    if SHIPPED_GENERATOR.exists():
        shutil.rmtree(SHIPPED_GENERATOR)
    work.rename(SHIPPED_GENERATOR)
    return SHIPPED_GENERATOR


def run_demo(out: Path, retrain_generator: bool = False, generator_minutes: float = 12.0) -> dict:
    from cxr_audit.finetune import FinetuneConfig
    from cxr_audit.pipeline import AuditOptions, run_audit

    out = Path(out)
    inputs = out.parent / f".{out.name}-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    labels = demo_dataset(inputs)
    if retrain_generator:
        rebuild_generator(labels, generator_minutes)
    card_path = SHIPPED_GENERATOR / "generator_card.json"
    if not card_path.exists():
        raise UserInputError(f"The demo generator is missing ({card_path}). Rebuild it with "
                             "`cxr-audit demo --rebuild-generator`.")
    if json.loads(card_path.read_text())["training_data_sha256"] != sha256_file(labels):
        raise UserInputError(f"The shipped demo generator was trained on other data than {labels} (the phantom "
                             "renderer or the demo settings changed). Rebuild it: `cxr-audit demo --rebuild-generator`.")
    model = demo_classifier(inputs, labels)
    options = AuditOptions(
        model=model, data=labels, spec=DEMO_SPEC, out=out, data_format="chexpert", generator=SHIPPED_GENERATOR,
        finetune=FinetuneConfig(steps=300, batch_size=32, lr=5e-4, eval_every=50, patience=4, seed=DEMO_SEED),
        bootstrap=1000, mc_samples=10, seed=DEMO_SEED,
        intended_use="Demonstration on the procedural phantom: the small classifier stands in for a deployed "
                     "chest X-ray triage model that flags eight findings on frontal radiographs.")
    return run_audit(options)
