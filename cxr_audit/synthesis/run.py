"""The synthesize stage: carry out an edit plan with a generator, score every edit, keep what passes QC.

Outputs (in `out`, default RUN/synthetic): `images/<edit>.png`, `masks/<edit>.png` (the edit region, usable
as a weak segmentation label), `records/<edit>.json` (one per edit, written as it finishes, so an
interrupted run resumes where it stopped), `synthetic_manifest.csv` (accepted edits, CheXpert columns plus
provenance) and `synthesis.json` (counts, QC rejections by reason, settings, hashes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxr_audit import concepts
from cxr_audit.anatomy import edit_mask, load_mask_folder, mask_folder
from cxr_audit.data.images import load_resized
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.inference import image_sha256
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text
from cxr_audit.synthesis.editor import EditSettings, edit
from cxr_audit.synthesis.generator import ConceptConditionedUNet, GeneratorCard
from cxr_audit.synthesis.qc import QCThresholds, score_edit
from cxr_audit.synthesis.text_backend import TextConditionedGenerator, TextPipelineCard

SYNTHESIS_SCHEMA_VERSION = "1.0"


@dataclass
class SynthesisOptions:
    settings: EditSettings = field(default_factory=EditSettings)
    thresholds: QCThresholds = field(default_factory=QCThresholds)
    batch_size: int = 16
    unconstrained: bool = False   # the ablation: regenerate the whole image, no anatomy mask
    progress: bool = True


def _mask_folder(manifest: Manifest, rel_path: str) -> Path:
    return manifest.resolve_image(str(mask_folder(rel_path)))  # inside the dataset root, like the images


def training_anatomy(manifest: Manifest, size: int) -> list[dict[str, np.ndarray]] | None:
    """Anatomy masks of every image (phantom layout, or written by `cxr-audit segment`), or None when the
    data has none (the generator then trains without regions)."""
    paths = list(manifest.frame["path"])
    if not paths or not (_mask_folder(manifest, paths[0]) / "lung_right.png").exists():
        return None
    anatomies = []
    for path in paths:
        folder = _mask_folder(manifest, path)
        if not (folder / "lung_right.png").exists():
            raise UserInputError(f"No anatomy masks for {path} (looked in {folder}); other images have them. Write "
                                 "masks for every image with `cxr-audit segment`.")
        anatomies.append(load_mask_folder(folder, size))
    return anatomies


def _side_for(concept: str, operation: str, finding_masks: dict, rng: np.random.Generator) -> str:
    if not concepts.get(concept).lateral:
        return "both"
    if operation == "delete" and concept.lower().replace(" ", "_") in finding_masks:
        mask = finding_masks[concept.lower().replace(" ", "_")]
        cols = np.flatnonzero(mask.any(axis=0))
        centre = mask.shape[1] / 2
        if cols.size:
            left_share = (cols > centre).mean()
            return "both" if 0.2 < left_share < 0.8 else ("left" if left_share >= 0.8 else "right")
        return "both"
    if operation == "delete":
        return "both"
    return str(rng.choice(["right", "left"]))


def _phantom_truth(row: pd.Series, operations: list[dict], size: int) -> np.ndarray | None:
    if "study_seed" not in row or pd.isna(row.get("study_seed")):
        return None
    from cxr_audit.data import phantom
    from cxr_audit.data.phantom_dataset import study_of

    study = study_of(row)
    for operation in operations:
        if operation["concept"] not in phantom.PHANTOM_FINDINGS:
            return None
        study = phantom.counterfactual(study, **{"add" if operation["op"] == "insert" else "remove": operation["concept"]})
    return phantom.render(study, size).image


def run_synthesis(plan: dict, manifest: Manifest, generator: ConceptConditionedUNet | TextConditionedGenerator,
                  card: GeneratorCard | TextPipelineCard,
                  generator_hash: str, out: Path, checker=None, options: SynthesisOptions | None = None) -> dict:
    """Carry out `plan` (plan.json) on `manifest` (the training split the plan was made from)."""
    options = options or SynthesisOptions()
    out = Path(out)
    for folder in ("images", "masks", "records"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    size = card.image_size
    rows = manifest.frame.set_index("image_id", drop=False)
    gen_concepts = list(card.concepts)
    source_labels = pd.DataFrame(manifest.labels([c for c in gen_concepts if c in manifest.concepts],
                                                 _policy_of(plan)),
                                 columns=[c for c in gen_concepts if c in manifest.concepts],
                                 index=manifest.frame["image_id"])
    todo = [e for e in plan["edits"] if not (out / "records" / f"{e['edit_id']}.json").exists()]
    # the native generator goes through editor.edit; a text-conditioned pipeline brings its own edit
    edit_batch = generator.edit if isinstance(generator, TextConditionedGenerator) else partial(edit, generator)
    bar = tqdm(total=len(plan["edits"]), initial=len(plan["edits"]) - len(todo), desc="synthesizing",
               unit="edit", disable=not options.progress)
    for start in range(0, len(todo), options.batch_size):
        batch = todo[start:start + options.batch_size]
        prepared = [_prepare(e, rows, manifest, source_labels, gen_concepts, size) for e in batch]
        sources = np.stack([p["source"] for p in prepared])
        targets = np.stack([p["target"] for p in prepared])
        hard = np.stack([p["hard"] for p in prepared])
        soft = np.stack([p["soft"] for p in prepared])
        seed = int(batch[0]["seed"])
        if options.unconstrained:
            edited = edit_batch(sources, targets, None, None, options.settings, seed)
        else:
            edited = edit_batch(sources, targets, hard, soft, options.settings, seed)
        before = _checker_scores(checker, sources)
        after = _checker_scores(checker, edited)
        for k, (planned, item) in enumerate(zip(batch, prepared)):
            truth = _phantom_truth(rows.loc[planned["source_image_id"]], planned["operations"], size)
            qc = score_edit(sources[k], edited[k], hard[k], soft[k] if not options.unconstrained else np.ones_like(soft[k]),
                            planned["operations"], before[k] if before else None, after[k] if after else None,
                            truth, options.thresholds)
            if options.unconstrained:  # no region to preserve: fidelity is measured, not required
                qc.reasons = [r for r in qc.reasons if "outside the edit region" not in r]
                qc.outside_mae = float(np.abs(edited[k] - sources[k])[~hard[k]].mean())
                qc.passed = not qc.reasons
            _write_outputs(out, planned, item, edited[k], hard[k], qc, generator_hash)
            bar.update()
    bar.close()
    return _assemble(out, plan, manifest, generator_hash, card, options)


def _policy_of(plan: dict):
    from cxr_audit.spec import LabelPolicy

    return LabelPolicy.model_validate(plan.get("label_policy", {}))


def _prepare(planned: dict, rows: pd.DataFrame, manifest: Manifest, source_labels: pd.DataFrame,
             gen_concepts: list[str], size: int) -> dict:
    if planned["source_image_id"] not in rows.index:
        raise UserInputError(f"plan edit {planned['edit_id']}: source {planned['source_image_id']!r} is not in the "
                             "data. Was the plan made from another dataset?")
    row = rows.loc[planned["source_image_id"]]
    source = load_resized(manifest.resolve_image(row["path"]), size)
    folder = _mask_folder(manifest, row["path"])
    if not (folder / "lung_right.png").exists():
        raise UserInputError(f"No anatomy masks for {row['path']} (looked in {folder}). Provide lung masks in "
                             "the phantom's layout (masks/<image path without suffix>/lung_right.png, ...).")
    anatomy = load_mask_folder(folder, size)
    finding_masks = {p.stem: np.asarray(Image.open(p).resize((size, size), Image.Resampling.NEAREST)) > 127
                     for p in folder.glob("*.png") if p.stem not in anatomy}
    rng = np.random.default_rng(planned["seed"])
    hard = np.zeros((size, size), bool)
    soft = np.zeros((size, size), np.float32)
    for operation in planned["operations"]:
        side = _side_for(operation["concept"], operation["op"], finding_masks, rng)
        h, s = edit_mask([operation["concept"]], anatomy, side=side)
        hard |= h
        soft = np.maximum(soft, s)
    target = np.array(source_labels.loc[planned["source_image_id"]].reindex(gen_concepts), dtype=np.float32)
    for j, concept in enumerate(gen_concepts):
        value = planned["target_vector"].get(concept)
        if value is not None:
            target[j] = value
    return {"source": source, "target": target, "hard": hard, "soft": soft,
            "source_sha256": image_sha256(manifest.resolve_image(row["path"])), "row": row}


def _checker_scores(checker, images: np.ndarray) -> list[dict[str, float]] | None:
    if checker is None:
        return None
    return [dict(zip(checker.concepts, map(float, row))) for row in checker.predict_arrays(images)]


def _write_outputs(out: Path, planned: dict, item: dict, edited: np.ndarray, hard: np.ndarray, qc, generator_hash: str) -> None:
    import io

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    edit_id = planned["edit_id"]
    pixels = np.round(edited * 255).astype(np.uint8)
    atomic_write_bytes(out / "images" / f"{edit_id}.png", png(pixels))
    if str(item["row"]["path"]).lower().endswith((".dcm", ".dicom")):  # DICOM in, DICOM out (no source PHI)
        from cxr_audit.synthesis.dicom_out import write_synthetic_dicom

        operation = ", ".join(f"{o['op']} {o['concept']}" for o in planned["operations"])
        write_synthetic_dicom(out / "images" / f"{edit_id}.dcm", pixels, edit_id,
                              f"cxr-audit CARS edit ({operation}) of source image sha256 {item['source_sha256']}; "
                              f"generator sha256 {generator_hash}", item["row"].get("view"))
    atomic_write_bytes(out / "masks" / f"{edit_id}.png", png((hard * 255).astype(np.uint8)))
    atomic_write_json(out / "records" / f"{edit_id}.json", {
        **{k: planned[k] for k in ("edit_id", "cell_id", "source_image_id", "patient_id", "operations",
                                   "target_vector", "seed")},
        "source_sha256": item["source_sha256"], "generator_sha256": generator_hash, "qc": qc.to_json(),
        "sex": item["row"].get("sex"), "age": item["row"].get("age"), "view": item["row"].get("view"),
    })


def _assemble(out: Path, plan: dict, manifest: Manifest, generator_hash: str, card: GeneratorCard,
              options: SynthesisOptions) -> dict:
    records = [json.loads((out / "records" / f"{e['edit_id']}.json").read_text()) for e in plan["edits"]]
    accepted = [r for r in records if r["qc"]["passed"]]
    rejected: dict[str, int] = {}
    for record in records:
        for reason in record["qc"]["reasons"]:
            rejected[reason] = rejected.get(reason, 0) + 1
    rows = []
    for record in accepted:
        labels = {c: (1.0 if v == 1 else 0.0 if v == 0 else None) for c, v in record["target_vector"].items()}
        rows.append({
            "Path": f"images/{record['edit_id']}.png", "Sex": {"M": "Male", "F": "Female"}.get(record["sex"], ""),
            "Age": record["age"], "Frontal/Lateral": "Frontal", "AP/PA": record["view"] or "PA", **labels,
            "patient_id": f"synthetic-{record['patient_id']}", "split": "train",
            "source_image_id": record["source_image_id"], "source_sha256": record["source_sha256"],
            "operation": "+".join(o["op"] for o in record["operations"]),
            "concept": "+".join(o["concept"] for o in record["operations"]), "cell_id": record["cell_id"],
            "target_vector": json.dumps(record["target_vector"], sort_keys=True), "seed": record["seed"],
            "generator_sha256": generator_hash, "synthetic": 1,
            **{f"qc_{k}": v for k, v in record["qc"].items() if k not in ("reasons", "passed")},
        })
    frame = pd.DataFrame(rows)
    atomic_write_text(out / "synthetic_manifest.csv", frame.to_csv(index=False))
    alignment = [r["qc"]["alignment"] for r in records if r["qc"]["alignment"] is not None]
    summary = {
        "schema_version": SYNTHESIS_SCHEMA_VERSION, "generator_sha256": generator_hash,
        "generator": asdict(card), "mode": "unconstrained (ablation)" if options.unconstrained else "masked (CARS)",
        "settings": asdict(options.settings), "qc_thresholds": asdict(options.thresholds),
        "planned": len(records), "accepted": len(accepted), "rejected": len(records) - len(accepted),
        "rejected_by_reason": rejected,
        "accepted_by_cell": frame.groupby("cell_id").size().to_dict() if len(frame) else {},
        "mean_outside_mae": float(np.mean([r["qc"]["outside_mae"] for r in records])) if records else None,
        "checker_agreement": float(np.mean([a >= options.thresholds.min_alignment for a in alignment])) if alignment else None,
        "mean_ground_truth_mae": float(np.mean([r["qc"]["ground_truth_mae"] for r in records
                                                if r["qc"]["ground_truth_mae"] is not None])) if records and
        records[0]["qc"]["ground_truth_mae"] is not None else None,
    }
    atomic_write_json(out / "synthesis.json", summary)
    return summary
