"""Quality control of synthetic images: anatomy fidelity, concept alignment, realism (AURAD's lesson:
let independent expert models reject implausible outputs). Failing images are dropped and counted."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage


@dataclass
class QCThresholds:
    max_outside_mae: float = 0.002     # mean change outside the edit region (by construction ~0)
    min_outside_ssim: float = 0.98
    min_alignment: float = 0.5         # the checker's call when its card has no operating threshold
    texture_ratio: tuple[float, float] = (0.4, 2.5)  # edited / source high-frequency energy in the region


@dataclass
class QCResult:
    outside_mae: float
    outside_ssim: float
    alignment: float | None            # margin past the checker's call (>= 0 agrees); None without a checker
    checker_before: float | None
    checker_after: float | None
    texture_ratio: float
    ground_truth_mae: float | None     # phantom only: distance to the true counterfactual inside the region
    passed: bool
    reasons: list[str]
    ungradable: list[str]              # concepts the edit sets that the checker cannot grade

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _ssim_outside(source: np.ndarray, edited: np.ndarray, outside: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    _, ssim_map = structural_similarity(source, edited, data_range=1.0, full=True)
    return float(ssim_map[outside].mean()) if outside.any() else 1.0


def _texture(image: np.ndarray, region: np.ndarray) -> float:
    return float(np.abs(ndimage.laplace(image))[region].mean()) if region.any() else 0.0


def score_edit(source: np.ndarray, edited: np.ndarray, region: np.ndarray, soft: np.ndarray,
               operations: list, checker_before: dict[str, float] | None,
               checker_after: dict[str, float] | None, ground_truth: np.ndarray | None = None,
               thresholds: QCThresholds | None = None, require_fidelity: bool = True,
               checker_thresholds: dict[str, float] | None = None, ungradable: list[str] | None = None,
               accept_ungradable: bool = False) -> QCResult:
    """Score one edit. `checker_*` map concept -> probability from the independent checker model.

    `require_fidelity` false (the unconstrained ablation, which regenerates the whole image on purpose)
    still measures the change outside the region but does not reject the edit for it. `checker_thresholds`
    (concept -> the checker's operating threshold, from its card) decide whether the checker calls a concept;
    `thresholds.min_alignment` stands in for a concept without one. `alignment` is the checker's probability
    toward the target (1 - p for a deletion) minus what the call needs: >= 0 agrees.

    `ungradable` names the concepts of this edit the checker is not fit to grade: the checker's word on them is
    not taken, and the edit is rejected as ungradable unless `accept_ungradable` (the user's recorded choice)."""
    ungradable = sorted(set(ungradable or []))
    thresholds = thresholds or QCThresholds()
    outside = soft < 1e-3  # untouched by the edit and its feathered rim
    outside_mae = float(np.abs(edited - source)[outside].mean()) if outside.any() else 0.0
    ssim = _ssim_outside(source, edited, outside)
    alignment, before, after = None, None, None
    if checker_before is not None and checker_after is not None:
        scores = []  # every concept the edit sets, each way it should move (a swap: one down, one up)
        for effect in (e for operation in operations for e in operation.effects):
            if effect.concept in checker_after and effect.concept not in ungradable:
                cut = (checker_thresholds or {}).get(effect.concept, thresholds.min_alignment)
                scores.append(effect.checker_margin(checker_after[effect.concept], cut))
        if scores:
            alignment = float(min(scores))
            first = operations[0].concept
            before, after = checker_before.get(first), checker_after.get(first)
    texture = _texture(edited, region) / max(_texture(source, region), 1e-6)
    truth = float(np.abs(edited - ground_truth)[region].mean()) if ground_truth is not None else None
    reasons = []
    if require_fidelity and outside_mae > thresholds.max_outside_mae:
        reasons.append("anatomy changed outside the edit region")
    if require_fidelity and ssim < thresholds.min_outside_ssim:
        reasons.append("structure changed outside the edit region (SSIM)")
    if alignment is not None and alignment < 0:
        reasons.append("checker disagrees: concept not inserted/deleted")
    if ungradable and not accept_ungradable:
        reasons.append("ungradable: the checker cannot grade " + ", ".join(ungradable))
    lo, hi = thresholds.texture_ratio
    if not lo <= texture <= hi:
        reasons.append("unrealistic texture in the edited region")
    return QCResult(outside_mae, ssim, alignment, before, after, texture, truth, not reasons, reasons, ungradable)
