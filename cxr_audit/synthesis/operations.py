"""The CARS perturbations of a concept vector, each an object that carries its own behaviour.

An operation kind says what it does to the target vector (its effects: each concept it sets, to which value,
and which way the checker's and the deployed model's score of that concept should move), which side of the
chest its edit region takes, and how the phantom draws its exact counterfactual. The planner, synthesis, QC,
the probe and the verdict call these methods; none of them compares operation names. A new perturbation is
one class here and one line in `OPERATIONS`.

Insert and delete change one concept. Swap replaces one concept by another of the same group in one edit
(a consolidation for an atelectasis, a nodule for a mass, one device for another): the union of both regions
is edited, on the side of the finding it replaces; the first concept's score should fall and the second's rise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cxr_audit import concepts


@dataclass(frozen=True)
class Effect:
    """One concept an operation sets: its target value, the way its scores should move (+1 up, -1 down), and
    how reports name this part of the edit ('insert', 'delete', 'swap out', 'swap in')."""

    concept: str
    target_value: float
    expected_direction: int
    name: str

    def checker_margin(self, probability: float, cut: float) -> float:
        """The checker's probability past its call, toward this effect's target (>= 0: the checker agrees)."""
        return self.expected_direction * (probability - cut)


class OperationKind:
    """What one kind of edit does to the concept(s) it names (`operation`: a synthesis.documents.Operation)."""

    name: ClassVar[str]

    def effects(self, operation) -> list[Effect]:
        raise NotImplementedError

    def side(self, operation, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        """The side of the chest ('left', 'right' or 'both') the edit region takes."""
        raise NotImplementedError

    def counterfactual(self, study, operation):
        """The phantom study with this edit's ground truth drawn (the same patient, the findings changed)."""
        raise NotImplementedError

    def check(self, operation) -> None:
        """Refuse an operation this kind cannot carry out (ValueError with the reason)."""
        if operation.to is not None:
            raise ValueError(f"'{self.name}' changes one concept; 'to' ({operation.to!r}) is for a swap")


def _inserted_side(concept: str, rng: np.random.Generator) -> str:
    # A one-sided finding is drawn on a side chosen by the edit's seed.
    return str(rng.choice(["right", "left"])) if concepts.get(concept).lateral else "both"


def _present_side(concept: str, finding_masks: dict[str, np.ndarray]) -> str:
    # A one-sided finding is found where its own mask (when the dataset has one) says it is.
    mask = finding_masks.get(concept.lower().replace(" ", "_"))
    if not concepts.get(concept).lateral or mask is None:
        return "both"
    cols = np.flatnonzero(mask.any(axis=0))
    if not cols.size:
        return "both"
    left_share = (cols > mask.shape[1] / 2).mean()  # the patient's left is the image's right
    return "both" if 0.2 < left_share < 0.8 else ("left" if left_share >= 0.8 else "right")


class Insert(OperationKind):
    name = "insert"

    def effects(self, operation) -> list[Effect]:
        return [Effect(operation.concept, 1.0, 1, self.name)]

    def side(self, operation, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        return _inserted_side(operation.concept, rng)

    def counterfactual(self, study, operation):
        from cxr_audit.data import phantom

        return phantom.counterfactual(study, add=operation.concept)


class Delete(OperationKind):
    name = "delete"

    def effects(self, operation) -> list[Effect]:
        return [Effect(operation.concept, 0.0, -1, self.name)]

    def side(self, operation, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        return _present_side(operation.concept, finding_masks)

    def counterfactual(self, study, operation):
        from cxr_audit.data import phantom

        return phantom.counterfactual(study, remove=operation.concept)


class Swap(OperationKind):
    name = "swap"

    def effects(self, operation) -> list[Effect]:
        return [Effect(operation.concept, 0.0, -1, "swap out"), Effect(operation.to, 1.0, 1, "swap in")]

    def side(self, operation, finding_masks: dict[str, np.ndarray], rng: np.random.Generator) -> str:
        # the new finding takes the place of the old one: its side, when the old one shows it
        side = _present_side(operation.concept, finding_masks)
        if side == "both" and not concepts.get(operation.concept).lateral:
            return _inserted_side(operation.to, rng)
        return side

    def counterfactual(self, study, operation):
        from cxr_audit.data import phantom

        return phantom.counterfactual(phantom.counterfactual(study, remove=operation.concept), add=operation.to)

    def check(self, operation) -> None:
        if operation.to is None:
            raise ValueError(f"a swap names the concept it replaces ({operation.concept!r}) and the one it puts in "
                             "its place ('to')")
        old, new = concepts.get(operation.concept), concepts.get(operation.to)
        if old.name == new.name:
            raise ValueError(f"a swap replaces a concept by another; {old.name!r} twice")
        if old.group != new.group:
            raise ValueError(f"a swap stays within a group: {old.name!r} is {old.group}, {new.name!r} is {new.group}")


OPERATIONS: dict[str, OperationKind] = {kind.name: kind for kind in (Insert(), Delete(), Swap())}


def operation_kind(name: str) -> OperationKind:
    """The behaviour of the operation named `name` in a document."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}") from None
