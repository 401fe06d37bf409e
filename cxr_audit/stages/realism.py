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
        """One mode's realism document and every compared image's out-of-fold score."""
        import numpy as np
        import pandas as pd

        from cxr_audit.data.images import load_resized
        from cxr_audit.evaluation.realism import (
            DiscriminatorOptions,
            discriminator_scores,
            fold_count,
            two_sample_auroc,
        )
        from cxr_audit.stages.synthesize import read_records, read_summary
        from cxr_audit.synthesis.documents import Discriminator, ModeRealism

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
        if len(set(synthetic_patients)) < 2 or len(set(real_patients)) < 4:
            why = (f"{len(accepted)} accepted edits from {len(set(synthetic_patients))} patients: a two-sample test "
                   "needs edits of at least two patients and real images of at least four")
            return (ModeRealism(mode=mode, n_real=n_real, n_synthetic=len(accepted), skipped=why),
                    pd.DataFrame(columns=["mode", "kind", "id", "score"]))
        synthetic = np.stack([load_resized(layout.image(r.edit_id), size) for r in accepted])[:, None]
        real = ctx.images("train", size).take(real_rows)
        options = DiscriminatorOptions(seed=seed)
        scores = discriminator_scores(real, synthetic, real_patients, synthetic_patients, options,
                                      progress=ctx.progress)
        is_synthetic = np.r_[np.zeros(n_real, bool), np.ones(len(accepted), bool)]
        by_operation, by_concept = _subsets(accepted)
        aurocs = two_sample_auroc(scores, is_synthetic, np.r_[real_patients, synthetic_patients],
                                  {**by_operation, **by_concept}, replicates=ctx.config.bootstrap, seed=seed)
        synthetic_scores = scores[n_real:]
        picks = np.argsort(-synthetic_scores, kind="stable")[:MOST_CONFIDENT]
        discriminator = Discriminator(
            auroc=aurocs["all"].to_json(),
            by_operation={name: aurocs[name].to_json() for name in by_operation},
            by_concept={name: aurocs[name].to_json() for name in by_concept},
            folds=fold_count(options, real_patients, synthetic_patients),
            most_confident=[{"edit_id": accepted[i].edit_id, "score": round(float(synthetic_scores[i]), 6)}
                            for i in picks])
        same_size = checker.card.input_size == size
        features, space = self._features(checker, real_rows, real_patients, real if same_size else None,
                                         [layout.image(r.edit_id) for r in accepted], synthetic if same_size else None)
        ids = np.r_[train["image_id"].astype(str).to_numpy()[real_rows], [r.edit_id for r in accepted]]
        frame = pd.DataFrame({"mode": mode, "kind": np.where(is_synthetic, "synthetic", "real"), "id": ids,
                              "score": scores})
        return ModeRealism(mode=mode, n_real=n_real, n_synthetic=len(accepted), discriminator=discriminator,
                           features=features, feature_space=space), frame

    def _features(self, checker, real_rows, real_patients, real=None, synthetic_paths=(), synthetic=None):
        """Distances in the checker's feature space (`real` and `synthetic`: the images already read, when they
        are at the checker's input size); none, with the reason, for a checker without a torch module (an ONNX
        checker) or a set too small to compare."""
        import numpy as np

        from cxr_audit.data.images import load_resized
        from cxr_audit.evaluation.realism import checker_features, feature_distances
        from cxr_audit.synthesis.documents import FeatureDistance

        if checker.module is None:
            return None, f"not measured: the checker ({checker.format}) has no torch module to take features from"
        size = checker.card.input_size
        if real is None:
            real = self.ctx.images("train", size).take(real_rows)
        if synthetic is None:
            synthetic = np.stack([load_resized(path, size) for path in synthetic_paths])[:, None]
        real_features = checker_features(checker.module, real, checker.preprocess)
        synthetic_features = checker_features(checker.module, synthetic, checker.preprocess)
        try:
            distances = feature_distances(real_features, synthetic_features, real_patients, seed=self.ctx.config.seed)
        except ValueError as error:
            return None, f"not measured: {error}"
        return (FeatureDistance(**distances.to_json()),
                f"the checker's penultimate layer ({real_features.shape[1]} features, {size} px)")


def _subsets(accepted) -> tuple[dict, dict]:
    """Masks over the accepted edits, per operation ('insert Cardiomegaly') and per concept an edit sets, where
    there are at least MIN_SUBSET edits to judge."""
    import numpy as np

    operations = [{o.label for o in r.operations} for r in accepted]
    concepts = [{c for o in r.operations for c in o.concepts} for r in accepted]

    def masks(members: list[set]) -> dict:
        names = sorted(set().union(*members)) if members else []
        found = {name: np.array([name in m for m in members]) for name in names}
        return {name: mask for name, mask in found.items() if mask.sum() >= MIN_SUBSET}

    return masks(operations), masks(concepts)


def read_realism(ctx: RunContext):
    from cxr_audit.synthesis.documents import RealismDocument

    return read_document(ctx.run.realism.document, RealismDocument, "realism document",
                         "Run the audit's realism stage first.")
