"""Quality control of synthetic images: anatomy fidelity, concept alignment, realism (AURAD's lesson:
let independent expert models reject implausible outputs). Failing images are dropped and counted."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from cxr_audit.anatomy.fidelity import AnatomyMeasure


@dataclass
class QCThresholds:
    max_outside_mae: float = 0.002     # mean change outside the edit region (by construction ~0)
    min_outside_ssim: float = 0.98
    min_alignment: float = 0.5         # the checker's call when its card has no operating threshold
    texture_ratio: tuple[float, float] = (0.4, 2.5)  # edited / source high-frequency energy in the region
    # Anatomy by the lung segmenter (anatomy/fidelity.py), on source and edit alike. The lungs outside the edit
    # region should not move (exact phantom counterfactuals: Dice 0.97 at least, at 64 and 128 px); the
    # cardiothoracic ratio must rise for an inserted cardiomegaly, fall for a deleted one, and otherwise stay
    # within a tolerance (images of MIN_CTR_SIZE and more). The tolerance is wide because the lung-based ratio
    # moves with anything at the lung bases: an exactly drawn effusion moves it by up to 0.30 (40 studies,
    # full contrast), so it catches a heart redrawn by an edit of something else, not subtle changes.
    min_lung_dice: float = 0.9
    ctr_tolerance: float = 0.35


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
    lung_dice_outside: float | None = None  # None: anatomy not measured (no segmenter)
    ctr_before: float | None = None
    ctr_after: float | None = None

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
               accept_ungradable: bool = False, anatomy: AnatomyMeasure | None = None) -> QCResult:
    """Score one edit. `checker_*` map concept -> probability from the independent checker model.

    `require_fidelity` false (the unconstrained ablation, which regenerates the whole image on purpose)
    still measures the change outside the region but does not reject the edit for it. `checker_thresholds`
    (concept -> the checker's operating threshold, from its card) decide whether the checker calls a concept;
    `thresholds.min_alignment` stands in for a concept without one. `alignment` is the checker's probability
    toward the target (1 - p for a deletion) minus what the call needs: >= 0 agrees.

    `ungradable` names the concepts of this edit the checker is not fit to grade: the checker's word on them is
    not taken, and the edit is rejected as ungradable unless `accept_ungradable` (the user's recorded choice).

    `anatomy` (the segmenter's reading of source and edit) adds the lung and heart-size checks: the heart-size
    direction of a cardiomegaly insert or delete is required of every arm (it is the finding); the lungs kept
    outside the region and the ratio kept for other edits only where fidelity is required."""
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
    if anatomy is not None:
        reasons += anatomy_reasons(anatomy, operations, thresholds, require_fidelity)
    return QCResult(outside_mae, ssim, alignment, before, after, texture, truth, not reasons, reasons, ungradable,
                    *((anatomy.lung_dice_outside, anatomy.ctr_before, anatomy.ctr_after) if anatomy else ()))


def anatomy_reasons(anatomy: AnatomyMeasure, operations: list, thresholds: QCThresholds,
                    require_fidelity: bool) -> list[str]:
    """Why the segmenter's reading rejects an edit (empty when it does not)."""
    reasons = []
    if require_fidelity and anatomy.lung_dice_outside < thresholds.min_lung_dice:
        reasons.append("lungs moved outside the edit region (segmenter Dice)")
    change = anatomy.ctr_change
    heart = [e.target_value for operation in operations for e in operation.effects if e.concept == "Cardiomegaly"]
    if not anatomy.ctr_judged:
        return reasons
    if change is None:
        if heart:
            reasons.append("heart size not measurable: the segmenter found no two lungs")
        return reasons
    if heart and heart[0] == 1.0 and change <= 0:
        reasons.append("cardiomegaly insert did not widen the heart (cardiothoracic ratio)")
    elif heart and heart[0] == 0.0 and change >= 0:
        reasons.append("cardiomegaly delete did not narrow the heart (cardiothoracic ratio)")
    elif not heart and require_fidelity and abs(change) > thresholds.ctr_tolerance:
        reasons.append("heart size changed by an edit of another finding (cardiothoracic ratio)")
    return reasons
