"""Training regions for an inpainting generator (which anatomical region each training sample hides)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from cxr_audit import concepts


class RegionSampler:
    """Training regions for an inpainting generator: for each image, the edit region of one concept (a
    positive one half of the time when the image has any, so present findings are seen inside their region);
    10% of samples hide the whole image (unconstrained mode). Regions come from label-independent anatomy
    (anatomy.regions_from_anatomy), so their shape never gives the label away.

    One-sided concepts (Effusion, Pneumothorax, ...) hide both sides half of the time and one side, drawn at
    random, otherwise. An insert edits one side, with the other side shown clean; a model that only ever saw
    both sides hidden puts the finding wherever it likes, often on the side that is then thrown away. The
    side is drawn without looking at the label, so it gives nothing away either: with a label of 1 and a
    clean side in view, the finding has to go in the hidden side."""

    SIDES = ("both", "right", "left")

    def __init__(self, anatomies: Sequence[dict[str, np.ndarray]], concept_names: list[str], p_whole: float = 0.1,
                 focus: list[str] | None = None, p_one_side: float = 0.5, keep: int = 8192):
        from cxr_audit.anatomy.regions import region_planes

        self.anatomies = anatomies
        self.concept_names = list(concept_names)
        self.p_whole = p_whole
        self.p_one_side = p_one_side
        # Concepts the plan will edit get most of the training regions: on a CPU budget, the steps go where
        # the edits will be made.
        self.focus = [c for c in (focus or []) if c in self.concept_names]
        self._lateral = {c for c in self.concept_names if concepts.get(c).lateral}
        self._planes = region_planes(self.concept_names, self.SIDES)
        self._plane_index = {plane: i for i, plane in enumerate(self._planes)}
        self._packed: OrderedDict[int, np.ndarray] = OrderedDict()  # image -> bit-packed (planes, S, S) regions
        self._keep = keep  # images whose regions stay packed in memory (the most recently drawn)

    def _region(self, index: int, concept: str, side: str = "both") -> np.ndarray:
        from cxr_audit.anatomy.regions import binary_edit_masks

        # All regions of an image at once (its anatomy is derived once), bit-packed: 435 images x 32 planes
        # (NIH's 14 concepts, 9 of them with one-sided planes too) at 256 px stay near 115 MB, and a training
        # step on a set that fits costs no anatomy work after the first epoch. A larger archive keeps the
        # `keep` most recently drawn images (bounded memory; a region derived again is the same region).
        if index in self._packed:
            self._packed.move_to_end(index)
        else:
            regions = binary_edit_masks(self.concept_names, self.anatomies[index], self.SIDES)
            self._packed[index] = np.packbits(np.stack([regions[plane] for plane in self._planes]), axis=-1)
            if len(self._packed) > self._keep:
                self._packed.popitem(last=False)
        size = self.anatomies[index]["lung_right"].shape[1]
        return np.unpackbits(self._packed[index][self._plane_index[concept, side]], axis=-1, count=size)

    def sample(self, indices: np.ndarray, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        size = next(iter(self.anatomies[0].values())).shape
        out = np.zeros((len(indices), 1, *size), np.float32)
        # whole image, focus, positive, concept, one side, which side
        draws = torch.rand(len(indices), 6, generator=generator).numpy()
        for k, index in enumerate(indices):
            if draws[k, 0] < self.p_whole:
                out[k, 0] = 1
                continue
            candidates = self.focus if self.focus and draws[k, 1] < 0.8 else self.concept_names
            positives = [c for j, c in enumerate(self.concept_names) if labels[index, j] == 1 and c in candidates]
            pool = positives if positives and draws[k, 2] < 0.5 else candidates
            concept = pool[min(int(draws[k, 3] * len(pool)), len(pool) - 1)]
            side = "both"
            if concept in self._lateral and draws[k, 4] < self.p_one_side:
                side = "right" if draws[k, 5] < 0.5 else "left"
            out[k, 0] = self._region(int(index), concept, side)
        return torch.from_numpy(out)
