"""Anatomy fidelity of an edit, measured the same way on the source and the edit by the lung segmenter:
how much of the lungs outside the edit region stayed where they were (Dice), and the cardiothoracic ratio
(CTR) before and after.

The CTR is read from the lung masks, as a radiologist reads it off a PA film: the widest horizontal gap
between the two lungs' medial borders in the lower half of the lung fields (the heart's transverse diameter)
over the widest outer extent of the lungs (the thorax). The gap is counted softly (the sum of 1 - p over the
columns between the lungs' centres, p the segmenter's probability), so a heart one or two pixels wider moves
it even at the phantom's 64 px, where a thresholded border would move by whole pixels or not at all.

Arrays in, numbers out: the synthesize stage decides what to reject (synthesis/qc.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cxr_audit.anatomy.segmenter import SEG_SIZE, LungSegmenter, split_lungs

LOWER_BAND = (0.5, 0.9)  # rows of the shared lung extent where the heart's widest diameter lies (top = 0)
# The smallest image on which the segmenter's CTR is trusted to judge an edit. Measured on exact phantom
# counterfactuals (40 studies, full contrast): an inserted cardiomegaly raises the ratio it reads in 40 of 40 at
# 128 px (mean +0.127), but in only 26 of 40 at 64 px, where it is upsampled from a quarter of the pixels it
# was trained on; at the demo's subtle 28% contrast, 82% at 64 px. Below this size the ratio is measured and
# reported, never a reason to reject.
MIN_CTR_SIZE = 128


@dataclass(frozen=True)
class AnatomyMeasure:
    lung_dice_outside: float      # lungs of source and edit, outside the (dilated) edit region
    ctr_before: float | None      # None: the segmenter did not find two lungs
    ctr_after: float | None
    ctr_judged: bool = True       # the image is large enough for the ratio to judge the edit (MIN_CTR_SIZE)

    @property
    def ctr_change(self) -> float | None:
        return None if self.ctr_before is None or self.ctr_after is None else self.ctr_after - self.ctr_before


@torch.inference_mode()
def lung_probabilities(segmenter: LungSegmenter, images: np.ndarray) -> np.ndarray:
    """(B, SEG_SIZE, SEG_SIZE) lung probabilities of (B, S, S) images in [0, 1] (resized as `lungs` does)."""
    resized = np.stack([np.asarray(Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).resize(
        (SEG_SIZE, SEG_SIZE), Image.Resampling.BILINEAR)) for image in images]).astype(np.float32) / 255
    return torch.sigmoid(segmenter.net(torch.from_numpy(resized)[:, None]))[:, 0].numpy()


def cardiothoracic_ratio(probability: np.ndarray) -> float | None:
    """The CTR read from one lung probability map, or None without two lungs side by side."""
    lungs = split_lungs(probability > 0.5)
    right, left = lungs["lung_right"], lungs["lung_left"]
    rows = np.flatnonzero(right.any(axis=1) & left.any(axis=1))
    if rows.size < 4:
        return None
    span = rows[-1] - rows[0]
    band = rows[(rows >= rows[0] + LOWER_BAND[0] * span) & (rows <= rows[0] + LOWER_BAND[1] * span)]
    right_columns, left_columns = np.flatnonzero(right.any(axis=0)), np.flatnonzero(left.any(axis=0))
    centre_right, centre_left = int(right_columns.mean()), int(left_columns.mean())
    if band.size == 0 or centre_left <= centre_right:
        return None
    gap = (1 - probability[band, centre_right:centre_left + 1]).sum(axis=1).max()
    thorax = left_columns[-1] - right_columns[0] + 1
    return float(gap / thorax)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def measure_anatomy(segmenter: LungSegmenter, sources: np.ndarray, edits: np.ndarray,
                    regions: np.ndarray) -> list[AnatomyMeasure]:
    """Per edit: lung Dice outside its region (the region grown by 2% of the image, where the feathered rim
    may differ) and the CTR of the source and of the edit. `regions`: (B, S, S) bool, at the images' size."""
    from scipy import ndimage

    before, after = lung_probabilities(segmenter, sources), lung_probabilities(segmenter, edits)
    measures = []
    for p_source, p_edit, region in zip(before, after, regions):
        grown = np.asarray(Image.fromarray(region.astype(np.uint8) * 255).resize(
            (SEG_SIZE, SEG_SIZE), Image.Resampling.NEAREST)) > 127
        grown = ndimage.binary_dilation(grown, iterations=max(1, round(0.02 * SEG_SIZE)))
        outside = ~grown
        dice = _dice((p_source > 0.5) & outside, (p_edit > 0.5) & outside)
        measures.append(AnatomyMeasure(dice, cardiothoracic_ratio(p_source), cardiothoracic_ratio(p_edit),
                                       ctr_judged=min(region.shape) >= MIN_CTR_SIZE))
    return measures
