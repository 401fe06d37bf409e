"""Probe the frozen model with (source, edited) pairs: does its score follow the one concept that changed?

For each pair the model scores the source and the edit. The edited concept's score should rise on an
insertion and fall on a deletion (reported as a signed "directional change": positive is the expected
direction), the prediction at the operating threshold may flip, and concepts that were not edited should
not move (leakage). Side effects name where they move: for each edit and each concept it did not touch, the
shift of that concept's score toward the wrong answer (down where the concept is present, up where it is
absent). A model that learned a shortcut shows it here: deleting Support Devices lowers its Pleural Effusion
score although the effusion is still there. A side effect is *harmful* when both the share of pairs moving
the wrong way (Wilson interval above 50%) and the mean shift (bootstrap interval above 0) exclude chance, and
the mean shift is at least 0.02. The source is scored as the edit saw it (at the generator's size, saved beside the
edits), so resolution is not mistaken for the concept. No weights change: the scores come from the model in hand or,
for a model known only by its outputs, from its scores of the listed images (the round trip).

With the null edits of the same plan (the same regions regenerated under each source's own vector: the
texture control), a side effect is measured against them: the edit's shift minus its null edit's shift on
the same source. What regenerating a region does to any concept (texture, smoothing) then cancels, and what
remains is what the inserted or deleted finding does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_audit.evaluation.documents import ProbeDocument
from cxr_audit.metrics.bootstrap import bootstrap_mean, proportion_interval
from cxr_audit.synthesis.documents import EditRecord, SynthesisSummary

MIN_SIDE_EFFECT_PAIRS = 8  # fewer pairs of one (edit, concept, label) say nothing about a side effect
MIN_SIDE_EFFECT_SHIFT = 0.02  # a consistent but tiny shift (0.002) is no clinical side effect


@dataclass
class ProbeScores:
    """The model's scores of a synthesize run's accepted pairs: each edit's source (at the generator's size, as
    the edit saw it), the edit, and the null edit of the same plan entry where the run has one. Scored by the
    model in hand or read back from the scores of a model known only by its outputs: the probe is the same."""

    concepts: list[str]                          # the score columns
    records: list[EditRecord]
    before: np.ndarray                           # (N, K) the sources' scores
    after: np.ndarray                            # (N, K) the edits' scores
    null_after: dict[int, np.ndarray] | None     # record index -> its null edit's scores; None: no null edits


def probe(scores: ProbeScores, summary: SynthesisSummary, thresholds: dict[str, float], model: dict[str, str],
          accepted_only: bool = True, replicates: int = 1000, seed: int = 0) -> ProbeDocument:
    """Summarise every (source, edit) pair's scores per concept/operation and per cell; side effects net of the
    null edits when the pairs have them. `model` names what scored them (path, sha256)."""
    names, before, after, null_after = scores.concepts, scores.before, scores.after, scores.null_after
    # 1. Each pair's change on the edited concepts, and the shift of every other concept toward the wrong answer.
    targeted, side_pairs = [], []
    for k, record in enumerate(scores.records):
        side_pairs += _side_effect_pairs(record, names, before[k], after[k],
                                         None if null_after is None else null_after.get(k), null_after is not None)
        targeted += _targeted_pairs(record, names, before[k], after[k], thresholds)
    # 2. Summaries with bootstrap intervals (one generator, in this order: results depend on it).
    rng = np.random.default_rng(seed)
    by_concept: dict[str, dict] = {}
    for key in sorted({(p["concept"], p["op"]) for p in targeted}):
        group = [p for p in targeted if (p["concept"], p["op"]) == key]
        by_concept[f"{key[1]} {key[0]}"] = {"concept": key[0], "op": key[1],
                                            "expected_direction": group[0]["expected_direction"],
                                            **_summarise(group, replicates, rng)}
    by_cell = {cell: _summarise([p for p in targeted if p["cell_id"] == cell], replicates, rng)
               for cell in sorted({p["cell_id"] for p in targeted})}
    side_effects = _side_effects(side_pairs, "null edit" if null_after is not None else "source", replicates, rng)
    return ProbeDocument(
        model=model, synthesis={"mode": summary.mode, "generator_sha256": summary.generator_sha256},
        pairs_scored=len(targeted), accepted_only=accepted_only,
        thresholds={c: thresholds.get(c, 0.5) for c in names},
        bootstrap={"unit": "pair", "replicates": replicates, "seed": seed, "interval": "percentile 95%"},
        by_concept=by_concept, by_cell=by_cell, side_effects=side_effects,
        pairs=[{k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()} for p in targeted])


def _side_effect_pairs(record: EditRecord, names: list[str], before: np.ndarray, after: np.ndarray,
                       null_after: np.ndarray | None, against_null: bool) -> list[dict]:
    """For each concept the edit did not touch and whose label is known: its shift toward the wrong answer
    (up where absent, down where present), minus the null edit's shift when measured against it."""
    touched = {c for o in record.operations for c in o.concepts}
    found = []
    for j, other in enumerate(names):
        label = record.target_vector.get(other)
        if other in touched or other == "No Finding" or label not in (0.0, 1.0):
            continue
        toward_wrong = 1.0 if label == 0.0 else -1.0
        harm = toward_wrong * (after[j] - before[j])
        if against_null:
            if null_after is None:  # no null edit of this plan entry: no baseline to measure against
                continue
            harm -= toward_wrong * (null_after[j] - before[j])
        for operation in record.operations:
            found.append({"edit": operation.label, "concept": other, "label": int(label), "harm": float(harm)})
    return found


def _targeted_pairs(record: EditRecord, names: list[str], before: np.ndarray, after: np.ndarray,
                    thresholds: dict[str, float]) -> list[dict]:
    """The pair's change on each concept it edits (a swap: the one it replaces and the one it puts in), signed so
    that the expected direction is positive."""
    edited = [c for o in record.operations for c in o.concepts]
    others = [i for i, n in enumerate(names) if n not in edited]
    found = []
    for effect in (e for operation in record.operations for e in operation.effects):
        if effect.concept not in names:
            continue
        j = names.index(effect.concept)
        sign = float(effect.expected_direction)
        threshold = thresholds.get(effect.concept, 0.5)
        was, now = before[j] >= threshold, after[j] >= threshold
        found.append({
            "edit_id": record.edit_id, "cell_id": record.cell_id, "concept": effect.concept, "op": effect.name,
            "expected_direction": effect.expected_direction,
            "score_before": float(before[j]), "score_after": float(after[j]),
            "directional_change": sign * float(after[j] - before[j]),
            "flipped": bool(now != was and now == (sign > 0)),
            "leakage": float(np.abs(after[others] - before[others]).mean()) if others else 0.0,
        })
    return found


def _summarise(group: list[dict], replicates: int, rng: np.random.Generator) -> dict:
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


def _side_effects(side_pairs: list[dict], baseline: str, replicates: int, rng: np.random.Generator) -> dict:
    """Side effects with enough pairs, each judged harmful when share, mean and size all exclude chance."""
    side_effects = {}
    for edit, concept, label in sorted({(p["edit"], p["concept"], p["label"]) for p in side_pairs}):
        harm = np.array([p["harm"] for p in side_pairs if (p["edit"], p["concept"], p["label"]) == (edit, concept, label)])
        if harm.size < MIN_SIDE_EFFECT_PAIRS:
            continue
        mean, share = bootstrap_mean(harm, replicates, rng), proportion_interval(int((harm > 0).sum()), harm.size)
        side_effects[f"{edit} -> {concept} ({'present' if label else 'absent'})"] = {
            "edit": edit, "concept": concept, "concept_present": bool(label), "pairs": int(harm.size),
            "baseline": baseline, "mean_harm": mean.to_json(), "share_harmful": share.to_json(),
            "harmful": bool(mean.ci and share.ci and mean.ci[0] > 0 and share.ci[0] > 0.5
                            and mean.value >= MIN_SIDE_EFFECT_SHIFT)}
    return side_effects
