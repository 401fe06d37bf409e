"""Anatomical edit regions: where on this image a concept may be inserted or deleted.

Input is a set of anatomy masks for one image (lungs left/right, and where known heart and mediastinum),
from the phantom, from mask files on disk, or from a segmentation model. Each region name of
`concepts.REGIONS` is derived from them; regions that are not drawn directly (costophrenic angles,
apical/lateral pleura, perihilar zones) come from each lung's own extent. The edit mask of a concept is the
union of its regions, side-aware for one-sided findings, then dilated and feathered.

Sides are the patient's: the right lung is on the image's left.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cxr_audit import concepts
from cxr_audit.errors import UserInputError


def _rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))


def _lung_zones(lung: np.ndarray, side: str) -> dict[str, np.ndarray]:
    """Zones of one lung from its bounding box: lower lateral (costophrenic), upper + lateral rim
    (pneumothorax), medial middle (perihilar)."""
    zones = {k: np.zeros_like(lung) for k in ("costophrenic", "apical_lateral", "perihilar")}
    rows, cols = _rows_cols(lung)
    if rows.size == 0:
        return zones
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    height, width = bottom - top + 1, right - left + 1
    y, x = np.mgrid[: lung.shape[0], : lung.shape[1]]
    # 0 at the medial edge, 1 at the chest wall (the right lung's chest wall is on the image's left)
    lateral = (right - x) / width if side == "right" else (x - left) / width
    depth = (y - top) / height
    rim = lung & ~ndimage.binary_erosion(lung, iterations=max(2, width // 3))  # where a collapsing lung retracts
    below = ndimage.binary_dilation(lung, iterations=max(2, height // 10)) & (depth > 0.7)
    zones["costophrenic"] = ((lung | below) & (depth > 0.6))
    zones["apical_lateral"] = lung & ((depth < 0.45) | (rim & (lateral > 0.4) & (depth < 0.85)))
    zones["perihilar"] = lung & (depth > 0.2) & (depth < 0.75) & (lateral < 0.6)
    return zones


def regions_from_anatomy(masks: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{region: {'right': mask, 'left': mask, 'both': mask}} for every region name in concepts.REGIONS."""
    right, left = masks["lung_right"].astype(bool), masks["lung_left"].astype(bool)
    shape = right.shape
    lungs = right | left
    rows, cols = _rows_cols(lungs)
    if rows.size == 0:
        raise UserInputError("The anatomy masks hold no lung pixels; the edit region cannot be placed.")
    top, bottom = rows[0], rows[-1]
    hull = np.zeros(shape, bool)
    for r in rows:  # the span between the outer lung edges on each row: the thorax
        line = np.flatnonzero(lungs[r])
        hull[r, line[0]: line[-1] + 1] = True
    between = hull & ~lungs
    y = np.mgrid[: shape[0], : shape[1]][0]
    mediastinum = masks.get("mediastinum")
    if mediastinum is None:  # no mediastinum mask: the upper part of the space between the lungs
        mediastinum = between & (y <= top + 0.6 * (bottom - top))
    mediastinum = mediastinum.astype(bool)
    # The cardiac region comes from the thorax (the outer lung edges), not from today's heart: an enlarging
    # heart grows into the lungs, so the region must hold the largest plausible heart, and it must not
    # depend on whether the heart is enlarged, or a generator trained on regions would read the answer from
    # the region's shape instead of the concept vector.
    x = np.mgrid[: shape[0], : shape[1]][1]
    width = cols[-1] - cols[0]
    centre = (cols[0] + cols[-1]) / 2
    cardiac = hull & (y > top + 0.38 * (bottom - top)) & (x > centre - 0.30 * width) & (x < centre + 0.36 * width)
    zones = {"right": _lung_zones(right, "right"), "left": _lung_zones(left, "left")}

    def sided(right_mask: np.ndarray, left_mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"right": right_mask, "left": left_mask, "both": right_mask | left_mask}

    def central(mask: np.ndarray) -> dict[str, np.ndarray]:
        return {"right": mask, "left": mask, "both": mask}

    pleura_band = lambda lung: lung & ~ndimage.binary_erosion(lung, iterations=2)
    outside = lambda lung: ndimage.binary_dilation(lung, iterations=4) & ~lung
    # Tubes, lines and ECG leads lie anywhere over the upper chest and neck, lungs included.
    upper = np.zeros(shape, bool)
    upper[: top + int(0.4 * (bottom - top)), max(cols[0] - 4, 0): cols[-1] + 5] = True
    diaphragm = ndimage.binary_dilation(lungs, iterations=6) & ~lungs & (y > top + 0.6 * (bottom - top))
    return {
        "lung_fields": sided(right, left),
        "cardiac_silhouette": central(cardiac),
        "mediastinum": central(mediastinum),
        "costophrenic_angles": sided(zones["right"]["costophrenic"], zones["left"]["costophrenic"]),
        "apical_lateral_pleura": sided(zones["right"]["apical_lateral"], zones["left"]["apical_lateral"]),
        "perihilar": sided(zones["right"]["perihilar"], zones["left"]["perihilar"]),
        "upper_chest": central(upper | mediastinum),
        "chest_wall": sided(outside(right), outside(left)),
        "diaphragm": central(diaphragm),
        "pleura": sided(pleura_band(right), pleura_band(left)),
        "whole_image": central(np.ones(shape, bool)),
    }


def _default_dilation(shape: tuple[int, ...]) -> int:
    return max(1, round(0.03 * shape[0]))


def _binary_region(concept_names: list[str], regions: dict, side: str, shape: tuple[int, ...],
                   dilate_px: int) -> np.ndarray:
    binary = np.zeros(shape, bool)
    for name in concept_names:
        concept = concepts.get(name)
        chosen_side = side if concept.lateral else "both"
        for region in concept.regions:
            binary |= regions[region][chosen_side]
    if dilate_px:
        binary = ndimage.binary_dilation(binary, structure=np.ones((3, 3), bool), iterations=dilate_px)
    return binary


def edit_mask(concept_names: list[str], masks: dict[str, np.ndarray], side: str = "both",
              dilate_px: int | None = None, feather_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The edit region for inserting or deleting `concept_names` on this image.

    Returns (binary mask, feathered soft mask in [0, 1]). `side` applies to one-sided concepts only.
    Dilation and feathering default to a few percent of the image size, so a lesion at a region's edge and
    the transition into untouched anatomy both fit."""
    shape = masks["lung_right"].shape
    dilate_px = _default_dilation(shape) if dilate_px is None else dilate_px
    feather_px = 0.02 * shape[0] if feather_px is None else feather_px
    binary = _binary_region(concept_names, regions_from_anatomy(masks), side, shape, dilate_px)
    soft = ndimage.gaussian_filter(binary.astype(np.float32), feather_px) if feather_px else binary.astype(np.float32)
    soft = np.maximum(soft, binary * 0.999).clip(0, 1)  # inside stays fully editable; only the rim ramps
    return binary, soft.astype(np.float32)


def region_planes(concept_names: list[str], sides: tuple[str, ...] = ("both",)) -> list[tuple[str, str]]:
    """The (concept, side) edit regions that exist: both sides for every concept, one side only for lateral
    (usually one-sided) concepts."""
    return [(name, side) for side in sides for name in concept_names if side == "both" or concepts.get(name).lateral]


def binary_edit_masks(concept_names: list[str], masks: dict[str, np.ndarray],
                      sides: tuple[str, ...] = ("both",)) -> dict[tuple[str, str], np.ndarray]:
    """{(concept, side): edit_mask(...)[0]} for each of region_planes(), deriving the regions once (what
    training needs: many concepts per image, no feathering)."""
    shape = masks["lung_right"].shape
    regions = regions_from_anatomy(masks)
    return {(name, side): _binary_region([name], regions, side, shape, _default_dilation(shape))
            for name, side in region_planes(concept_names, sides)}
