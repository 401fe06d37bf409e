"""Probe the frozen model with (source, edited) pairs: does its score follow the one concept that changed?

For each pair the model scores the source and the edit. The edited concept's score should rise on an
insertion and fall on a deletion (reported as a signed "directional change": positive is the expected
direction), the prediction at the operating threshold may flip, and concepts that were not edited should
not move (leakage). Side effects name where they move: for each edit and each concept it did not touch, the
shift of that concept's score toward the wrong answer (down where the concept is present, up where it is
absent). A model that learned a shortcut shows it here: deleting Support Devices lowers its Pleural Effusion
score although the effusion is still there. A side effect is *harmful* when both the share of pairs moving
the wrong way (Wilson interval above 50%) and the mean shift (bootstrap interval above 0) exclude chance, and
the mean shift is at least 0.02. The source goes through the same resize as the edit (down to the generator's size and
back up), so resolution is not mistaken for the concept. No weights change.

With the null edits of the same plan (the same regions regenerated under each source's own vector: the
texture control), a side effect is measured against them: the edit's shift minus its null edit's shift on
the same source. What regenerating a region does to any concept (texture, smoothing) then cancels, and what
remains is what the inserted or deleted finding does.
"""

from __future__ import annotations

import numpy as np

from cxr_audit.classifier.adapter import LoadedModel
from cxr_audit.data.images import load_resized
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import ProbeDocument
from cxr_audit.metrics.bootstrap import bootstrap_mean, proportion_interval
from cxr_audit.progress import progress_bar
from cxr_audit.rundir import SynthesisLayout

MIN_SIDE_EFFECT_PAIRS = 8  # fewer pairs of one (edit, concept, label) say nothing about a side effect
MIN_SIDE_EFFECT_SHIFT = 0.02  # a consistent but tiny shift (0.002) is no clinical side effect


def probe(model: LoadedModel, synthesis: SynthesisLayout, manifest: Manifest, thresholds: dict[str, float],
          accepted_only: bool = True, replicates: int = 1000, seed: int = 0,
          progress: bool = True, null_edits: SynthesisLayout | None = None) -> ProbeDocument:
    """Score every (source, edit) pair of a synthesize run and summarise per concept/operation and per cell;
    side effects net of the null edits when they are given."""
    from cxr_audit.synthesis.documents import read_records, read_summary

    summary = read_summary(synthesis)
    size = int(summary.generator["image_size"])
    records = read_records(synthesis)
    if accepted_only:
        records = [r for r in records if r.qc.passed]
    rows = manifest.frame.set_index("image_id", drop=False)
    sources, edits = [], []
    for record in progress_bar(records, desc="probe pairs", unit="pair", disable=not progress, leave=False):
        if record.source_image_id not in rows.index:
            raise UserInputError(f"probe: source {record.source_image_id!r} of edit {record.edit_id} is not "
                                 "in the data. Was the synthesis made from another dataset?")
        sources.append(load_resized(manifest.resolve_image(rows.loc[record.source_image_id, "path"]), size))
        edits.append(load_resized(synthesis.image(record.edit_id), size))
    names = model.concepts
    before = model.predict_arrays(np.stack(sources)) if sources else np.zeros((0, len(names)))
    after = model.predict_arrays(np.stack(edits)) if edits else np.zeros((0, len(names)))
    null_after = _null_edit_scores(model, null_edits, records, size) if null_edits is not None else None
    pairs, side_pairs = [], []
    for k, record in enumerate(records):
        touched = {o.concept for o in record.operations}
        for j, other in enumerate(names):
            label = record.target_vector.get(other)
            if other in touched or other == "No Finding" or label not in (0.0, 1.0):
                continue
            toward_wrong = 1.0 if label == 0.0 else -1.0  # up is wrong where absent, down where present
            harm = toward_wrong * (after[k, j] - before[k, j])
            if null_after is not None:
                if k not in null_after:  # no null edit of this plan entry: no baseline to measure against
                    continue
                harm -= toward_wrong * (null_after[k][j] - before[k, j])
            for operation in record.operations:
                side_pairs.append({"edit": f"{operation.op} {operation.concept}", "concept": other,
                                   "label": int(label), "harm": float(harm)})
        edited = [o.concept for o in record.operations]
        for operation in record.operations:
            concept = operation.concept
            if concept not in names:
                continue
            j = names.index(concept)
            sign = 1.0 if operation.op == "insert" else -1.0
            threshold = thresholds.get(concept, 0.5)
            was, now = before[k, j] >= threshold, after[k, j] >= threshold
            others = [i for i, n in enumerate(names) if n not in edited]
            pairs.append({
                "edit_id": record.edit_id, "cell_id": record.cell_id, "concept": concept, "op": operation.op,
                "score_before": float(before[k, j]), "score_after": float(after[k, j]),
                "directional_change": sign * float(after[k, j] - before[k, j]),
                "flipped": bool(now != was and now == (sign > 0)),
                "leakage": float(np.abs(after[k, others] - before[k, others]).mean()) if others else 0.0,
            })
    rng = np.random.default_rng(seed)

    def summarise(group: list[dict]) -> dict:
        change = np.array([p["directional_change"] for p in group])
        return {
            "pairs": len(group),
            "mean_score_before": round(float(np.mean([p["score_before"] for p in group])), 6),
            "mean_score_after": round(float(np.mean([p["score_after"] for p in group])), 6),
            **{name: bootstrap_mean(values, replicates, rng).to_json() for name, values in (
                ("directional_change", change), ("share_expected_direction", (change > 0).astype(float)),
                ("flip_rate", np.array([p["flipped"] for p in group], float)),
                ("leakage", np.array([p["leakage"] for p in group])))},
        }

    by_concept: dict[str, dict] = {}
    for key in sorted({(p["concept"], p["op"]) for p in pairs}):
        by_concept[f"{key[1]} {key[0]}"] = {"concept": key[0], "op": key[1],
                                            **summarise([p for p in pairs if (p["concept"], p["op"]) == key])}
    by_cell = {cell: summarise([p for p in pairs if p["cell_id"] == cell])
               for cell in sorted({p["cell_id"] for p in pairs})}
    side_effects = {}
    for edit, concept, label in sorted({(p["edit"], p["concept"], p["label"]) for p in side_pairs}):
        harm = np.array([p["harm"] for p in side_pairs if (p["edit"], p["concept"], p["label"]) == (edit, concept, label)])
        if harm.size < MIN_SIDE_EFFECT_PAIRS:
            continue
        mean, share = bootstrap_mean(harm, replicates, rng), proportion_interval(int((harm > 0).sum()), harm.size)
        side_effects[f"{edit} -> {concept} ({'present' if label else 'absent'})"] = {
            "edit": edit, "concept": concept, "concept_present": bool(label), "pairs": int(harm.size),
            "baseline": "null edit" if null_after is not None else "source",
            "mean_harm": mean.to_json(), "share_harmful": share.to_json(),
            "harmful": bool(mean.ci and share.ci and mean.ci[0] > 0 and share.ci[0] > 0.5
                            and mean.value >= MIN_SIDE_EFFECT_SHIFT)}
    return ProbeDocument(
        model={"path": model.path.name, "sha256": model.sha256},
        synthesis={"mode": summary.mode, "generator_sha256": summary.generator_sha256},
        pairs_scored=len(pairs), accepted_only=accepted_only,
        thresholds={c: thresholds.get(c, 0.5) for c in names},
        bootstrap={"unit": "pair", "replicates": replicates, "seed": seed, "interval": "percentile 95%"},
        by_concept=by_concept, by_cell=by_cell, side_effects=side_effects,
        pairs=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()} for p in pairs])


def _null_edit_scores(model: LoadedModel, null_edits: SynthesisLayout, records: list, size: int) -> dict[int, np.ndarray]:
    """The model's scores on the null edit of each record's plan entry (same edit id), by record index."""
    from cxr_audit.synthesis.documents import read_records

    available = {r.edit_id for r in read_records(null_edits)}
    found = [k for k, record in enumerate(records) if record.edit_id in available]
    if not found:
        return {}
    images = np.stack([load_resized(null_edits.image(records[k].edit_id), size) for k in found])
    return dict(zip(found, model.predict_arrays(images)))
