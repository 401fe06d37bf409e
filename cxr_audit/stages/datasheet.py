"""The datasheet stage: what each partition of the data holds, whether patients cross partitions, and
near-duplicate images across partitions (refused in the test split unless --allow-near-duplicates).

The algorithms are data/datasheet.py's; this stage decodes (through the decoded-image store), hashes and
writes RUN/datasheet/datasheet.json. The audit adds the synthetic partition (the accepted edits) when it
assembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_audit.evaluation.datasheet import (
    HASH_IMAGE_SIZE,
    HASH_SIZE,
    MAX_LISTED_PAIRS,
    NEAR_DUPLICATE_BITS,
    near_duplicate_pairs,
    partition_summary,
    perceptual_hashes,
    patient_overlap,
)
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, read_json
from cxr_audit.stages.context import RunContext

PARTITIONS = ("train", "val", "test")


class DataSheetStage:
    name = "datasheet"
    needs = ()

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.path = ctx.run.datasheet
        self.folder = self.path.parent

    def outputs(self) -> list[Path]:
        return [self.path]

    def inputs(self) -> dict:
        ctx = self.ctx
        return {"data": ctx.data_sha256, "format": ctx.manifest.format, "spec": ctx.spec_sha256 if ctx.spec else None,
                "images": {split: ctx.ids_sha256(split) for split in PARTITIONS},
                "allow_near_duplicates": ctx.config.allow_near_duplicates,
                "hash": f"imagehash pHash {HASH_SIZE}x{HASH_SIZE} at {HASH_IMAGE_SIZE} px, <= {NEAR_DUPLICATE_BITS} bits"}

    def run(self) -> None:
        import pandas as pd

        ctx = self.ctx
        parts = {split: ctx.frontal(split) for split in PARTITIONS}
        concepts = [c for c in (ctx.spec.concepts if ctx.spec else ctx.manifest.concepts) if c in ctx.manifest.concepts]
        document = {"schema_version": "1.0", "concepts": concepts, "partitions": {}}
        for split, part in parts.items():
            frame = part.with_equipment()
            document["partitions"][split] = partition_summary(frame, concepts, part.labels(concepts, ctx.label_policy))
        everything = pd.concat([part.frame.assign(split=split) for split, part in parts.items()], ignore_index=True)
        document["patient_overlap"] = patient_overlap(everything)
        document["near_duplicates"] = self._near_duplicates(parts)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, document)

    def _near_duplicates(self, parts: dict) -> dict:
        from cxr_audit.data.decoded import image_batches

        ctx = self.ctx
        ids, partitions, paths = [], [], []
        for split, part in parts.items():
            ids += part.frame["image_id"].astype(str).tolist()
            partitions += [split] * len(part)
            paths += [part.resolve_image(p) for p in part.frame["path"]]
        method = {"method": f"imagehash pHash ({HASH_SIZE * HASH_SIZE} bits) of each frontal image decoded at "
                            f"{HASH_IMAGE_SIZE} px; pairs of different partitions within {NEAR_DUPLICATE_BITS} bits",
                  "max_bits": NEAR_DUPLICATE_BITS}
        missing = [p for p in paths if not p.is_file()]
        if missing and ctx.black_box:  # a black box may be audited from its predictions without the images
            return {**method, "checked": False, "reason": f"{len(missing)} of {len(paths)} images are not on disk "
                    f"(first: {missing[0]}); audit with the images to check for near-duplicates", "pairs": []}
        # a batch at a time, so memory stays flat however large the archive
        hashes = [perceptual_hashes(batch) for batch in image_batches(paths, HASH_IMAGE_SIZE, ctx.cache_dir,
                                                                      ctx.workers, ctx.progress, "hashing images")]
        hashes = np.concatenate(hashes) if hashes else perceptual_hashes(np.zeros((0, 1, 1, 1), np.float32))
        pairs = near_duplicate_pairs(hashes, np.array(partitions))
        listed = [{"image": ids[i], "partition": partitions[i], "other": ids[j], "other_partition": partitions[j],
                   "bits": bits} for i, j, bits in pairs]
        in_test = [p for p in listed if "test" in (p["partition"], p["other_partition"])]
        if in_test and not ctx.config.allow_near_duplicates:
            shown = "; ".join(f"{p['image']} ({p['partition']}) ~ {p['other']} ({p['other_partition']}, {p['bits']} bits)"
                              for p in in_test[:5])
            raise UserInputError(f"{ctx.path('data')}: {len(in_test)} test images are near-duplicates of images in "
                                 f"other partitions ({shown}{' ...' if len(in_test) > 5 else ''}): the test split would "
                                 "score images the model may have trained on. Remove or reassign them, or pass "
                                 "--allow-near-duplicates to go on (the report then notes it).")
        return {**method, "checked": True, "images": len(ids), "pairs_found": len(listed),
                "pairs_with_test": len(in_test), "allowed": bool(in_test) and ctx.config.allow_near_duplicates,
                "pairs": listed[:MAX_LISTED_PAIRS]}


def read_datasheet(ctx: RunContext) -> dict | None:
    return read_json(ctx.run.datasheet, "") if ctx.run.datasheet.is_file() else None


def synthetic_partition(ctx: RunContext, concepts: list[str]) -> dict | None:
    """The accepted CARS edits as a partition (from synthetic_manifest.csv): what the CARS arm added."""
    import pandas as pd

    manifest_path = ctx.run.synthesis("cars").manifest
    if not manifest_path.is_file():
        return None
    try:
        frame = pd.read_csv(manifest_path)
    except pd.errors.EmptyDataError:  # no edit was accepted: the manifest has no row (nor header)
        frame = pd.DataFrame()
    if frame.empty:
        return partition_summary(pd.DataFrame({"patient_id": []}), concepts, np.zeros((0, len(concepts))))
    from cxr_audit.data.manifest import normalise_sex

    renamed = frame.rename(columns={"Sex": "sex", "Age": "age", "AP/PA": "view"})
    if "sex" in renamed:  # the manifest's spelling (F, M), as in the real partitions
        renamed["sex"] = normalise_sex(renamed["sex"], [], manifest_path)
    labels = np.stack([pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype=float) if c in frame else
                       np.full(len(frame), np.nan) for c in concepts], axis=1) if concepts else np.zeros((len(frame), 0))
    summary = partition_summary(renamed, concepts, labels)
    summary["source_patients"] = summary.pop("patients")
    return summary
