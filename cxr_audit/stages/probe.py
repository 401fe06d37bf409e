"""The probe stage: the frozen deployed model on every accepted (source, edited) pair of the CARS edits.

The pairs are image files of the run (each synthesize run lists them in its score_me.csv). The model in hand
scores them here; a model known only by its outputs scores them wherever it runs, and `probe --predictions`
reads those scores back (the round trip). Either way the same scores of the same files reach the same probe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr_audit import distributed
from cxr_audit.data.manifest import Manifest
from cxr_audit.errors import UserInputError
from cxr_audit.evaluation.documents import ProbeDocument
from cxr_audit.provenance import atomic_write_json, read_document, sha256_file
from cxr_audit.rundir import SynthesisLayout
from cxr_audit.stages.context import RunContext
from cxr_audit.stages.evaluate import read_metrics
from cxr_audit.stages.synthesize import read_records, read_summary


class ProbeStage:
    name = "probe"
    shares_work = True  # the model's inference is sharded over the processes of a multi-process run

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.folder = self.ctx.run.probe.parent
        # the edits, the deployed model's thresholds, and the null edits its side effects are measured against
        self.needs = ("synthetic", "evaluate_baseline") + (("null_edits",) if self.null_edits else ())

    def outputs(self) -> list[Path]:
        return [self.ctx.run.probe]

    @property
    def null_edits(self) -> SynthesisLayout | None:
        """The texture control's synthesis, when the run makes one: side effects are measured against it."""
        return self.ctx.run.synthesis("null_edits") if "null_edits" in self.ctx.synthesis_modes else None

    def inputs(self) -> dict:
        ctx = self.ctx
        null_edits = self.null_edits
        scorer = ({"scores": sha256_file(ctx.path("probe_predictions"))} if ctx.config.probe_predictions
                  else ctx.model_identity())
        return {**scorer, "synthesis": sha256_file(ctx.run.synthesis("cars").summary),
                **({"null_edits": sha256_file(null_edits.summary)} if null_edits else {}),
                "thresholds": sha256_file(ctx.run.evaluation("baseline").metrics), "data": ctx.data_sha256,
                "seed": ctx.config.seed, "bootstrap": ctx.config.bootstrap}

    def run(self) -> None:
        from cxr_audit.evaluation.probe import probe

        ctx = self.ctx
        synthesis = ctx.run.synthesis("cars")
        pairs = probe_pairs(synthesis, ctx.frontal("all"), self.null_edits)
        if ctx.config.probe_predictions:
            scores, scorer = scores_from_file(ctx.path("probe_predictions"), pairs, ctx.run.path)
        else:
            scores, scorer = scores_from_model(ctx.model, pairs, ctx.run.path, batch_size=ctx.batch_size,
                                               workers=ctx.workers, cache_dir=ctx.cache_dir, progress=ctx.progress)
        if not distributed.is_main():  # the other processes scored their share
            return
        baseline = read_metrics(ctx, "baseline")
        thresholds = {c: entry.threshold.value for c, entry in baseline.concepts.items()}
        document = probe(pairs.scored(scores), read_summary(synthesis), thresholds, scorer,
                         replicates=ctx.config.bootstrap, seed=ctx.config.seed)
        atomic_write_json(ctx.run.probe, document.model_dump(mode="json"))


class ProbePairs:
    """The accepted (source, edited) pairs of a synthesize run as image files, by path relative to the run,
    with the null edit of each plan entry where the run has null edits."""

    def __init__(self, records, sources: list[str], edits: list[str], null_edits: dict[int, str] | None):
        self.records, self.sources, self.edits, self.null_edits = records, sources, edits, null_edits

    def paths(self) -> list[str]:
        """Every image the probe scores, each once."""
        return list(dict.fromkeys(self.sources + self.edits + list((self.null_edits or {}).values())))

    def scored(self, scores: tuple[list[str], dict[str, np.ndarray]]):
        """The pairs with their scores (`scores`: concepts, and a row of scores per path)."""
        from cxr_audit.evaluation.probe import ProbeScores

        concepts, by_path = scores
        empty = np.zeros((0, len(concepts)), np.float32)
        rows = lambda paths: np.stack([by_path[p] for p in paths]) if paths else empty  # noqa: E731
        null = None if self.null_edits is None else {k: by_path[p] for k, p in self.null_edits.items()}
        return ProbeScores(concepts, self.records, rows(self.sources), rows(self.edits), null)


def probe_pairs(synthesis: SynthesisLayout, manifest: Manifest, null_edits: SynthesisLayout | None,
                accepted_only: bool = True) -> ProbePairs:
    """The pairs of a synthesize run (its run directory is the synthesis folder's parent)."""
    run = synthesis.folder.parent
    records = [r for r in read_records(synthesis) if r.qc.passed or not accepted_only]
    known = set(manifest.frame["image_id"].astype(str))
    for record in records:
        if record.source_image_id not in known:
            raise UserInputError(f"probe: source {record.source_image_id!r} of edit {record.edit_id} is not "
                                 "in the data. Was the synthesis made from another dataset?")
        if not synthesis.source(record.edit_id).is_file():
            raise UserInputError(f"probe: {synthesis.source(record.edit_id)} is missing: the edit's source as the "
                                 "edit saw it. Make the synthesis again (`cxr-audit synthesize --run RUN --force`).")
    relative = lambda path: path.relative_to(run).as_posix()  # noqa: E731
    null = None
    if null_edits is not None:
        available = {r.edit_id for r in read_records(null_edits)}
        null = {k: relative(null_edits.image(r.edit_id)) for k, r in enumerate(records) if r.edit_id in available}
    return ProbePairs(records, [relative(synthesis.source(r.edit_id)) for r in records],
                      [relative(synthesis.image(r.edit_id)) for r in records], null)


def scores_from_model(model, pairs: ProbePairs, run: Path, **inference) -> tuple[tuple, dict[str, str]]:
    """The model in hand scores every image of the pairs, as it scores any image file."""
    from cxr_audit.classifier.inference import predict

    paths = pairs.paths()
    probabilities = predict(model, [run / p for p in paths], **inference) if paths else np.zeros((0, 0))
    return (list(model.concepts), dict(zip(paths, probabilities))), {"path": model.path.name, "sha256": model.sha256}


def scores_from_file(path: Path, pairs: ProbePairs, run: Path) -> tuple[tuple, dict[str, str]]:
    """The scores a model known only by its outputs gave the listed images: a CSV with a `path` column (as
    score_me.csv names each image) and a probability column per concept."""
    from cxr_audit.classifier.blackbox import read_score_table

    table = read_score_table(path, "--predictions")
    paths = pairs.paths()
    rows = table.rows_of(pd.Series(paths, dtype=str), "images the probe scores (listed in each synthesis "
                         "folder's score_me.csv; score every one)")
    return (table.concepts, dict(zip(paths, table.values[rows]))), {
        "path": path.name, "sha256": sha256_file(path), "format": "predictions csv"}


def read_probe(ctx: RunContext) -> ProbeDocument:
    return read_document(ctx.run.probe, ProbeDocument, "probe document", "Run `cxr-audit probe --run RUN` first.")


def probe_synthesis(model, synthesis: SynthesisLayout, manifest: Manifest, thresholds: dict[str, float],
                    replicates: int = 1000, seed: int = 0, progress: bool = True,
                    null_edits: SynthesisLayout | None = None) -> ProbeDocument:
    """The probe of a synthesize run's accepted pairs by the model in hand (side effects against its null edits
    when given)."""
    from cxr_audit.evaluation.probe import probe

    pairs = probe_pairs(synthesis, manifest, null_edits)
    scores, scorer = scores_from_model(model, pairs, synthesis.folder.parent, progress=progress)
    return probe(pairs.scored(scores), read_summary(synthesis), thresholds, scorer, replicates=replicates, seed=seed)
