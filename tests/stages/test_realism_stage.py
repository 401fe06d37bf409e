"""The realism stage in a real audit: each synthesis mode judged against real training images (or the reason it
was not), every image's out-of-fold score kept, and the discriminator's least-real picks in the gallery."""

import pandas as pd

from cxr_audit.rundir import RunDir
from cxr_audit.synthesis.documents import RealismDocument


def test_every_mode_is_measured_or_says_why(audit_run):
    out, _, document = audit_run
    realism = RealismDocument.model_validate(document["realism"])
    assert set(realism.modes) == set(document["synthesis"])
    scores = pd.read_csv(RunDir(out).realism.scores)
    for mode, measured in realism.modes.items():
        accepted = document["synthesis"][mode]["accepted"]
        assert measured.n_synthetic == accepted
        if measured.discriminator is None:
            assert measured.skipped
            continue
        auroc = measured.discriminator.auroc
        assert 0 <= auroc.ci[0] <= auroc.value <= auroc.ci[1] <= 1
        rows = scores[scores["mode"] == mode]
        assert (rows["kind"] == "synthetic").sum() == accepted and (rows["kind"] == "real").sum() == measured.n_real
        assert rows["score"].between(0, 1).all()
        # the AUROC is the one of the scores kept beside it (both rounded to 6 places)
        from sklearn.metrics import roc_auc_score

        assert abs(roc_auc_score(rows["kind"] == "synthetic", rows["score"]) - auroc.value) < 1e-5
        if measured.features is not None:
            assert measured.features.frechet.value >= 0 and measured.features.n_synthetic == accepted


def test_a_measured_mode_scores_every_image_and_names_its_least_real_edits(audit_run, tmp_path):
    """The tiny generator's edits fail QC; marked accepted here, the stage measures them as a real run would."""
    import json
    import shutil

    from cxr_audit.stages.pipeline import open_run
    from cxr_audit.stages.realism import RealismStage, read_realism

    out, _, _ = audit_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    run = RunDir(copy)
    records = sorted(run.synthesis("cars").records.glob("*.json"))
    for path in records:
        record = json.loads(path.read_text())
        record["qc"]["passed"] = True
        path.write_text(json.dumps(record))
    ctx = open_run(run, {}, False, progress=False, log=lambda message: None, workers=0)
    RealismStage(ctx).run()
    cars = read_realism(ctx).modes["cars"]
    assert cars.n_synthetic == len(records) and cars.skipped is None
    auroc = cars.discriminator.auroc
    assert 0 <= auroc.ci[0] <= auroc.value <= auroc.ci[1] <= 1
    scores = pd.read_csv(run.realism.scores)
    mine = scores[(scores["mode"] == "cars") & (scores["kind"] == "synthetic")].sort_values("score", ascending=False)
    assert [p["edit_id"] for p in cars.discriminator.most_confident] == list(mine["id"][:4])
    assert cars.features.n_synthetic == len(records) and cars.features.frechet.value >= 0
    assert "penultimate" in cars.feature_space
    # the gallery shows those edits, least real first, after its own picks
    from cxr_audit.stages.gallery import GalleryStage

    GalleryStage(ctx).run()
    items = json.loads(run.gallery.document.read_text())["items"]
    picks = [item for item in items if item["discriminator_score"] is not None]
    assert [p["edit_id"] for p in picks] == [p["edit_id"] for p in cars.discriminator.most_confident]
    assert [p["discriminator_score"] for p in picks] == sorted((p["discriminator_score"] for p in picks), reverse=True)
