"""The checker stage: the independent concept checker that grades synthetic edits (QC), trained on the real
training split. Never the model under audit: a model grading its own edits would pass its own blind spots.
A run given --checker uses that one instead and has no checker stage.

Its card carries an operating threshold per concept, the one that maximises F1 on the real validation split:
QC asks whether the checker *calls* the finding after an insertion (and no longer calls it after a deletion)
at that threshold. A fixed 0.5 is no operating point for a checker of a finding with 20% prevalence: it
rejected 86% of the demo's CARS edits although the checker's score moved the right way on every one.

The card also grades the checker per concept (synthesis/grading.py): validation AUROC with its interval,
positives, a calibrating temperature, and whether QC may take its word on that concept."""

from __future__ import annotations

from pathlib import Path

from cxr_audit.stages.context import RunContext


class CheckerStage:
    name = "checker"
    needs = ()

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.checker.parent

    def outputs(self) -> list[Path]:
        from cxr_audit.classifier.card import card_file

        return [self.ctx.run.checker, card_file(self.ctx.run.checker)]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"data": ctx.data_sha256, "format": ctx.manifest.format, "concepts": ctx.findings,
                "label_policy": ctx.label_policy.model_dump(mode="json"), "images": ctx.ids_sha256("train"),
                "val": ctx.ids_sha256("val"), "operating_point": "max F1 on validation", "grading": GRADING,
                "size": ctx.config.generator_training.size, "seed": ctx.config.seed}

    def run(self) -> None:
        import numpy as np

        from cxr_audit.classifier.small_cnn import predict_probabilities, save_classifier, train_checker
        from cxr_audit.metrics.discrimination import choose_threshold

        ctx = self.ctx
        size = ctx.config.generator_training.size
        net = train_checker(ctx.images("train", size), ctx.labels("train", ctx.findings), seed=ctx.config.seed,
                            progress=ctx.progress)
        scores, labels = predict_probabilities(net, ctx.images("val", size)), ctx.labels("val", ctx.findings)
        thresholds = {}
        for j, concept in enumerate(ctx.findings):
            known = ~np.isnan(labels[:, j])
            if labels[known, j].sum() > 0:  # a concept without validation positives keeps the default (0.5)
                thresholds[concept] = round(choose_threshold(scores[known, j], labels[known, j]), 6)
        save_classifier(net, ctx.run.checker, ctx.findings, size, thresholds=thresholds,
                        grading=grade_on_validation(ctx, scores, ctx.findings))


# A property of the checker, so its own bootstrap (not the audit's --bootstrap, which only the reported metrics
# follow): recorded as an input of the stages that grade with it.
GRADING = ("validation AUROC lower bound >= 0.7 (1,000 patient-bootstrap replicates) and >= 10 positives and "
           "negatives; temperature scaling")


def grade_on_validation(ctx: RunContext, scores, concepts: list[str]) -> dict:
    """The checker graded per concept on the run's validation split (`scores`: its probabilities there)."""
    from cxr_audit.synthesis.grading import grade_concepts

    patients = ctx.frontal("val").frame["patient_id"].astype(str).to_numpy()
    return grade_concepts(scores, ctx.labels("val", concepts), patients, concepts, replicates=1000,
                          seed=ctx.config.seed)


def checker_grading(ctx: RunContext, checker) -> dict:
    """How fit the checker is to grade each concept: its card's grading (the run's own checker), else graded
    here on the run's validation split (a checker given with --checker)."""
    if checker.card.grading:
        return checker.card.grading
    import numpy as np

    batches = ctx.images("val", checker.card.input_size).batches(256)
    scores = np.concatenate([checker.predict_arrays(batch[:, 0]) for batch in batches])
    return grade_on_validation(ctx, scores, checker.concepts)


def checker_path(ctx: RunContext) -> Path:
    """The checker the run grades edits with: the one given with --checker, else the one trained in the run."""
    return ctx.path("checker") or ctx.run.checker
