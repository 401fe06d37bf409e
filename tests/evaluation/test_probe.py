"""The probe of the frozen model, on pairs whose truth is known: the phantom's exact counterfactuals."""

import json

import numpy as np
import pytest
from PIL import Image

from cxr_audit.classifier.loading import load_model
from cxr_audit.data import phantom
from cxr_audit.data.phantom.dataset import study_of
from cxr_audit.data.readers import read_manifest
from cxr_audit.errors import UserInputError
from cxr_audit.rundir import SynthesisLayout
from cxr_audit.stages.probe import probe_synthesis
from cxr_audit.synthesis.documents import EditRecord, SynthesisSummary

QC = {"outside_mae": 0.0, "outside_ssim": 1.0, "alignment": None, "checker_before": None, "checker_after": None,
      "texture_ratio": 1.0, "ground_truth_mae": 0.0, "passed": True, "reasons": []}


def _write_pairs(folder, manifest, concept, op, n):
    """A synthesize-run folder whose 'edits' are the renderer's true counterfactuals."""
    layout = SynthesisLayout(folder)
    layout.images.mkdir(parents=True)
    layout.records.mkdir()
    frame = manifest.frame
    wanted = 0 if op == "insert" else 1
    rows = frame[(frame[concept] == wanted) & (frame["split"] == "train")].head(n)
    for k, (_, row) in enumerate(rows.iterrows()):
        study = phantom.counterfactual(study_of(row), **{"add" if op == "insert" else "remove": concept})
        _save_pair(layout, f"e{k:03d}", study, row, op, concept, {})
    _save_summary(layout, len(rows))
    return len(rows)


def _save_pair(layout, edit_id, edited_study, row, op, concept, target_vector, to=None):
    """The edited image, and its source as the synthesize stage saves it (at the generator's size)."""
    layout.sources.mkdir(exist_ok=True)
    for study, path in ((edited_study, layout.image(edit_id)), (study_of(row), layout.source(edit_id))):
        Image.fromarray(np.round(phantom.render(study, 64).image * 255).astype(np.uint8)).save(path)
    record = EditRecord(edit_id=edit_id, cell_id="CELL", source_image_id=row["image_id"], patient_id="p",
                        operations=[{"op": op, "concept": concept, "to": to}], target_vector=target_vector, seed=0,
                        source_sha256="s", generator_sha256="truth", qc=QC, sex=None, age=None, view=None)
    layout.record(edit_id).write_text(record.model_dump_json())


def _save_summary(layout, n):
    summary = SynthesisSummary(generator_sha256="truth", generator={"image_size": 64}, mode="truth", settings={},
                               qc_thresholds={}, planned=n, accepted=n, rejected=0, rejected_by_reason={},
                               accepted_by_cell={"CELL": n} if n else {}, mean_outside_mae=0.0, checker_agreement=None,
                               mean_ground_truth_mae=0.0)
    layout.summary.write_text(summary.model_dump_json())


@pytest.mark.parametrize("op", ["insert", "delete"])
def test_probe_follows_true_counterfactuals(phantom_dataset, phantom_model, tmp_path, op):
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    n = _write_pairs(tmp_path, manifest, "Cardiomegaly", op, 20)
    document = probe_synthesis(load_model(phantom_model), SynthesisLayout(tmp_path), manifest, {"Cardiomegaly": 0.5},
                     replicates=200, progress=False).model_dump(mode="json")
    entry = document["by_concept"][f"{op} Cardiomegaly"]
    assert entry["pairs"] == n == document["pairs_scored"]
    # a trained model's score follows the one finding that changed, on a clear majority of pairs
    assert entry["share_expected_direction"]["value"] >= 0.8
    assert entry["directional_change"]["ci"][0] > 0
    if op == "insert":
        assert entry["mean_score_after"] > entry["mean_score_before"]
    # other findings hardly move: the counterfactual changes nothing outside the heart
    assert entry["leakage"]["value"] < entry["directional_change"]["value"]
    assert document["by_cell"]["CELL"]["pairs"] == n


def test_probe_of_a_foreign_synthesis_is_refused(phantom_dataset, phantom_model, tmp_path):
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    _write_pairs(tmp_path, manifest, "Cardiomegaly", "insert", 2)
    record = SynthesisLayout(tmp_path).record("e000")
    data = json.loads(record.read_text())
    data["source_image_id"] = "not-in-this-dataset"
    record.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="not in the data"):
        probe_synthesis(load_model(phantom_model), SynthesisLayout(tmp_path), manifest, {}, progress=False)


def test_probe_names_a_side_effect_on_a_concept_the_edit_did_not_touch(phantom_dataset, phantom_model, tmp_path):
    """Pairs whose record says 'insert Nodule' but whose image also lost its effusion: the model's effusion
    score falls although the label says the effusion is still there. The probe must name that side effect as
    harmful, and must not flag the untouched concepts of true counterfactuals."""
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    layout, _ = _planted_with_null_edits(tmp_path, manifest, lambda study: study)
    document = probe_synthesis(load_model(phantom_model), layout, manifest, {}, replicates=200, progress=False)
    effect = document.side_effects["insert Nodule -> Pleural Effusion (present)"]
    assert effect.pairs == 20 and effect.harmful
    assert effect.share_harmful.ci[0] > 0.5 and effect.mean_harm.ci[0] > 0
    # Cardiomegaly was not touched by either change: no harmful side effect is claimed on it
    assert not any(e.harmful for key, e in document.side_effects.items() if e.concept == "Cardiomegaly")


def _planted_with_null_edits(folder, manifest, null_change):
    """The planted 'insert Nodule' pairs (which also lose the effusion) and, under the same edit ids, null edits
    whose image is `null_change(source study)`."""
    edits, nulls = SynthesisLayout(folder / "edits"), SynthesisLayout(folder / "nulls")
    for layout in (edits, nulls):
        layout.images.mkdir(parents=True)
        layout.records.mkdir()
    frame = manifest.frame
    rows = frame[(frame["Pleural Effusion"] == 1) & (frame["Nodule"] == 0)].head(20)
    names = list(phantom.PHANTOM_FINDINGS)
    for k, (_, row) in enumerate(rows.iterrows()):
        source = study_of(row)
        edited = phantom.counterfactual(phantom.counterfactual(source, add="Nodule"), remove="Pleural Effusion")
        target = {n: float(row[n]) for n in names} | {"Nodule": 1.0}
        _save_pair(edits, f"p{k:03d}", edited, row, "insert", "Nodule", target)
        _save_pair(nulls, f"p{k:03d}", null_change(source), row, "insert", "Nodule", {n: float(row[n]) for n in names})
    for layout in (edits, nulls):
        _save_summary(layout, len(rows))
    return edits, nulls


def test_side_effects_are_measured_against_the_null_edits(phantom_dataset, phantom_model, tmp_path):
    """A shift that regenerating the region causes by itself (here: the null edit loses the effusion too) is
    not the edit's side effect; against null edits that leave the image as it was, the planted one still is."""
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    model = load_model(phantom_model)
    key = "insert Nodule -> Pleural Effusion (present)"
    edits, texture = _planted_with_null_edits(tmp_path / "a", manifest,
                                              lambda study: phantom.counterfactual(study, remove="Pleural Effusion"))
    netted = probe_synthesis(model, edits, manifest, {}, replicates=200, progress=False, null_edits=texture)
    assert netted.side_effects[key].baseline == "null edit" and not netted.side_effects[key].harmful
    edits, unchanged = _planted_with_null_edits(tmp_path / "b", manifest, lambda study: study)
    kept = probe_synthesis(model, edits, manifest, {}, replicates=200, progress=False, null_edits=unchanged)
    assert kept.side_effects[key].harmful and kept.side_effects[key].pairs == 20
    raw = probe_synthesis(model, edits, manifest, {}, replicates=200, progress=False)
    assert raw.side_effects[key].baseline == "source"
    # a null edit identical to its source changes nothing: the netted shift is the raw one
    assert kept.side_effects[key].mean_harm.value == pytest.approx(raw.side_effects[key].mean_harm.value, abs=0.01)


def test_a_swap_is_probed_both_ways(phantom_dataset, phantom_model, tmp_path):
    """True swap counterfactuals (the effusion removed and a pneumothorax drawn in its place): the model's
    effusion score should fall and its pneumothorax score rise, each judged in its own direction. This small
    model sees effusions well and pneumothoraces poorly: the probe says the first follows the swap and the
    second does not (the verdict then names it)."""
    manifest = read_manifest(phantom_dataset / "labels.csv", "chexpert")
    layout = SynthesisLayout(tmp_path)
    layout.images.mkdir(parents=True)
    layout.records.mkdir()
    frame = manifest.frame
    rows = frame[(frame["Pleural Effusion"] == 1) & (frame["Pneumothorax"] == 0)].head(16)
    names = list(phantom.PHANTOM_FINDINGS)
    for k, (_, row) in enumerate(rows.iterrows()):
        edited = phantom.counterfactual(phantom.counterfactual(study_of(row), remove="Pleural Effusion"),
                                        add="Pneumothorax")
        target = {n: float(row[n]) for n in names} | {"Pleural Effusion": 0.0, "Pneumothorax": 1.0}
        _save_pair(layout, f"w{k:03d}", edited, row, "swap", "Pleural Effusion", target, to="Pneumothorax")
    _save_summary(layout, len(rows))
    document = probe_synthesis(load_model(phantom_model), layout, manifest, {}, replicates=200, progress=False)
    out, into = document.by_concept["swap out Pleural Effusion"], document.by_concept["swap in Pneumothorax"]
    assert out.pairs == into.pairs == len(rows) and document.pairs_scored == 2 * len(rows)
    assert (out.expected_direction, into.expected_direction) == (-1, 1)
    assert out.mean_score_after < out.mean_score_before and out.share_expected_direction.value >= 0.8
    assert out.directional_change.ci[0] > 0  # signed so that the expected fall counts as positive
    assert into.share_expected_direction.value < 0.5 and into.flip_rate.value == 0
    from cxr_audit.audit.verdict import MIN_PROBE_SHARE
    assert into.share_expected_direction.value < MIN_PROBE_SHARE <= out.share_expected_direction.value
    # a swap touches both concepts: neither is counted as its side effect
    assert not any(e.concept in ("Pleural Effusion", "Pneumothorax") for e in document.side_effects.values())
