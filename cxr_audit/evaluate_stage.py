"""The evaluate stage: real test images -> predictions.npz and metrics.json in the run directory."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxr_audit.data.manifest import Manifest, assign_patient_splits
from cxr_audit.data.readers import read_manifest
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation import Evaluation, EvaluationInput, evaluate
from cxr_audit.metrics.discrimination import choose_threshold
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, dataset_sha256, guard_artifact, sha256_file
from cxr_audit.spec import CoverageSpec, LabelPolicy, load_spec


@dataclass
class EvaluateOptions:
    data: Path
    data_format: str
    out: Path
    models: list[Path] = field(default_factory=list)  # several models: an ensemble
    card: Path | None = None
    predictions: Path | None = None
    spec: Path | None = None
    root: Path | None = None
    split: str = "auto"
    bootstrap: int = 1000
    seed: int = 0
    mc_samples: int = 10
    batch_size: int = 32
    workers: int | None = None
    allow_pickle: bool = False
    cache_dir: Path | None = None
    force: bool = False
    progress: bool = True


def select_split(manifest: Manifest, split: str, seed: int, notes: list[str]) -> tuple[Manifest, str, Manifest | None]:
    """The evaluated images and, where there is one, the validation split for choosing thresholds."""
    has_splits = manifest.frame["split"].notna().all()
    if split == "auto":
        split = "test" if has_splits and (manifest.frame["split"] == "test").any() else "all"
        if split == "all":
            notes.append("the data has no test split: every image is evaluated (an external test set)")
    if split == "all":
        return manifest, "all", None
    if not has_splits:
        manifest = assign_patient_splits(manifest, seed=seed)
        notes.append(f"no split in the data: patients assigned to train/val/test with seed {seed}")
    chosen = manifest.split(split)
    if len(chosen) == 0:
        raise UserInputError(f"{manifest.source} has no images in split {split!r}. Use --split all or another split.")
    validation = manifest.split("val") if split != "val" else None
    return chosen, split, validation if validation is not None and len(validation) else None


def _thresholds(concepts: list[str], card_thresholds: dict[str, float], validation: tuple | None) -> dict:
    out = {}
    for j, concept in enumerate(concepts):
        if concept in card_thresholds:
            out[concept] = (float(card_thresholds[concept]), "model card")
        elif validation is not None:
            probabilities, labels = validation
            known = ~np.isnan(labels[:, j])
            if labels[known, j].sum() > 0:
                value = choose_threshold(probabilities[known, j], labels[known, j])
                out[concept] = (round(value, 6), "validation split (max F1)")
                continue
            out[concept] = (0.5, "default (no validation positives)")
        else:
            out[concept] = (0.5, "default (no card threshold, no validation split)")
    return out


def run_evaluate(options: EvaluateOptions) -> tuple[dict, Evaluation]:
    if bool(options.models) == (options.predictions is not None):
        raise UserInputError("Pass exactly one of --model (a model file; repeat it for an ensemble) or "
                             "--predictions (a CSV of a model's outputs).")
    spec: CoverageSpec | None = load_spec(options.spec) if options.spec else None
    notes: list[str] = []
    inputs = {"data": dataset_sha256(options.data)}
    if options.spec:
        inputs["spec"] = sha256_file(options.spec)
    if options.models:
        for k, path in enumerate(options.models):
            inputs["model" if k == 0 else f"model_{k + 1}"] = sha256_file(path)
    else:
        inputs["predictions"] = sha256_file(options.predictions)
    guard_artifact(options.out / "metrics.json", inputs, options.force)

    manifest = read_manifest(options.data, options.data_format, options.root)
    notes += manifest.notes
    if spec is None or spec.frontal_only:
        manifest = manifest.frontal()
    test, split_name, validation = select_split(manifest, options.split, options.seed, notes)
    policy = spec.label_policy if spec else LabelPolicy()

    model_info: dict
    stochastic = None
    method = None
    if options.models:
        from cxr_audit.inference import predict, stochastic_predictions
        from cxr_audit.models import load_model

        members = [load_model(path, options.card if len(options.models) == 1 else None, options.allow_pickle)
                   for path in options.models]
        model = members[0]
        if any(m.concepts != model.concepts for m in members[1:]):
            raise UserInputError("The ensemble's models predict different concepts (check each card's "
                                 "output_names); an ensemble averages models with the same outputs.")
        for m in members:
            notes += m.notes
        paths = [test.resolve_image(p) for p in test.frame["path"]]
        member_probabilities = np.stack([predict(m, paths, options.batch_size, options.workers, options.cache_dir,
                                                 options.progress) for m in members])
        model_probabilities = member_probabilities.mean(axis=0)
        model_concepts = model.concepts
        card_thresholds = model.card.thresholds
        model_info = {"path": str(options.models[0]), "sha256": model.sha256, "format": model.format,
                      "card": model.card.model_dump(mode="json")}
        if len(members) > 1:
            model_info["ensemble"] = [{"path": str(m.path), "sha256": m.sha256, "format": m.format} for m in members]
            notes.append(f"ensemble of {len(members)} models: probabilities averaged; uncertainty from their spread")
    else:
        from cxr_audit.blackbox import read_predictions

        model_concepts, model_probabilities, more = read_predictions(options.predictions, test)
        notes += more
        card_thresholds = {}
        model_info = {"path": str(options.predictions), "sha256": inputs["predictions"], "format": "predictions csv"}

    concepts = [c for c in model_concepts if c in manifest.concepts and (spec is None or c in spec.concepts)]
    if not concepts:
        raise UserInputError(f"No concept is both predicted by the model ({', '.join(model_concepts)}) and labelled "
                             f"in {options.data}{' and in the spec' if spec else ''}. Check the output names.")
    skipped = [c for c in model_concepts if c not in concepts]
    if skipped:
        notes.append(f"model outputs not evaluated (no labels or not in the spec): {', '.join(skipped)}")
    columns = [model_concepts.index(c) for c in concepts]
    probabilities = model_probabilities[:, columns]

    validation_data = None
    if validation is not None and options.models and any(c not in card_thresholds for c in concepts):
        val_paths = [validation.resolve_image(p) for p in validation.frame["path"]]
        val_probabilities = np.mean([predict(m, val_paths, options.batch_size, options.workers, options.cache_dir,
                                             options.progress) for m in members], axis=0)[:, columns]
        validation_data = (val_probabilities, validation.labels(concepts, policy))
    thresholds = _thresholds(concepts, card_thresholds, validation_data)

    if options.models and len(options.models) > 1:
        stochastic, method = member_probabilities[:, :, columns], "ensemble"
    elif options.models and options.mc_samples > 0:
        sampled = stochastic_predictions(model, paths, options.mc_samples, options.batch_size, options.workers,
                                         options.seed, options.progress)
        stochastic, method = sampled.samples[:, :, columns], sampled.method

    cells = spec.all_cells() if spec else []
    rules = spec.rule_set() if spec else None
    evaluation = evaluate(EvaluationInput(
        concepts=concepts, probabilities=probabilities, labels=test.labels(concepts, policy),
        patient_ids=test.frame["patient_id"].to_numpy(), thresholds=thresholds, stochastic=stochastic,
        stochastic_method=method, frame=test.frame, cells=cells,
        cell_plausibility={c.id: not rules.violations(c.all_of, c.none_of) for c in cells} if rules else {},
    ), n_replicates=options.bootstrap, seed=options.seed)

    document = {
        **{k: evaluation.document[k] for k in ("schema_version", "tool_version")},
        "inputs_sha256": inputs,
        "model": model_info,
        "data": {"path": str(options.data), "format": options.data_format, "split": split_name,
                 "label_policy": policy.model_dump(mode="json")},
        "notes": notes,
        **{k: v for k, v in evaluation.document.items() if k not in ("schema_version", "tool_version")},
    }
    _write_predictions(options.out / "predictions.npz", test, concepts, probabilities, test.labels(concepts, policy))
    atomic_write_json(options.out / "metrics.json", document)
    return document, evaluation


def _write_predictions(path: Path, manifest: Manifest, concepts: list[str], probabilities: np.ndarray,
                       labels: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image_id=manifest.frame["image_id"].astype(str).to_numpy(dtype=str),
                        patient_id=manifest.frame["patient_id"].astype(str).to_numpy(dtype=str),
                        concepts=np.array(concepts), probabilities=probabilities.astype(np.float32),
                        labels=labels.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())
