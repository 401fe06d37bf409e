"""A blinded reader study of the run's synthetic images: the kit out (`export_kit`), the readers' answers in
(`score_responses`). The choosing and the scoring are audit/reader_study.py's; this module reads and writes.

Blinding: every case image is written the same way (8-bit greyscale PNG at the generator's size, no text or
time chunks; DICOM, where the data was DICOM, with a fresh header that says nothing of its origin), renamed
case_NNNN in a shuffled order. The key (which case is which) stays in RUN/reader_study/key.json; the kit holds
only the key's SHA-256, which the answers carry back so they are scored against the right key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from cxr_audit.audit.reader_study import (
    RESPONSE_COLUMNS,
    KeyCase,
    SyntheticCandidate,
    check_complete,
    choose_cases,
    key_cases,
    key_document,
    parse_responses,
    score_reader_study,
)
from cxr_audit.data.images import png_bytes
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from cxr_audit.rundir import ReaderKitLayout
from cxr_audit.stages.context import RunContext

READER_STUDY_SCHEMA_VERSION = "1.0"


def export_kit(ctx: RunContext, out: Path, n: int, synthetic_fraction: float, seed: int, pairs: bool = False,
               force: bool = False) -> dict:
    """Write the kit to `out` and the key into the run; returns kit.json's content (with `notes`)."""
    from cxr_audit.stages.synthesize import read_records

    run, study = ctx.run, ctx.run.reader_study
    out = Path(out)
    _check_kit_folder(ctx, out, force)
    layout = run.synthesis("cars")
    if not layout.summary.exists():
        raise UserInputError(f"{run.path} has no synthetic images to show readers: run the audit (or `cxr-audit "
                             f"synthesize --run {run.path}`) first.")
    accepted = [r for r in read_records(layout) if r.qc.passed and layout.image(r.edit_id).is_file()]
    if not accepted:
        raise UserInputError(f"{run.path}: no synthetic edit passed quality control, so there is nothing to show "
                             "readers. See the QC table of the report.")
    train = ctx.frontal("train")
    synthetic = [SyntheticCandidate(r.edit_id, r.source_image_id, _edit_case(r)) for r in accepted]
    cases, notes = choose_cases(synthetic, train.frame["image_id"].astype(str).tolist(), n, synthetic_fraction, seed,
                                pairs)
    pixels = _case_pixels(ctx, cases, layout, train)
    size = int(next(iter(pixels.values())).shape[0])
    key = key_document(cases, _reader_concepts(ctx, synthetic), size)
    key_bytes = (json.dumps(key, indent=2, sort_keys=True) + "\n").encode()
    key_sha256 = hashlib.sha256(key_bytes).hexdigest()
    if study.key.exists() and study.key.read_bytes() != key_bytes and not force:
        raise UserInputError(f"{study.key} holds the key of another kit: answers to that kit could no longer be "
                             "scored. Pass --force to make a new kit (its key replaces the old one).")
    kit = {"kit": "cxr-audit blinded reader study", "cases": [c for c, _, _ in cases], "concepts": key["concepts"],
           "key_sha256": key_sha256, "image_size": size, "response_columns": list(RESPONSE_COLUMNS)}
    dicom = train.holds_dicom()
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    _write_kit(ReaderKitLayout(staging), cases, pixels, kit, dicom, seed)
    if out.exists():
        shutil.rmtree(out)
    staging.replace(out)
    study.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(study.key, key_bytes)
    if study.results.exists() and read_json(study.results, "").get("key_sha256") != key_sha256:
        study.results.unlink()  # scored against the key just replaced
    return {**kit, "notes": notes, "dicom": dicom}


def _edit_case(record) -> KeyCase:
    """What an edit shows: its operation, label, and the concepts it made present and absent."""
    effects = [effect for op in record.operations for effect in op.effects]
    return KeyCase("synthetic", "+".join(op.op for op in record.operations),
                   "; ".join(op.label for op in record.operations),
                   tuple(sorted({e.concept for e in effects if e.target_value == 1})),
                   tuple(sorted({e.concept for e in effects if e.target_value == 0})))


def _reader_concepts(ctx: RunContext, synthetic: list[SyntheticCandidate]) -> list[str]:
    """The findings a reader may tick: the spec's concepts (else the data's), and every concept an edit sets;
    'No Finding' is not one (no tick means no finding)."""
    listed = list(ctx.spec.concepts) if ctx.spec else list(ctx.manifest.concepts)
    for candidate in synthetic:
        listed += [c for c in (*candidate.case.shown, *candidate.case.removed) if c not in listed]
    return [c for c in listed if c != "No Finding"]


def _case_pixels(ctx: RunContext, cases, layout, train) -> dict[str, np.ndarray]:
    """Each case as uint8 (H, W): an edit as the generator wrote it; a real image decoded and resized by the
    same path that gave the edits their sources, to the edits' size."""
    from cxr_audit.data.decoded import load_images
    from cxr_audit.data.images import load_image

    edits = {case_id: load_image(layout.image(shown)) for case_id, case, shown in cases if case.truth == "synthetic"}
    sizes = {image.shape for image in edits.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 2 or next(iter(sizes))[0] != next(iter(sizes))[1]:
        raise UserInputError(f"{layout.images}: the edits are not all square images of one size ({sorted(sizes)}); "
                             "were they replaced by hand? Synthesize again.")
    size = next(iter(sizes))[0]
    real = [(case_id, shown) for case_id, case, shown in cases if case.truth == "real"]
    by_id = dict(zip(train.frame["image_id"].astype(str), train.frame["path"]))
    decoded = load_images([train.resolve_image(by_id[image_id]) for _, image_id in real], size, ctx.cache_dir,
                          ctx.workers, ctx.progress, desc="reader-study images")
    pixels = {case_id: image for case_id, image in edits.items()}
    pixels.update({case_id: decoded[k, 0] for k, (case_id, _) in enumerate(real)})
    return {case_id: np.round(np.clip(image, 0, 1) * 255).astype(np.uint8) for case_id, image in pixels.items()}


def _write_kit(kit: ReaderKitLayout, cases, pixels: dict[str, np.ndarray], manifest: dict, dicom: bool,
               seed: int) -> None:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    kit.images.mkdir(parents=True)
    shown = []
    for case_id, _, _ in sorted(cases):
        png = png_bytes(pixels[case_id])
        kit.image(case_id).write_bytes(png)
        if dicom:
            from cxr_audit.synthesis.dicom_out import write_reader_study_dicom

            write_reader_study_dicom(kit.image(case_id, ".dcm"), pixels[case_id], case_id,
                                     nonce=f"{manifest['key_sha256']}:{seed}")
        shown.append({"id": case_id, "uri": "data:image/png;base64," + base64.b64encode(png).decode()})
    environment = Environment(loader=PackageLoader("cxr_audit.report", "templates"),
                              autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined)
    form = environment.get_template("reader_form.html.j2").render(
        cases=shown, case_ids=[c["id"] for c in shown], concepts=manifest["concepts"], key_sha256=manifest["key_sha256"])
    kit.form.write_text(form, encoding="utf-8")
    template = ",".join(RESPONSE_COLUMNS) + "\n" + "".join(
        f"{manifest['key_sha256']},{c['id']},,,,\n" for c in shown)
    kit.template.write_text(template, encoding="utf-8")
    atomic_write_json(kit.manifest, manifest)


def _check_kit_folder(ctx: RunContext, out: Path, force: bool) -> None:
    """The kit goes to readers: never inside the run (which holds the key) or over a folder that is not a kit."""
    resolved, run = out.resolve(), ctx.run.path.resolve()
    if resolved == run or resolved.is_relative_to(run) or run.is_relative_to(resolved):
        raise UserInputError(f"--out {out}: a kit goes to the readers, so it is kept apart from the run {ctx.run.path} "
                             "(which holds the key). Choose a folder outside the run.")
    data = ctx.path("data").resolve()
    if data == resolved or data.is_relative_to(resolved):
        raise UserInputError(f"--out {out} holds the run's data ({ctx.path('data')}); choose an empty folder.")
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; pass a folder for the kit.")
    if out.is_dir() and any(out.iterdir()):
        if not ReaderKitLayout(out).manifest.is_file():
            raise UserInputError(f"--out {out} is not empty and holds no reader-study kit; choose an empty folder.")
        if not force:
            raise UserInputError(f"--out {out} already holds a kit. Pass --force to replace it.")


# -- scoring -------------------------------------------------------------------------------------------------------
def score_responses(ctx: RunContext, files: list[Path], seed: int = 0) -> dict:
    """The answers in `files` (every reader, every case) scored against the run's key: reader_study.json."""
    import pandas as pd

    study = ctx.run.reader_study
    if not study.key.is_file():
        raise UserInputError(f"{ctx.run.path} has no reader-study key: export a kit first (`cxr-audit reader-study "
                             f"export --run {ctx.run.path} --out KIT`).")
    key_document_ = read_json(study.key, "")
    key, key_sha256 = key_cases(key_document_), sha256_file(study.key)
    if not files:
        raise UserInputError("Pass the readers' answers: --responses R1.csv [--responses R2.csv ...].")
    by_file = {}
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"--responses {path} does not exist or is a folder. Pass the CSV a reader's form saved.")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
        except UnicodeDecodeError:
            raise UserInputError(f"{path} is not UTF-8 text: save the responses as a UTF-8 CSV.") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as error:
            raise UserInputError(f"{path} is not a readable CSV ({str(error).strip() or 'empty'}). Use the file the "
                                 "kit's form saved, or fill in responses_template.csv.") from None
        frame.columns = [str(c).strip() for c in frame.columns]
        by_file[path] = parse_responses(path, frame.to_dict("records"), list(frame.columns), key, key_sha256,
                                        key_document_["concepts"])
    check_complete(by_file, key)
    responses = [r for rows in by_file.values() for r in rows]
    document = {"schema_version": READER_STUDY_SCHEMA_VERSION, "key_sha256": key_sha256,
                "responses": [{"path": str(p), "sha256": sha256_file(p), "rows": len(rows)} for p, rows in by_file.items()],
                "readers": sorted({r.reader for r in responses}), "cases": len(key),
                "synthetic_cases": sum(c.truth == "synthetic" for c in key.values()),
                "real_cases": sum(c.truth == "real" for c in key.values()),
                "intervals": "Wilson 95% for shares, pooled over readers (each reader-case judgement counted once); "
                             "detection AUROC: percentile bootstrap over cases",
                **score_reader_study(key, responses, seed)}
    study.folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study.results, document)
    return document


def read_reader_study(ctx: RunContext) -> dict | None:
    """The run's scored reader study, when there is one."""
    path = ctx.run.reader_study.results
    return read_json(path, "") if path.is_file() else None
