"""The CARS perturbations of a concept vector, each an object that carries its own behaviour.

An operation kind says what it does to the target vector, which side of the chest its edit region takes,
which way the checker's and the deployed model's score of its concept should move, and how the phantom draws
its exact counterfactual. The planner, synthesis, QC, the probe and the verdict call these methods; none of
them compares operation names. A new perturbation is one class here and one line in `OPERATIONS`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from cxr_audit import concepts


class OperationKind:
    """What one kind of edit does to the concept it names."""

    name: ClassVar[str]
    target_value: ClassVar[float]       # the concept's value in the target vector
    expected_direction: ClassVar[int]   # +1: the concept's score should rise (checker and probe); -1: fall

    def side(self, concept: str, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        """The side of the chest ('left', 'right' or 'both') the edit region of `concept` takes."""
        raise NotImplementedError

    def checker_margin(self, probability: float, cut: float) -> float:
        """The checker's probability past its call, toward this edit's target (>= 0: the checker agrees)."""
        raise NotImplementedError

    def counterfactual(self, study, concept: str):
        """The phantom study with this edit's ground truth drawn (the same patient, one finding changed)."""
        raise NotImplementedError


class Insert(OperationKind):
    name = "insert"
    target_value = 1.0
    expected_direction = 1

    def side(self, concept: str, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        # A one-sided finding is drawn on a side chosen by the edit's seed.
        return str(rng.choice(["right", "left"])) if concepts.get(concept).lateral else "both"

    def checker_margin(self, probability: float, cut: float) -> float:
        return probability - cut

    def counterfactual(self, study, concept: str):
        from cxr_audit.data import phantom

        return phantom.counterfactual(study, add=concept)


class Delete(OperationKind):
    name = "delete"
    target_value = 0.0
    expected_direction = -1

    def side(self, concept: str, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        # A one-sided finding is removed where its own mask (when the dataset has one) says it is.
        mask = finding_masks.get(concept.lower().replace(" ", "_"))
        if not concepts.get(concept).lateral or mask is None:
            return "both"
        cols = np.flatnonzero(mask.any(axis=0))
        if not cols.size:
            return "both"
        left_share = (cols > mask.shape[1] / 2).mean()  # the patient's left is the image's right
        return "both" if 0.2 < left_share < 0.8 else ("left" if left_share >= 0.8 else "right")

    def checker_margin(self, probability: float, cut: float) -> float:
        return cut - probability

    def counterfactual(self, study, concept: str):
        from cxr_audit.data import phantom

        return phantom.counterfactual(study, remove=concept)


OPERATIONS: dict[str, OperationKind] = {kind.name: kind for kind in (Insert(), Delete())}


def operation_kind(name: str) -> OperationKind:
    """The behaviour of the operation named `name` in a document."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}") from None
