"""The evaluate stage: a model (the deployed one, an ensemble, a fine-tuned arm, or a black box's predictions)
on real images of one split -> predictions.npz, metrics.json and the bootstrap replicates."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cxr_audit import __version__, distributed
from cxr_audit.classifier.card import card_file, card_path_for
from cxr_audit.data.manifest import Manifest
from cxr_audit.data.splits import evaluation_split
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import MetricsDocument
from cxr_audit.evaluation.scoring import EvaluationInput, choose_thresholds, evaluate, save_replicates
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, read_document, sha256_file
from cxr_audit.stages.config import FINETUNE_ARMS
from cxr_audit.stages.context import RunContext


class EvaluateStage:
    shares_work = True  # under several processes, inference is sharded over them (classifier/inference.py)

    def __init__(self, ctx: RunContext, arm: str = "baseline"):
        self.ctx, self.arm, self.requested_split = ctx, arm, ctx.config.evaluate_split
        self.name = f"evaluate_{arm}"
        # a candidate scores its own model; the recalibrated arm maps the baseline's probabilities
        # (the deployed model is scored once the data sheet has found no test image duplicating a training one)
        self.needs = {"baseline": ("datasheet",), "recalibrated": ("evaluate_baseline",)}.get(arm, (f"finetune_{arm}",))
        self.layout = ctx.run.evaluation(arm)
        self.folder = self.layout.folder

    @property
    def split(self) -> str:
        split = evaluation_split(self.ctx.manifest, self.requested_split)
        if self.arm != "baseline" and split != "test":  # a fine-tuned copy has seen train and val (a recalibration, val)
            raise UserInputError(f"{self.ctx.run.path} scores on split {split!r} (recorded by an earlier evaluate), "
                                 "but the fine-tuned arms must be scored on the test split, like the baseline they "
                                 "are compared with. Audit in a new --out folder, or re-score the baseline first: "
                                 f"cxr-audit evaluate --out {self.ctx.run.path} --split test --force")
        return split

    def outputs(self) -> list[Path]:
        return [self.layout.metrics, self.layout.predictions, self.layout.replicates]

    def _models(self) -> list[tuple[Path, Path | None]]:
        """(model file, card file) of each model scored: the run's deployed model(s), or an arm's candidate."""
        ctx = self.ctx
        if self.arm in FINETUNE_ARMS:
            layout = ctx.run.finetune(self.arm)
            candidate = layout.candidate()
            return [(candidate, card_file(candidate))]
        if ctx.config.predictions:
            return []
        paths = [ctx.made_here(ctx.run.resolve(m)) for m in ctx.config.models]
        if not paths:
            raise UserInputError("Pass --model (a model file; repeat it for an ensemble) or --predictions (a CSV "
                                 "of a model's outputs).")
        card = ctx.path("card") if len(paths) == 1 else None  # an ensemble's members bring their own cards
        return [(path, card_path_for(card, path)) for path in paths]

    def inputs(self) -> dict:
        ctx = self.ctx
        if self.arm == "baseline" and bool(ctx.config.models) == bool(ctx.config.predictions):
            raise UserInputError("Pass exactly one of --model (a model file; repeat it for an ensemble) or "
                                 "--predictions (a CSV of a model's outputs).")
        from cxr_audit.classifier.loading import model_sha256

        models = self._models()
        split = self.split
        return {
            "models": [model_sha256(path, card) for path, card in models],
            "cards": [sha256_file(card) if card and card.is_file() else None for _, card in models],
            "predictions": sha256_file(ctx.path("predictions")) if not models else None,
            "data": ctx.data_sha256, "format": ctx.manifest.format, "spec": ctx.spec_sha256, "split": split,
            "images": ctx.ids_sha256(split), "validation": ctx.ids_sha256("val") if split not in ("all", "val") else None,
            "bootstrap": ctx.config.bootstrap, "seed": ctx.config.seed,
            "mc_samples": ctx.config.mc_samples if models and self.arm != "recalibrated" else None,  # a black box is not sampled
            **({"recalibration": ctx.config.recalibration,
                "baseline_predictions": sha256_file(ctx.run.evaluation("baseline").predictions)}
               if self.arm == "recalibrated" else {}),
        }

    def run(self) -> None:
        ctx = self.ctx
        spec = ctx.spec
        split = self.split
        test = ctx.frontal(split)
        if len(test) == 0:
            raise UserInputError(f"{ctx.path('data')} has no frontal images in split {split!r}. Use --split all or "
                                 "another split.")
        validation = ctx.frontal("val") if split not in ("all", "val") else None
        notes = list(ctx.notes if split != "all" else ctx.manifest.notes)
        if split == "all" and self.requested_split == "auto":
            notes.append("the data has no test split: every image is evaluated (an external test set)")
        if self.ctx.config.predictions and self.arm in ("baseline", "recalibrated"):
            predicted = _blackbox(ctx, test, validation if self.arm == "recalibrated" else None, notes)
        else:
            predicted = _model_predictions(ctx, self._models(), test, validation, notes,
                                           recalibrating=self.arm == "recalibrated")
        if not distributed.is_main():  # the other processes scored their share; the main process goes on
            return
        concepts, probabilities, model_info, stochastic, method, val_probabilities = predicted
        labels = test.labels(concepts, ctx.label_policy)
        validation_data = None
        if val_probabilities is not None:
            validation_data = (val_probabilities, validation.labels(concepts, ctx.label_policy))
        thresholds = choose_thresholds(concepts, model_info.pop("card_thresholds"), validation_data)
        if self.arm == "recalibrated":
            probabilities, thresholds = _recalibrate(ctx, concepts, probabilities, thresholds, validation_data,
                                                     model_info, notes)
        cells = spec.all_cells() if spec else []
        rules = spec.rule_set() if spec else None
        evaluation = evaluate(EvaluationInput(
            concepts=concepts, probabilities=probabilities, labels=labels,
            patient_ids=test.frame["patient_id"].to_numpy(), thresholds=thresholds, stochastic=stochastic,
            stochastic_method=method, frame=test.with_equipment(), cells=cells,
            cell_plausibility={c.id: not rules.violations(c.all_of, c.none_of) for c in cells} if rules else {},
        ), n_replicates=ctx.config.bootstrap, seed=ctx.config.seed)
        document = MetricsDocument(
            tool_version=__version__, model=model_info, notes=notes,
            data={"path": ctx.run.relative(ctx.path("data")), "sha256": ctx.data_sha256, "format": ctx.manifest.format,
                  "split": split, "label_policy": ctx.label_policy.model_dump(mode="json")},
            **evaluation.scores)
        self.layout.folder.mkdir(parents=True, exist_ok=True)
        _write_predictions(self.layout.predictions, test, concepts, probabilities, labels)
        save_replicates(self.layout.replicates, evaluation.replicates)
        atomic_write_json(self.layout.metrics, document.model_dump(mode="json"))


def _model_predictions(ctx: RunContext, models: list[tuple[Path, Path | None]], test: Manifest,
                       validation: Manifest | None, notes: list[str], recalibrating: bool = False):
    from cxr_audit.classifier.inference import predict, stochastic_predictions
    from cxr_audit.classifier.loading import load_model

    members = [load_model(path, card, ctx.config.allow_pickle) for path, card in models]
    model = members[0]
    if any(m.concepts != model.concepts for m in members[1:]):
        raise UserInputError("The ensemble's models predict different concepts (check each card's output_names); "
                             "an ensemble averages models with the same outputs.")
    for member in members:
        notes += member.notes
    concepts = _evaluated_concepts(ctx, model.concepts, notes)
    columns = [model.concepts.index(c) for c in concepts]
    paths = [test.resolve_image(p) for p in test.frame["path"]]
    run = dict(batch_size=ctx.batch_size, workers=ctx.workers, progress=ctx.progress)
    member_probabilities = np.stack([predict(m, paths, cache_dir=ctx.cache_dir, **run) for m in members])
    probabilities = member_probabilities.mean(axis=0)[:, columns]
    info = {"path": models[0][0].name, "sha256": model.sha256, "format": model.format,
            "card": model.card.model_dump(mode="json"), "card_thresholds": model.card.thresholds}
    if len(members) > 1:
        info["ensemble"] = [{"path": m.path.name, "sha256": m.sha256, "format": m.format} for m in members]
        notes.append(f"ensemble of {len(members)} models: probabilities averaged; uncertainty from their spread")
    val_probabilities = None
    if validation is not None and len(validation) and (recalibrating or
                                                       any(c not in model.card.thresholds for c in concepts)):
        val_paths = [validation.resolve_image(p) for p in validation.frame["path"]]
        val_probabilities = np.mean([predict(m, val_paths, cache_dir=ctx.cache_dir, **run) for m in members],
                                    axis=0)[:, columns]
    stochastic, method = None, None
    if len(members) > 1:
        stochastic, method = member_probabilities[:, :, columns], "ensemble"
    elif ctx.config.mc_samples > 0 and not recalibrating:  # the recalibrated arm maps the point predictions
        sampled = stochastic_predictions(model, paths, ctx.config.mc_samples, seed=ctx.config.seed,
                                         cache_dir=ctx.cache_dir, **run)
        stochastic, method = sampled.samples[:, :, columns], sampled.method
    return concepts, probabilities, info, stochastic, method, val_probabilities


def _recalibrate(ctx: RunContext, concepts: list[str], probabilities: np.ndarray, thresholds: dict,
                 validation: tuple[np.ndarray, np.ndarray] | None, model_info: dict, notes: list[str]):
    """The deployed model's test probabilities through a map fitted per concept on the validation split. Each
    operating threshold goes through the same (monotone) map, so the operating point, and with it sensitivity
    and specificity, stay the deployed model's: only calibration moves."""
    from cxr_audit.metrics.recalibration import fit_recalibration

    if validation is None:
        raise UserInputError(f"{ctx.path('data')} has no validation split to fit the recalibration on. Give the "
                             "data a 'val' split, or audit without the recalibrated arm (--arms).")
    val_probabilities, val_labels = validation
    recalibrated, mapped, fitted = np.empty_like(probabilities), {}, {}
    for j, concept in enumerate(concepts):
        known = ~np.isnan(val_labels[:, j])
        recalibration = fit_recalibration(ctx.config.recalibration, val_probabilities[known, j], val_labels[known, j])
        recalibrated[:, j] = recalibration.apply(probabilities[:, j])
        value, source = thresholds[concept]
        # not rounded: the mapped threshold must order the mapped scores exactly as the original did
        mapped[concept] = (float(recalibration.apply(np.array([value]))[0]), f"{source}, through the recalibration")
        fitted[concept] = recalibration.to_json()
        if recalibration.reason:
            notes.append(f"recalibrated arm, {concept}: {recalibration.reason}")
    model_info["recalibration"] = {"method": ctx.config.recalibration, "fitted_on": "validation split",
                                   "validation_images": int(len(val_labels)), "concepts": fitted}
    return recalibrated, mapped


def _blackbox(ctx: RunContext, test: Manifest, validation: Manifest | None, notes: list[str]):
    """A black box's probabilities of the test images (and, to recalibrate, of the validation images)."""
    from cxr_audit.classifier.blackbox import read_predictions

    path = ctx.path("predictions")
    predicted_concepts, predicted, more = read_predictions(path, test)
    notes += [note for note in more if "outside the evaluated set" not in note or validation is None]
    concepts = _evaluated_concepts(ctx, predicted_concepts, notes)
    columns = [predicted_concepts.index(c) for c in concepts]
    info = {"path": path.name, "sha256": sha256_file(path), "format": "predictions csv", "card_thresholds": {}}
    val_probabilities = read_predictions(path, validation)[1][:, columns] if validation is not None else None
    return concepts, predicted[:, columns], info, None, None, val_probabilities


def _evaluated_concepts(ctx: RunContext, model_concepts: list[str], notes: list[str]) -> list[str]:
    spec = ctx.spec
    concepts = [c for c in model_concepts if c in ctx.manifest.concepts and (spec is None or c in spec.concepts)]
    if not concepts:
        raise UserInputError(f"No concept is both predicted by the model ({', '.join(model_concepts)}) and labelled "
                             f"in {ctx.path('data')}{' and in the spec' if spec else ''}. Check the output names.")
    skipped = [c for c in model_concepts if c not in concepts]
    if skipped:
        notes.append(f"model outputs not evaluated (no labels or not in the spec): {', '.join(skipped)}")
    unscored = [c for c in (spec.concepts if spec else []) if c not in model_concepts]
    if unscored:
        cells = [cell.id for cell in spec.all_cells() if any(c in unscored for c in cell.concepts)]
        notes.append(f"spec concepts the model does not output, so not evaluated: {', '.join(unscored)}"
                     + (f"; the cells that need them are not evaluated either: {', '.join(cells[:10])}"
                        f"{' and more' if len(cells) > 10 else ''}" if cells else ""))
    return concepts


def _write_predictions(path: Path, manifest: Manifest, concepts: list[str], probabilities: np.ndarray,
                       labels: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, image_id=manifest.frame["image_id"].astype(str).to_numpy(dtype=str),
                        patient_id=manifest.frame["patient_id"].astype(str).to_numpy(dtype=str),
                        concepts=np.array(concepts), probabilities=probabilities.astype(np.float32),
                        labels=labels.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def read_metrics(ctx: RunContext, arm: str) -> MetricsDocument:
    return read_document(ctx.run.evaluation(arm).metrics, MetricsDocument, "metrics document",
                         f"Run the evaluate stage of arm {arm!r} first.")
