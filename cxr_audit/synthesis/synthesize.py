"""Carry out an edit plan with an edit backend, score every edit, keep what passes QC.

`run_synthesis` works on arrays and documents: it hands each finished edit (its pixels, region and record) to
the `save` callback the synthesize stage gives it, and skips the batches whose records the stage already has
(`saved`), so an interrupted run resumes where it stopped. Where QC rejects edits it draws more (the plan's
reserve sources, then retries under new seeds: `top_up.py`) until each cell has the plan's count accepted. `summarise` turns the records into the manifest
of accepted edits (CheXpert columns plus provenance) and the summary document (counts, QC rejections by
reason, settings, hashes). The null edits (the texture control) change no concept: their records have no
operations and the source's vector.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from cxr_audit.anatomy.fidelity import MIN_CTR_SIZE, measure_anatomy
from cxr_audit.anatomy.masks import image_mask_folder, load_mask_folder
from cxr_audit.anatomy.regions import edit_mask
from cxr_audit.data.decoded import image_sha256
from cxr_audit.data.images import load_resized
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.synthesis.grading import apply_temperature, ungradable_concepts
from cxr_audit.progress import progress_bar
from cxr_audit.spec import LabelPolicy
from cxr_audit.synthesis.backends import EditBackend
from cxr_audit.synthesis.documents import EditRecord, Operation, SynthesisSummary
from cxr_audit.synthesis.editor import EditSettings
from cxr_audit.synthesis.planner import PlanDocument, PlannedEdit
from cxr_audit.synthesis.qc import QCThresholds, score_edit
from cxr_audit.synthesis.top_up import TopUpPolicy, cell_budgets, next_round


@dataclass
class SynthesisOptions:
    settings: EditSettings = field(default_factory=EditSettings)
    thresholds: QCThresholds = field(default_factory=QCThresholds)
    batch_size: int = 16
    unconstrained: bool = False   # the ablation: regenerate the whole image, no anatomy mask
    null_edits: bool = False      # the texture control: the same masked regions, under the source's own vector
    progress: bool = True
    grading: dict[str, dict] | None = None  # the checker's fitness per concept (synthesis/grading.py)
    accept_ungradable: bool = False          # keep edits of concepts the checker cannot grade (recorded)
    top_up: TopUpPolicy | None = field(default_factory=TopUpPolicy)  # None: the planned edits only
    segmenter: object | None = None  # a LungSegmenter: anatomy fidelity (lungs, cardiothoracic ratio) in QC
    attempts: list[PlannedEdit] | None = None  # exactly these edits, one round (the null edits: CARS's accepted)


def _phantom_truth(row: pd.Series, operations: list[Operation], size: int) -> np.ndarray | None:
    if "study_seed" not in row or pd.isna(row.get("study_seed")):
        return None
    from cxr_audit.data import phantom
    from cxr_audit.data.phantom.dataset import study_of

    study = study_of(row)
    for operation in operations:
        if any(c not in phantom.PHANTOM_FINDINGS for c in operation.concepts):
            return None
        study = operation.kind.counterfactual(study, operation)
    return phantom.render(study, size).image


@dataclass
class FinishedEdit:
    """One edit as the synthesize stage saves it: the edited image, its region and its record."""

    record: EditRecord
    pixels: np.ndarray           # (S, S) uint8, the edited image
    source_pixels: np.ndarray    # (S, S) uint8, its source as the edit saw it (the probe scores this pair)
    region: np.ndarray           # (S, S) bool, where the edit may change the image
    source_is_dicom: bool        # DICOM in, DICOM out
    description: str             # provenance for a DICOM copy: the edit, the source's hash, the generator's
    view: str | None


def run_synthesis(plan: PlanDocument, manifest: Manifest, backend: EditBackend, save: Callable[[FinishedEdit], None],
                  saved: Callable[[str], EditRecord | None] = lambda edit_id: None, checker=None,
                  options: SynthesisOptions | None = None) -> list[str]:
    """Carry out `plan` on `manifest` (the images the plan's sources come from), giving each edit to `save`;
    returns the ids of the edits made, in order (the planned ones first, then each top-up round's).

    Batches are fixed chunks of a round (a batch's noise comes from its first edit's seed), and a batch with
    any edit not `saved` is made again whole: a resumed run writes exactly what an uninterrupted one would."""
    options = options or SynthesisOptions()
    rows = manifest.frame.set_index("image_id", drop=False)
    named = [c for c in backend.concepts if c in manifest.concepts]
    policy = LabelPolicy.model_validate(plan.label_policy)
    source_labels = pd.DataFrame(manifest.labels(named, policy), columns=named, index=manifest.frame["image_id"])
    attempted: list[str] = []
    passed: dict[str, bool] = {}
    edits = options.attempts if options.attempts is not None else next_round(plan, [], {}, options.top_up)
    bar = progress_bar(total=len(edits), desc="synthesizing", unit="edit", disable=not options.progress)
    while edits:
        for k in range(0, len(edits), options.batch_size):
            batch = edits[k:k + options.batch_size]
            records = [saved(e.edit_id) for e in batch]
            verdicts = [r.qc.passed for r in records] if all(records) else \
                _make_batch(batch, rows, manifest, source_labels, backend, save, checker, options)
            passed.update({e.edit_id: v for e, v in zip(batch, verdicts)})
            attempted += [e.edit_id for e in batch]
            bar.update(len(batch))
        if options.attempts is not None or options.top_up is None:
            break
        edits = next_round(plan, attempted, passed, options.top_up)
        bar.total += len(edits)
        bar.refresh()
    bar.close()
    return attempted


def _make_batch(batch: list[PlannedEdit], rows: pd.DataFrame, manifest: Manifest, source_labels: pd.DataFrame,
                backend: EditBackend, save: Callable[[FinishedEdit], None], checker,
                options: SynthesisOptions) -> list[bool]:
    """Edit one batch, score each edit, save it; QC's verdict per edit."""
    size = backend.image_size
    prepared = [_prepare(e, rows, manifest, source_labels, backend.concepts, size, options.null_edits)
                for e in batch]
    sources = np.stack([p["source"] for p in prepared])
    hard = np.stack([p["hard"] for p in prepared])
    soft = np.stack([p["soft"] for p in prepared])
    masks = (None, None) if options.unconstrained else (hard, soft)
    edited = backend.edit(sources, np.stack([p["target"] for p in prepared]), *masks, options.settings,
                          int(batch[0].seed))
    before, after = (_checker_scores(checker, images, options.grading) for images in (sources, edited))
    anatomy = measure_anatomy(options.segmenter, sources, edited, hard) if options.segmenter is not None \
        else [None] * len(batch)
    verdicts = []
    for k, (planned, item) in enumerate(zip(batch, prepared)):
        if options.null_edits:  # nothing is inserted or deleted: the source is its own target
            planned = planned.model_copy(update={"operations": [], "target_vector": planned.source_vector})
        truth = _phantom_truth(rows.loc[planned.source_image_id], planned.operations, size)
        # The ablation regenerates the whole image on purpose: its change outside the region is measured
        # (to compare with CARS) but is no reason to reject it.
        concepts = [c for operation in planned.operations for c in operation.concepts]
        qc = score_edit(sources[k], edited[k], hard[k], soft[k], planned.operations,
                        before[k] if before else None, after[k] if after else None, truth, options.thresholds,
                        require_fidelity=not options.unconstrained,
                        checker_thresholds=_calibrated_thresholds(checker, options.grading),
                        ungradable=ungradable_concepts(concepts, options.grading) if checker is not None else [],
                        accept_ungradable=options.accept_ungradable, anatomy=anatomy[k])
        save(_finished_edit(planned, item, edited[k], hard[k], qc, backend.sha256))
        verdicts.append(qc.passed)
    return verdicts


def _prepare(planned: PlannedEdit, rows: pd.DataFrame, manifest: Manifest, source_labels: pd.DataFrame,
             gen_concepts: list[str], size: int, null_edit: bool = False) -> dict:
    if planned.source_image_id not in rows.index:
        raise UserInputError(f"plan edit {planned.edit_id}: source {planned.source_image_id!r} is not in the "
                             "data. Was the plan made from another dataset?")
    row = rows.loc[planned.source_image_id]
    source = load_resized(manifest.resolve_image(row["path"]), size)
    folder = image_mask_folder(manifest, row["path"])
    if not (folder / "lung_right.png").exists():
        raise UserInputError(f"No anatomy masks for {row['path']} (looked in {folder}). Provide lung masks in "
                             "the phantom's layout (masks/<image path without suffix>/lung_right.png, ...), e.g. "
                             "with `cxr-audit segment`.")
    anatomy = load_mask_folder(folder, size)
    finding_masks = {p.stem: np.asarray(Image.open(p).resize((size, size), Image.Resampling.NEAREST)) > 127
                     for p in folder.glob("*.png") if p.stem not in anatomy}
    rng = np.random.default_rng(planned.seed)
    hard = np.zeros((size, size), bool)
    soft = np.zeros((size, size), np.float32)
    for operation in planned.operations:  # a swap edits both concepts' regions, on the replaced finding's side
        side = operation.kind.side(operation, finding_masks, rng)
        h, s = edit_mask(operation.concepts, anatomy, side=side)
        hard |= h
        soft = np.maximum(soft, s)
    # The edit region is drawn the same way for a null edit (same seed, same side): only the target differs.
    target = np.array(source_labels.loc[planned.source_image_id].reindex(gen_concepts), dtype=np.float32)
    if not null_edit:
        for j, concept in enumerate(gen_concepts):
            value = planned.target_vector.get(concept)
            if value is not None:
                target[j] = value
    return {"source": source, "target": target, "hard": hard, "soft": soft,
            "source_sha256": image_sha256(manifest.resolve_image(row["path"])), "row": row}


def _checker_scores(checker, images: np.ndarray, grading: dict | None) -> list[dict[str, float]] | None:
    """The checker's calibrated probabilities (its temperature per concept, from the grading) per image."""
    if checker is None:
        return None
    scores = checker.predict_arrays(images)
    for j, concept in enumerate(checker.concepts):
        scores[:, j] = apply_temperature(scores[:, j], _temperature(grading, concept))
    return [dict(zip(checker.concepts, map(float, row))) for row in scores]


def _temperature(grading: dict | None, concept: str) -> float:
    return float((grading or {}).get(concept, {}).get("temperature", 1.0))


def _calibrated_thresholds(checker, grading: dict | None) -> dict[str, float] | None:
    """The card's operating thresholds (on the checker's raw outputs) moved onto the calibrated scale: the same
    calls, since a temperature keeps the order of scores."""
    if checker is None:
        return None
    return {concept: float(apply_temperature(np.float64(t), _temperature(grading, concept)))
            for concept, t in checker.card.thresholds.items()}


def _finished_edit(planned: PlannedEdit, item: dict, edited: np.ndarray, hard: np.ndarray, qc,
                   generator_hash: str) -> FinishedEdit:
    row = item["row"]
    record = EditRecord(
        **planned.model_dump(include={"edit_id", "cell_id", "source_image_id", "patient_id", "operations",
                                      "target_vector", "seed"}),
        source_sha256=item["source_sha256"], generator_sha256=generator_hash, qc=qc.to_json(),
        sex=row.get("sex"), age=None if pd.isna(row.get("age")) else float(row.get("age")), view=row.get("view"))
    operation = ", ".join(o.label for o in planned.operations)
    return FinishedEdit(
        record=record, pixels=np.round(edited * 255).astype(np.uint8), region=hard,
        source_pixels=np.round(np.clip(item["source"], 0, 1) * 255).astype(np.uint8),
        source_is_dicom=str(row["path"]).lower().endswith((".dcm", ".dicom")),
        description=f"cxr-audit CARS edit ({operation}) of source image sha256 {item['source_sha256']}; "
                    f"generator sha256 {generator_hash}", view=row.get("view"))


def summarise(plan: PlanDocument, records: list[EditRecord], backend: EditBackend, options: SynthesisOptions,
              image_path: Callable[[str], str]) -> tuple[pd.DataFrame, SynthesisSummary]:
    """The manifest of accepted edits (`image_path`: how it names an edit's image) and the summary document,
    from the records of the plan's edits."""
    from cxr_audit.synthesis.top_up import first_attempt_id

    planned_ids = {e.edit_id for e in [*plan.edits, *plan.reserves]}
    records = [r for r in records if first_attempt_id(r.edit_id) in planned_ids]
    accepted = [r for r in records if r.qc.passed]
    budgets = cell_budgets(plan, [r.edit_id for r in records], {r.edit_id: r.qc.passed for r in records},
                           options.top_up or TopUpPolicy(1, 1.0)) if options.attempts is None else {}
    rejected: dict[str, int] = {}
    for record in records:
        for reason in record.qc.reasons:
            rejected[reason] = rejected.get(reason, 0) + 1
    frame = pd.DataFrame([_manifest_row(record, image_path(record.edit_id), backend.sha256) for record in accepted])
    alignment = [r.qc.alignment for r in records if r.qc.alignment is not None]
    truth = [r.qc.ground_truth_mae for r in records if r.qc.ground_truth_mae is not None]
    summary = SynthesisSummary(
        generator_sha256=backend.sha256, generator=backend.card(),
        mode="unconstrained (ablation)" if options.unconstrained else
        "null edits (texture control)" if options.null_edits else "masked (CARS)",
        settings=asdict(options.settings), qc_thresholds=asdict(options.thresholds),
        planned=len(records), accepted=len(accepted), rejected=len(records) - len(accepted),
        rejected_by_reason=rejected,
        accepted_by_cell={str(k): int(v) for k, v in frame.groupby("cell_id").size().items()} if len(frame) else {},
        mean_outside_mae=float(np.mean([r.qc.outside_mae for r in records])) if records else None,
        checker_agreement=float(np.mean([a >= 0 for a in alignment]))
        if alignment else None,
        mean_ground_truth_mae=float(np.mean(truth)) if truth else None,
        ungradable=sum(bool(r.qc.ungradable) for r in records), accept_ungradable=options.accept_ungradable,
        checker_grading=options.grading, budgets={k: v.model_dump() for k, v in budgets.items()},
        anatomy=anatomy_summary(records, judged=backend.image_size >= MIN_CTR_SIZE),
        top_up=asdict(options.top_up) if options.top_up and options.attempts is None else None)
    return frame, summary


def anatomy_summary(records: list[EditRecord], judged: bool = True) -> dict | None:
    """The segmenter's reading over all edits made: lung Dice outside the region, and per operation the change
    of the cardiothoracic ratio (mean, range) and how many edits moved it the required way or stayed within
    tolerance; `judged`: whether the ratio was a reason to reject (images of MIN_CTR_SIZE and more). None when
    anatomy was not measured."""
    measured = [r for r in records if r.qc.lung_dice_outside is not None]
    if not measured:
        return None
    dice = np.array([r.qc.lung_dice_outside for r in measured])
    by_operation: dict[str, list] = {}
    for record in measured:
        if record.qc.ctr_before is not None and record.qc.ctr_after is not None:
            label = ", ".join(o.label for o in record.operations) or "null edit"
            heart_kept = not any(reason.endswith("(cardiothoracic ratio)") or reason.startswith("heart size")
                                 for reason in record.qc.reasons)
            by_operation.setdefault(label, []).append((record.qc.ctr_after - record.qc.ctr_before, heart_kept))
    return {"edits": len(measured), "ctr_judged": judged, "lung_dice_outside": {"mean": float(dice.mean()), "min": float(dice.min())},
            "ctr_change": {label: {"n": len(pairs), "mean": float(np.mean([d for d, _ in pairs])),
                                   "min": float(np.min([d for d, _ in pairs])),
                                   "max": float(np.max([d for d, _ in pairs])),
                                   "passed": int(sum(ok for _, ok in pairs))}
                           for label, pairs in sorted(by_operation.items())}}


def _manifest_row(record: EditRecord, image: str, generator_sha256: str) -> dict:
    """An accepted edit as a training image: CheXpert columns, then its provenance and QC scores."""
    labels = {c: (1.0 if v == 1 else 0.0 if v == 0 else None) for c, v in record.target_vector.items()}
    return {
        "Path": image,
        "Sex": {"M": "Male", "F": "Female"}.get(record.sex, ""), "Age": record.age,
        "Frontal/Lateral": "Frontal", "AP/PA": record.view or "PA", **labels,
        "patient_id": f"synthetic-{record.patient_id}", "split": "train",
        "source_image_id": record.source_image_id, "source_sha256": record.source_sha256,
        "operation": "+".join(o.op for o in record.operations) or "null",
        "concept": "+".join(c for o in record.operations for c in o.concepts), "cell_id": record.cell_id,
        "target_vector": json.dumps(record.target_vector, sort_keys=True), "seed": record.seed,
        "generator_sha256": generator_sha256, "synthetic": 1,
        **{f"qc_{k}": v for k, v in record.qc.model_dump().items() if k not in ("reasons", "passed", "ungradable")},
        "qc_ungradable": "+".join(record.qc.ungradable),
    }
