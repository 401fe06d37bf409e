"""The realism stage: each synthesis mode's accepted edits judged as a set against real training images (a
cross-fitted discriminator and feature distances in the checker's space; evaluation/realism.py computes).

The real images are a seeded sample of the training split, at most twice the synthetic count (and at most
MAX_REAL): enough for the discriminator to see both kinds alike, without training it on the whole archive."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.provenance import atomic_write_json, atomic_write_text, read_document, sha256_file
from cxr_audit.rundir import SYNTHESIS_FOLDERS
from cxr_audit.stages.context import RunContext

MAX_REAL = 4000
MAX_SYNTHETIC = 4000
MOST_CONFIDENT = 4
MIN_SUBSET = 5          # a per-operation or per-concept AUROC needs at least this many synthetic images


class RealismStage:
    name = "realism"

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.layout = ctx.run.realism
        self.folder = self.layout.folder
        self.needs = (*(SYNTHESIS_FOLDERS[mode] for mode in ctx.synthesis_modes), "checker")

    def outputs(self) -> list[Path]:
        return [self.layout.document, self.layout.scores]

    def inputs(self) -> dict:
        from cxr_audit.stages.checker import checker_path

        ctx = self.ctx
        return {"synthesis": {mode: sha256_file(ctx.run.synthesis(mode).summary) for mode in ctx.synthesis_modes},
                "checker": sha256_file(checker_path(ctx)), "data": ctx.data_sha256, "train": ctx.ids_sha256("train"),
                "seed": ctx.config.seed, "settings": self.settings()}

    def settings(self) -> dict:
        from cxr_audit.evaluation.realism import DISTANCE_REPLICATES, DiscriminatorOptions

        options = DiscriminatorOptions(seed=self.ctx.config.seed)
        return {"discriminator": {"architecture": "small_cxr_net", "width": options.width, "epochs": options.epochs,
                                  "folds": options.folds, "folds_by": "patient, stratified"},
                "max_real": MAX_REAL, "max_synthetic": MAX_SYNTHETIC, "real_per_synthetic": 2,
                "distance_replicates": DISTANCE_REPLICATES, "bootstrap_replicates": self.ctx.config.bootstrap}

    def run(self) -> None:
        import pandas as pd

        from cxr_audit.classifier.loading import load_model
        from cxr_audit.stages.checker import checker_path
        from cxr_audit.synthesis.documents import RealismDocument

        ctx = self.ctx
        checker = load_model(checker_path(ctx), pickle_option=None)
        modes, score_rows = {}, []
        for mode in ctx.synthesis_modes:
            realism, scores = self._mode(mode, checker)
            modes[mode] = realism
            score_rows.append(scores)
        self.folder.mkdir(parents=True, exist_ok=True)
        frame = pd.concat(score_rows, ignore_index=True) if score_rows else pd.DataFrame()
        atomic_write_text(self.layout.scores, frame.to_csv(index=False, float_format="%.6f"))
        document = RealismDocument(modes=modes, settings=self.settings())
        atomic_write_json(self.layout.document, document.model_dump(mode="json"))

    def _mode(self, mode: str, checker):
        import numpy as np
        import pandas as pd

        from cxr_audit.data.images import load_resized
        from cxr_audit.evaluation.realism import (
            DiscriminatorOptions,
            checker_features,
            discriminator_scores,
            feature_distances,
            two_sample_auroc,
        )
        from cxr_audit.stages.synthesize import read_records, read_summary
        from cxr_audit.synthesis.documents import Discriminator, FeatureDistance, ModeRealism

        ctx, seed = self.ctx, self.ctx.config.seed
        layout = ctx.run.synthesis(mode)
        size = int(read_summary(layout).generator["image_size"])
        rng = np.random.default_rng(seed)
        accepted = [r for r in read_records(layout) if r.qc.passed]
        if len(accepted) > MAX_SYNTHETIC:
            accepted = [accepted[i] for i in np.sort(rng.choice(len(accepted), MAX_SYNTHETIC, replace=False))]
        train = ctx.frontal("train").frame
        n_real = min(len(train), max(2 * len(accepted), 50), MAX_REAL)
        real_rows = np.sort(rng.choice(len(train), n_real, replace=False))
        real_patients = train["patient_id"].astype(str).to_numpy()[real_rows]
        synthetic_patients = np.array([r.patient_id for r in accepted], str)
        empty = pd.DataFrame(columns=["mode", "kind", "id", "score"])
        if len(set(synthetic_patients)) < 2 or len(set(real_patients)) < 4:
            why = (f"{len(accepted)} accepted edits from {len(set(synthetic_patients))} patients: a two-sample test "
                   "needs edits of at least two patients and real images of at least four")
            return ModeRealism(mode=mode, n_real=n_real, n_synthetic=len(accepted), skipped=why), empty
        synthetic = np.stack([load_resized(layout.image(r.edit_id), size) for r in accepted])[:, None]
        real = ctx.images("train", size).take(real_rows)
        options = DiscriminatorOptions(seed=seed)
        scores = discriminator_scores(real, synthetic, real_patients, synthetic_patients, options,
                                      progress=ctx.progress)
        is_synthetic = np.r_[np.zeros(n_real, bool), np.ones(len(accepted), bool)]
        subsets = _subsets(accepted)
        aurocs = two_sample_auroc(scores, is_synthetic, np.r_[real_patients, synthetic_patients],
                                  subsets, replicates=ctx.config.bootstrap,
                                  seed=seed)
        synthetic_scores = scores[n_real:]
        picks = np.argsort(-synthetic_scores, kind="stable")[:MOST_CONFIDENT]
        discriminator = Discriminator(
            auroc=aurocs["all"].to_json(),
            by_operation={name.removeprefix("operation: "): aurocs[name].to_json() for name in subsets
                          if name.startswith("operation: ")},
            by_concept={name.removeprefix("concept: "): aurocs[name].to_json() for name in subsets
                        if name.startswith("concept: ")},
            folds=min(options.folds, len(set(synthetic_patients)), len(set(real_patients))),
            most_confident=[{"edit_id": accepted[i].edit_id, "score": round(float(synthetic_scores[i]), 6)}
                            for i in picks])
        features, space = self._features(checker, real_rows, accepted, layout, real_patients, seed,
                                         checker_features, feature_distances)
        ids = np.r_[train["image_id"].astype(str).to_numpy()[real_rows], [r.edit_id for r in accepted]]
        frame = pd.DataFrame({"mode": mode, "kind": np.where(is_synthetic, "synthetic", "real"), "id": ids,
                              "score": scores})
        return ModeRealism(mode=mode, n_real=n_real, n_synthetic=len(accepted), discriminator=discriminator,
                           features=FeatureDistance(**features.to_json()) if features else None,
                           feature_space=space), frame

    def _features(self, checker, real_rows, accepted, layout, real_patients, seed, checker_features,
                  feature_distances):
        """Distances in the checker's feature space; none (with the reason) for a checker without a torch
        module (an ONNX checker) or a set too small to compare."""
        import numpy as np

        from cxr_audit.data.images import load_resized

        if checker.module is None:
            return None, f"not measured: the checker ({checker.format}) has no torch module to take features from"
        size = checker.card.input_size
        preprocess = checker.preprocess
        real = checker_features(checker.module, self.ctx.images("train", size).take(real_rows), preprocess)
        synthetic = checker_features(
            checker.module, np.stack([load_resized(layout.image(r.edit_id), size) for r in accepted])[:, None],
            preprocess)
        try:
            distances = feature_distances(real, synthetic, real_patients, seed=seed)
        except ValueError as error:
            return None, f"not measured: {error}"
        return distances, f"the checker's penultimate layer ({real.shape[1]} features, {size} px)"


def _subsets(accepted) -> dict:
    """Masks over the accepted edits: each operation ('insert Cardiomegaly') and each concept an edit sets,
    where there are enough edits to judge."""
    import numpy as np

    subsets = {}
    for name, member in [(f"operation: {o.label}", lambda r, o=o: any(x.label == o.label for x in r.operations))
                         for o in {o.label: o for r in accepted for o in r.operations}.values()] + \
                        [(f"concept: {c}", lambda r, c=c: any(c in o.concepts for o in r.operations))
                         for c in sorted({c for r in accepted for o in r.operations for c in o.concepts})]:
        mask = np.array([member(r) for r in accepted])
        if mask.sum() >= MIN_SUBSET:
            subsets[name] = mask
    return dict(sorted(subsets.items()))


def read_realism(ctx: RunContext):
    from cxr_audit.synthesis.documents import RealismDocument

    return read_document(ctx.run.realism.document, RealismDocument, "realism document",
                         "Run the audit's realism stage first.")
