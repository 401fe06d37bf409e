"""Shared fixtures: where the real data lives, and a helper to run the CLI as a user would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxr_audit.cli import app

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXR_AUDIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Cached predictions and decoded images go to a folder of this test session, never the user's cache."""
    folder = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("CXR_AUDIT_CACHE")
    os.environ["CXR_AUDIT_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CXR_AUDIT_CACHE", None)
    else:
        os.environ["CXR_AUDIT_CACHE"] = previous


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set CXR_AUDIT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def run_cli():
    """Invoke `cxr-audit ARGS...`; returns the click Result (exit_code, stdout, stderr)."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture()
def open_test_run():
    """A run context as a command opens it: `open_test_run(out, data=..., spec=..., ...)` (quiet)."""
    from cxr_audit.rundir import RunDir
    from cxr_audit.stages.pipeline import open_run

    def make(out, force: bool = False, cache_dir=None, workers: int = 0, **given):
        return open_run(RunDir(out), given, force, progress=False, log=lambda message: None, workers=workers,
                        cache_dir=cache_dir)

    return make


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory) -> Path:
    """A small phantom dataset (360 studies, 64 px) with train/val/test splits."""
    from cxr_audit.data.phantom.dataset import write_phantom_dataset

    out = tmp_path_factory.mktemp("phantom") / "dataset"
    write_phantom_dataset(out, 360, size=64, seed=21, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def phantom_model(phantom_dataset, tmp_path_factory) -> Path:
    """A SmallCXRNet really trained on the phantom's training split, saved as TorchScript with a card."""
    import numpy as np
    import torch
    import yaml

    from cxr_audit.classifier.small_cnn import train_small_classifier
    from cxr_audit.data import phantom
    from cxr_audit.data.images import load_resized
    from cxr_audit.data.readers import read_manifest

    torch.set_num_threads(2)
    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    images = np.stack([load_resized(train.resolve_image(p), 64) for p in train.frame["path"]])[:, None]
    labels = train.frame[list(phantom.PHANTOM_FINDINGS)].to_numpy(np.float32)
    net = train_small_classifier(images, labels, epochs=6, seed=0, width=8)
    path = tmp_path_factory.mktemp("model") / "phantom_cnn.ts"
    torch.jit.script(net).save(str(path))
    card = {"input_size": 64, "channels": 1, "normalization": "unit", "outputs": "logits",
            "output_names": list(phantom.PHANTOM_FINDINGS)}
    path.with_name(path.name + ".card.yaml").write_text(yaml.safe_dump(card))
    return path


@pytest.fixture(scope="session")
def phantom_checker(phantom_dataset, tmp_path_factory) -> Path:
    """A QC checker for audits that are given one (they skip training their own): a SmallCXRNet of its own
    weights, trained one epoch on the phantom's training split, saved as safetensors with its card."""
    import numpy as np

    from cxr_audit.classifier.small_cnn import save_classifier, train_small_classifier
    from cxr_audit.data import phantom
    from cxr_audit.data.readers import read_manifest

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    names = list(phantom.PHANTOM_FINDINGS)
    net = train_small_classifier(train.images(64), train.frame[names].to_numpy(np.float32), epochs=1, seed=3, width=4)
    path = tmp_path_factory.mktemp("checker") / "checker.safetensors"
    save_classifier(net, path, names, 64)
    return path


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """A tiny random Stable-Diffusion-layout pipeline on disk (tests/tiny_diffusers.py)."""
    from tiny_diffusers import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("roentgen-like"))


@pytest.fixture(scope="session")
def tiny_generator(phantom_dataset, tmp_path_factory) -> Path:
    """A concept-conditioned generator trained for 4 steps: real weights, no skill (for plumbing tests)."""
    import numpy as np

    from cxr_audit.data import phantom
    from cxr_audit.data.images import load_resized
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.synthesis.generator.training import TrainConfig, train_generator

    train = read_manifest(phantom_dataset / "labels.csv", "chexpert").split("train")
    images = np.stack([load_resized(train.resolve_image(p), 64) for p in train.frame["path"][:32]])[:, None]
    labels = train.frame[list(phantom.PHANTOM_FINDINGS)].to_numpy(np.float32)[:32]
    out = tmp_path_factory.mktemp("generator")
    train_generator(images, labels, list(phantom.PHANTOM_FINDINGS), out, TrainConfig(steps=4, batch_size=4),
                    "d", (8, 16), progress=False)
    return out


PHANTOM_SPEC = REPO / "coverage_specs" / "phantom.yaml"


def audit_options(phantom_dataset, phantom_model, tiny_generator, spec, checker, **changes) -> dict:
    """Small budgets keep the test fast; the flow is the real one (the checker is given: the stage contract's
    tests train one in the run)."""
    return {"models": [phantom_model], "data": phantom_dataset / "labels.csv", "spec": spec,
            "generator": tiny_generator, "checker": checker, "edit": {"steps": 4, "strength": 0.5, "guidance": 2.0}, "bootstrap": 100,
            "mc_samples": 2, "finetune": {"steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 3},
            **changes}


def audit(out, options: dict, force: bool = False):
    from cxr_audit.rundir import RunDir
    from cxr_audit.stages.pipeline import open_run, run_audit

    ctx = open_run(RunDir(out), options, force, progress=False, log=lambda message: None, workers=0)
    return run_audit(ctx, force).model_dump(mode="json")


@pytest.fixture(scope="session")
def audit_run(phantom_dataset, phantom_model, tiny_generator, phantom_checker, tmp_path_factory):
    folder = tmp_path_factory.mktemp("audit")
    spec = folder / "spec.yaml"  # small synthesis budgets keep the test fast
    spec.write_text(PHANTOM_SPEC.read_text() + "synthesis: {budget_per_cell: 3, attempts_per_edit: 1}\n")
    out = folder / "run"
    document = audit(out, audit_options(phantom_dataset, phantom_model, tiny_generator, spec, phantom_checker))
    return out, spec, document


def minimal_audit_document(metrics, test_set: str = "T" * 64, coverage_count: int = 12, synthetic: int = 5,
                           rejected: int = 2, replicates_sha256: str = "r" * 64, model_path: str = "model.pt") -> dict:
    """A complete, valid audit.json around real metrics (a MetricsDocument's scores, from `evaluate`), with the
    other sections as small as the schema allows: what the gate, compare and report tests read."""
    from cxr_audit.audit.document import AuditDocument
    from cxr_audit.coverage import CellCoverage, CoverageReport, DatasetSummary
    from cxr_audit.evaluation.documents import MetricsDocument, ProbeDocument
    from cxr_audit.spec import LabelPolicy
    from cxr_audit.synthesis.documents import SynthesisSummary

    metrics = MetricsDocument(tool_version="test", notes=[], **metrics,
                              model={"path": model_path, "sha256": "a" * 64, "format": "torchscript"},
                              data={"path": "labels.csv", "sha256": "d" * 64, "format": "csv", "split": "test",
                                    "label_policy": {}})
    cell = CellCoverage(id="HF", all_of=["Cardiomegaly", "Pleural Effusion"], none_of=[], subgroup=None,
                        count=coverage_count, patients=coverage_count, min_count=15,
                        deficit=max(0, 15 - coverage_count), plausible=True, violations=[], by_sex={}, by_view={},
                        by_age_band={})
    coverage = CoverageReport(inputs_sha256={}, spec_path="spec.yaml", label_policy=LabelPolicy(), concepts={},
                              rules=[], cells=[cell], cooccurrence={},
                              dataset=DatasetSummary(path="labels.csv", format="csv", split="train",
                                                     n_images=100, n_patients=50, n_images_read=100,
                                                     frontal_only=True, notes=[]))
    synthesis = SynthesisSummary(generator_sha256="g" * 64, generator={}, mode="masked (CARS)", settings={},
                                 qc_thresholds={}, planned=10, accepted=10 - rejected, rejected=rejected,
                                 rejected_by_reason={}, mean_outside_mae=0.0,
                                 accepted_by_cell={"HF": synthetic, "OTHER": 10 - rejected - synthetic},
                                 checker_agreement=None, mean_ground_truth_mae=None)
    bootstrap = metrics.bootstrap
    probe = ProbeDocument(model={}, synthesis={}, pairs_scored=0, accepted_only=True, thresholds={},
                          bootstrap=bootstrap, by_concept={}, by_cell={}, pairs=[])
    document = AuditDocument(
        tool_version="test", created="2026-01-01T00:00:00Z",
        scope={"intended_use": "test", "model": model_path, "concepts": list(metrics.concepts), "cells": ["HF"],
               "test_split": "test", "n_test_images": metrics.n_images, "n_test_patients": metrics.n_patients},
        inputs={"model": {"path": model_path, "sha256": "a" * 64}}, environment={}, seeds={}, command_line="",
        stage_seconds={}, notes=[], coverage=coverage, plan={"edits": 0, "cells": [], "rejections": []},
        synthesis={"cars": synthesis}, gallery=[], arms={"baseline": {"title": "Deployed", "metrics": metrics}},
        comparisons={}, probe=probe,
        test_set={"sha256": test_set, "predictions": "evaluate/baseline/predictions.npz", "predictions_sha256": "p" * 64,
                  "replicates": "evaluate/baseline/replicates.npz", "replicates_sha256": replicates_sha256,
                  "bootstrap": bootstrap},
        verdict={"status": "no concerns", "headline": "", "concerns": [], "strengths": [], "thresholds": {}, "note": ""})
    return document.model_dump(mode="json")


def coverage_of(labels: Path, spec_text: str, fmt: str = "csv"):
    """The coverage report of a small labels file already written at `labels` under a spec given as text."""
    from cxr_audit.coverage import analyse_coverage
    from cxr_audit.data.readers import read_manifest
    from cxr_audit.spec import load_spec

    spec = labels.parent / "spec.yaml"
    spec.write_text(spec_text)
    manifest = read_manifest(labels, fmt)
    return analyse_coverage(manifest, load_spec(spec), spec, {}, notes=list(manifest.notes))
