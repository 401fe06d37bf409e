"""The text-conditioned backend, on a tiny randomly initialised Stable Diffusion pipeline saved to disk (the
layout of RoentGen's weights): prompts from concept vectors, loading from local files only, masked edits
that keep everything outside the region, determinism, and the synthesis run through it."""

import json

import numpy as np

from cxr_audit import concepts
from cxr_audit.rundir import RunDir
from cxr_audit.synthesis.backends import backend_sha256, load_backend
from cxr_audit.synthesis.editor import EditSettings
from cxr_audit.synthesis.text_backend import NORMAL_PROMPT, TextConditionedGenerator, prompt_for

NAMES = ["Cardiomegaly", "Pleural Effusion", "Edema"]


def test_prompts_name_present_findings_and_steer_away_from_absent_ones():
    assert prompt_for(np.array([1, 1, np.nan]), NAMES) == ("Cardiomegaly and pleural effusion.", "")
    assert prompt_for(np.array([0, 1, 0]), NAMES) == ("Pleural effusion.", "cardiomegaly, edema")
    assert prompt_for(np.array([0, 0, 0]), NAMES)[0] == NORMAL_PROMPT
    assert prompt_for(np.array([1, 1, 1]), NAMES)[0] == "Cardiomegaly, pleural effusion and edema."


def test_pipeline_folder_loads_as_a_generator_with_a_pinned_identity(tiny_pipeline, tmp_path):
    import shutil

    generator = load_backend(tiny_pipeline, device="cpu")
    assert isinstance(generator, TextConditionedGenerator)
    card = generator.card()
    assert generator.image_size == 64 and "Cardiomegaly" in generator.concepts
    assert concepts.NO_FINDING not in generator.concepts
    assert "unet/diffusion_pytorch_model.safetensors" in card["files"]
    identity = backend_sha256(tiny_pipeline)
    assert generator.sha256 == identity
    changed = tmp_path / "changed"
    shutil.copytree(tiny_pipeline, changed)
    config = json.loads((changed / "unet" / "config.json").read_text())
    config["_note"] = "edited"
    (changed / "unet" / "config.json").write_text(json.dumps(config))
    assert backend_sha256(changed) != identity


def test_masked_text_edit_keeps_the_outside_and_is_deterministic(tiny_pipeline):
    generator = load_backend(tiny_pipeline, device="cpu")
    rng = np.random.default_rng(0)
    size = generator.image_size
    sources = rng.random((2, size, size)).astype(np.float32)
    masks = np.zeros((2, size, size), bool)
    masks[:, 20:44, 16:48] = True
    soft = masks.astype(np.float32)
    targets = np.full((2, len(generator.concepts)), np.nan, np.float32)
    targets[:, generator.concepts.index("Cardiomegaly")] = 1
    settings = EditSettings(steps=4, strength=1.0, guidance=3.0)
    edited = generator.edit(sources, targets, masks, soft, settings, seed=3)
    assert edited.shape == sources.shape
    assert np.array_equal(edited[~masks], sources[~masks])  # outside the region: the source, exactly
    assert np.abs(edited[masks] - sources[masks]).mean() > 0.01  # inside: regenerated
    assert np.array_equal(edited, generator.edit(sources, targets, masks, soft, settings, seed=3))
    other = targets.copy()
    other[:, generator.concepts.index("Cardiomegaly")] = 0
    other[:, generator.concepts.index("Pleural Effusion")] = 1
    assert not np.array_equal(edited, generator.edit(sources, other, masks, soft, settings, seed=3))  # the prompt counts
    unconstrained = generator.edit(sources, targets, None, None, settings, seed=3)
    assert np.abs(unconstrained[~masks] - sources[~masks]).mean() > 0.01


def test_synthesis_run_goes_through_the_text_backend(tiny_pipeline, phantom_dataset, tmp_path):
    from typer.testing import CliRunner

    from cxr_audit.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(open("coverage_specs/phantom.yaml").read() + "synthesis: {budget_per_cell: 2, attempts_per_edit: 1}\n")
    runner = CliRunner()
    data = ["--data", str(phantom_dataset / "labels.csv"), "--format", "chexpert"]
    run = RunDir(tmp_path / "run")
    assert runner.invoke(app, ["plan", *data, "--spec", str(spec), "--out", str(run.path)]).exit_code == 0
    result = runner.invoke(app, ["synthesize", "--run", str(run.path), "--generator", str(tiny_pipeline), "--steps", "3"])
    assert result.exit_code == 0, result.output
    layout = run.synthesis("cars")
    summary = json.loads(layout.summary.read_text())
    assert summary["planned"] > 0 and summary["generator"]["prompt_style"] == "cxr-audit-impression-v1"
    assert summary["generator_sha256"] == backend_sha256(tiny_pipeline)
    records = [json.loads(p.read_text()) for p in layout.records.glob("*.json")]
    # masked: outside the region only the feathered rim may differ from the source
    assert records and all(r["qc"]["outside_mae"] <= 0.002 for r in records)
