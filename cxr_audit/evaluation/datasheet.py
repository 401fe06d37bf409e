"""The data sheet of an evaluation: what each partition holds (images, patients, prevalence per concept, sex,
age bands, views, devices), whether patients cross partitions, and near-duplicate images across partitions.

On frames and arrays; the datasheet stage decodes, hashes and writes. Near-duplicates: a perceptual hash
(imagehash's pHash, 256 bits from a 128-pixel image) per image; two images of different partitions whose
hashes differ in at most NEAR_DUPLICATE_BITS bits are listed. Distinct radiographs sit far apart (on the NIH
sample the closest pair of different patients differs in 58 bits, on the phantom in 16), while a copy
re-encoded, resized or re-windowed stays within a few bits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_audit.evaluation.subgroups import subgroup_levels

HASH_IMAGE_SIZE = 128
HASH_SIZE = 16                # pHash of 16 x 16 DCT coefficients: 256 bits
NEAR_DUPLICATE_BITS = 8
MAX_LISTED_PAIRS = 200


def partition_summary(frame: pd.DataFrame, concepts: list[str], labels: np.ndarray) -> dict:
    """One partition: images, patients, per concept (labelled, positives, prevalence), and the count of images
    per sex, age band, view, manufacturer and model the data records."""
    out = {"images": int(len(frame)), "patients": int(frame["patient_id"].nunique()) if len(frame) else 0,
           "concepts": {}}
    for j, concept in enumerate(concepts):
        known = ~np.isnan(labels[:, j])
        positives = int(np.nansum(labels[known, j]))
        out["concepts"][concept] = {"labelled": int(known.sum()), "positives": positives,
                                    "prevalence": round(positives / known.sum(), 6) if known.any() else None}
    for variable, values in subgroup_levels(frame.reset_index(drop=True)).items():
        counts = values.fillna("unknown").astype(str).value_counts()
        out[variable] = {str(level): int(n) for level, n in sorted(counts.items())}
    return out


def patient_overlap(frame: pd.DataFrame) -> dict:
    """Patients found in more than one partition (the split is by patient: there should be none)."""
    splits = frame.groupby("patient_id")["split"].nunique()
    crossing = sorted(splits[splits > 1].index.astype(str))
    return {"checked": True, "patients_in_several_partitions": len(crossing), "examples": crossing[:10]}


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """(N, HASH_SIZE**2) bool: imagehash's pHash of each image ((N, 1, H, W) in [0, 1], as decoded)."""
    import imagehash
    from PIL import Image

    if not len(images):
        return np.zeros((0, HASH_SIZE * HASH_SIZE), bool)
    return np.stack([imagehash.phash(Image.fromarray(np.round(image[0] * 255).astype(np.uint8)),
                                     hash_size=HASH_SIZE).hash.ravel() for image in images])


def near_duplicate_pairs(hashes: np.ndarray, partitions: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS
                         ) -> list[tuple[int, int, int]]:
    """(i, j, differing bits) for images of different partitions whose hash bits (N, B bool) differ in at most
    `max_bits`. Only images that agree exactly on one of `max_bits + 1` bands are compared (none within
    `max_bits` is missed): about linear in the images for distinct radiographs, not quadratic."""
    n, bits = hashes.shape
    if n < 2:
        return []
    hashes, partitions = np.asarray(hashes, dtype=bool), np.asarray(partitions).astype(str)
    found: dict[tuple[int, int], int] = {}
    for band in np.array_split(np.arange(bits), max_bits + 1):
        keys = np.packbits(hashes[:, band], axis=1)
        _, group, sizes = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        for label in np.flatnonzero(sizes > 1):
            members = np.flatnonzero(group.ravel() == label)
            for start in range(0, len(members), 256):  # rows in chunks: memory stays chunk x members x bits
                rows = members[start:start + 256]
                distance = (hashes[rows][:, None, :] != hashes[members][None, :, :]).sum(axis=2)
                close = (distance <= max_bits) & (partitions[rows][:, None] != partitions[members][None, :])
                close &= rows[:, None] < members[None, :]
                for a, b in zip(*np.nonzero(close)):
                    found[(int(rows[a]), int(members[b]))] = int(distance[a, b])
    return [(i, j, d) for (i, j), d in sorted(found.items())]
