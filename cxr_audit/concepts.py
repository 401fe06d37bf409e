"""The clinical concept vocabulary: canonical names, aliases, anatomical regions and default rules.

This module is the single source of truth for concept names. Every reader, spec, model card and report
resolves names through :func:`resolve` so that NIH's "Effusion", torchxrayvision's "Pleural_Thickening" and
CheXpert's "Pleural Effusion" all land on one canonical concept.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from cxr_audit.errors import UserInputError

NO_FINDING = "No Finding"

# Anatomical regions an edit may touch. `anatomy.py` turns these names into masks on each image.
REGIONS = {
    "lung_fields": "both lung fields",
    "cardiac_silhouette": "the heart shadow",
    "mediastinum": "the mediastinum",
    "costophrenic_angles": "costophrenic angles and the lower pleural space",
    "apical_lateral_pleura": "the apical and lateral pleural space",
    "perihilar": "perihilar regions of both lungs",
    "upper_chest": "the mediastinum and above (neck, upper chest)",
    "chest_wall": "ribs, clavicles and chest wall",
    "diaphragm": "the diaphragm and upper abdomen",
    "pleura": "the pleural lining of both lungs",
    "whole_image": "the whole radiograph",
}


@dataclass(frozen=True)
class Concept:
    """One clinical finding.

    `group` lets the planner swap a concept for another of the same group (CARS's swap perturbation);
    `lateral` says whether the finding is usually one-sided, so the edit region should be side-aware; a fine
    concept (the meniscus of an effusion, an endotracheal tube) names its `parent` label, which it implies.
    """

    name: str
    group: str
    regions: tuple[str, ...]
    lateral: bool = False
    aliases: tuple[str, ...] = ()
    description: str = ""
    parent: str | None = None


# CheXpert's 14 observations, then the NIH ChestX-ray14 findings CheXpert does not have.
CONCEPTS: tuple[Concept, ...] = (
    Concept(NO_FINDING, "normal", ("whole_image",), aliases=("Normal", "Healthy"),
            description="no pathology (support devices may be present)"),
    Concept("Enlarged Cardiomediastinum", "cardiac", ("cardiac_silhouette", "mediastinum"),
            aliases=("Enlarged Cardiomed",)),
    Concept("Cardiomegaly", "cardiac", ("cardiac_silhouette",),
            description="cardiothoracic ratio above 0.5"),
    Concept("Lung Opacity", "parenchymal", ("lung_fields",), aliases=("Opacity", "Airspace Opacity")),
    Concept("Lung Lesion", "parenchymal", ("lung_fields",), lateral=True, aliases=("Lesion", "Nodule/Lesion")),
    Concept("Edema", "parenchymal", ("perihilar", "lung_fields"), aliases=("Pulmonary Edema", "Oedema")),
    Concept("Consolidation", "parenchymal", ("lung_fields",), lateral=True),
    Concept("Pneumonia", "parenchymal", ("lung_fields",), lateral=True),
    Concept("Atelectasis", "parenchymal", ("lung_fields",), lateral=True),
    Concept("Pneumothorax", "pleural", ("apical_lateral_pleura",), lateral=True, aliases=("PTX",)),
    Concept("Pleural Effusion", "pleural", ("costophrenic_angles",), lateral=True, aliases=("Effusion",)),
    Concept("Pleural Other", "pleural", ("pleura",), lateral=True),
    Concept("Fracture", "skeletal", ("chest_wall",), lateral=True, aliases=("Rib Fracture",)),
    Concept("Support Devices", "device", ("upper_chest", "mediastinum"),
            aliases=("Support Device", "Tubes and Lines", "Lines and Tubes")),
    # NIH ChestX-ray14 findings outside CheXpert's 14.
    Concept("Infiltration", "parenchymal", ("lung_fields",), lateral=True, aliases=("Infiltrate",)),
    Concept("Mass", "parenchymal", ("lung_fields",), lateral=True),
    Concept("Nodule", "parenchymal", ("lung_fields",), lateral=True),
    Concept("Emphysema", "parenchymal", ("lung_fields",)),
    Concept("Fibrosis", "parenchymal", ("lung_fields",)),
    Concept("Pleural Thickening", "pleural", ("pleura",), lateral=True),
    Concept("Hernia", "other", ("diaphragm",), aliases=("Hiatal Hernia",)),
    # Fine concepts: the signs and kinds a report names, each under the label it implies (CARS's two grains).
    # Labels-only datasets have none; reports labelled by `label-reports` do.
    Concept("Layering Effusion", "pleural", ("costophrenic_angles",), lateral=True, parent="Pleural Effusion",
            aliases=("Meniscus Sign", "Layering Fluid", "Meniscus"), description="fluid layering with a meniscus"),
    Concept("Blunted Costophrenic Angle", "pleural", ("costophrenic_angles",), lateral=True,
            parent="Pleural Effusion", aliases=("Costophrenic Angle Blunting", "Blunted CP Angle")),
    Concept("Loculated Effusion", "pleural", ("pleura",), lateral=True, parent="Pleural Effusion"),
    Concept("Pleural Line", "pleural", ("apical_lateral_pleura",), lateral=True, parent="Pneumothorax",
            aliases=("Visceral Pleural Line",), description="the visceral pleural line of a pneumothorax"),
    Concept("Absent Lung Markings", "pleural", ("apical_lateral_pleura",), lateral=True, parent="Pneumothorax",
            aliases=("Absent Vascular Markings",)),
    Concept("Deep Sulcus Sign", "pleural", ("costophrenic_angles",), lateral=True, parent="Pneumothorax",
            aliases=("Deep Sulcus",)),
    Concept("Enlarged Cardiac Silhouette", "cardiac", ("cardiac_silhouette",), parent="Cardiomegaly",
            aliases=("Enlarged Heart",)),
    Concept("Kerley Lines", "parenchymal", ("lung_fields",), parent="Edema",
            aliases=("Kerley B Lines", "Interstitial Markings", "Septal Lines")),
    Concept("Vascular Congestion", "parenchymal", ("perihilar",), parent="Edema",
            aliases=("Pulmonary Vascular Congestion", "Vascular Engorgement")),
    Concept("Perihilar Haze", "parenchymal", ("perihilar",), parent="Edema", aliases=("Perihilar Haziness",)),
    Concept("Air Bronchograms", "parenchymal", ("lung_fields",), lateral=True, parent="Consolidation",
            aliases=("Air Bronchogram",)),
    Concept("Lobar Consolidation", "parenchymal", ("lung_fields",), lateral=True, parent="Consolidation"),
    Concept("Plate-like Atelectasis", "parenchymal", ("lung_fields",), lateral=True, parent="Atelectasis",
            aliases=("Platelike Atelectasis", "Linear Atelectasis", "Discoid Atelectasis")),
    Concept("Lobar Collapse", "parenchymal", ("lung_fields",), lateral=True, parent="Atelectasis",
            aliases=("Lobar Atelectasis",)),
    Concept("Calcified Granuloma", "parenchymal", ("lung_fields",), lateral=True, parent="Nodule",
            aliases=("Granuloma",)),
    Concept("Endotracheal Tube", "device", ("upper_chest",), parent="Support Devices",
            aliases=("ETT", "ET Tube")),
    Concept("Enteric Tube", "device", ("upper_chest", "mediastinum", "diaphragm"), parent="Support Devices",
            aliases=("Nasogastric Tube", "NG Tube", "OG Tube", "Orogastric Tube", "Feeding Tube")),
    Concept("Central Venous Catheter", "device", ("upper_chest", "mediastinum"), lateral=True,
            parent="Support Devices", aliases=("CVC", "Central Line", "PICC", "PICC Line")),
    Concept("Pacemaker", "device", ("chest_wall", "cardiac_silhouette"), lateral=True, parent="Support Devices",
            aliases=("ICD", "Pacemaker Leads", "AICD", "Pacer")),
    Concept("Chest Tube", "device", ("pleura",), lateral=True, parent="Support Devices",
            aliases=("Pleural Drain", "Thoracostomy Tube")),
    Concept("Sternotomy Wires", "device", ("mediastinum",), parent="Support Devices",
            aliases=("Sternal Wires", "Median Sternotomy")),
)

CONCEPT_NAMES: tuple[str, ...] = tuple(c.name for c in CONCEPTS)
LABELS: tuple[str, ...] = tuple(c.name for c in CONCEPTS if c.parent is None)   # the coarse grain
FINE: tuple[str, ...] = tuple(c.name for c in CONCEPTS if c.parent is not None)   # the fine grain
CHEXPERT_14: tuple[str, ...] = CONCEPT_NAMES[:14]
NIH_14: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Pleural Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia",
)

_BY_NAME = {c.name: c for c in CONCEPTS}


def findings(names: list[str]) -> list[str]:
    """`names` without No Finding: the concepts a generator or checker conditions on (No Finding follows
    from them)."""
    return [n for n in names if n != NO_FINDING]


def _normalise(name: str) -> str:
    """Case, underscores, hyphens, slashes and repeated spaces do not distinguish concept names."""
    return re.sub(r"[\s_\-/]+", " ", name.strip().lower())


_ALIASES: dict[str, str] = {}
for _c in CONCEPTS:
    for _alias in (_c.name, *_c.aliases):
        _ALIASES[_normalise(_alias)] = _c.name


def try_resolve(name: str) -> str | None:
    """The canonical name for `name` (any known alias, any case), or None if it is not a concept."""
    return _ALIASES.get(_normalise(str(name)))


def resolve(name: str, where: str = "") -> str:
    """The canonical name for `name`; an unknown name is a user error with close matches suggested."""
    canonical = try_resolve(name)
    if canonical is not None:
        return canonical
    close = difflib.get_close_matches(_normalise(name), list(_ALIASES), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(_ALIASES[c]) for c in close)}?" if close else ""
    prefix = f"{where}: " if where else ""
    raise UserInputError(
        f"{prefix}unknown concept {name!r}.{hint} Known concepts: {', '.join(CONCEPT_NAMES)} "
        "(aliases such as NIH 'Effusion' and torchxrayvision 'Pleural_Thickening' are accepted)."
    )


def is_pathology(name: str) -> bool:
    """Whether a positive `name` rules out No Finding: every finding but a support device (of any kind)."""
    concept = _BY_NAME.get(name)
    return name != NO_FINDING and (concept is None or concept.group != "device")


def get(name: str) -> Concept:
    """The :class:`Concept` for a name or alias."""
    return _BY_NAME[resolve(name)]


# ---------------------------------------------------------------------------------------------------------
# Clinical rules


@dataclass(frozen=True)
class Rule:
    """`if_` implies or excludes `then`. `source` says where the rule came from, for the audit trail."""

    if_: str
    kind: Literal["implies", "excludes"]
    then: str
    source: str = "default"

    def describe(self) -> str:
        return f"{self.if_} {self.kind} {self.then} ({self.source})"


# CheXpert's label hierarchy: a positive child implies a positive parent. Mass and Nodule sit under
# Lung Lesion, and Infiltration under Lung Opacity, so NIH names fit the same tree.
HIERARCHY: dict[str, tuple[str, ...]] = {
    "Lung Opacity": ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis", "Infiltration"),
    "Lung Lesion": ("Nodule", "Mass"),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
}

# CheXpert's "No Finding" means no pathology; support devices are not a pathology and may co-exist.
_COMPATIBLE_WITH_NO_FINDING = {"Support Devices"}


def default_rules() -> list[Rule]:
    rules = [
        Rule(NO_FINDING, "excludes", name, "default: No Finding excludes every finding")
        for name in CONCEPT_NAMES
        if name != NO_FINDING and name not in _COMPATIBLE_WITH_NO_FINDING
        and _BY_NAME[name].parent not in _COMPATIBLE_WITH_NO_FINDING  # a device's kind is no pathology either
    ]
    for parent, children in HIERARCHY.items():
        rules += [Rule(child, "implies", parent, "default: CheXpert hierarchy") for child in children]
    rules += [Rule(c.name, "implies", c.parent, "default: a fine concept implies its label") for c in CONCEPTS
              if c.parent is not None]
    return rules


@dataclass
class RuleSet:
    """Rules checked against a combination of positive and negative concepts."""

    rules: list[Rule] = field(default_factory=default_rules)

    def extended(self, extra: Iterable[Rule]) -> "RuleSet":
        return RuleSet([*self.rules, *extra])

    def implied_positives(self, positives: Iterable[str]) -> set[str]:
        """Every concept that must be positive given `positives` (transitive closure of the implications)."""
        closed = set(positives)
        changed = True
        while changed:
            changed = False
            for rule in self.rules:
                if rule.kind == "implies" and rule.if_ in closed and rule.then not in closed:
                    closed.add(rule.then)
                    changed = True
        return closed

    def violations(self, positives: Iterable[str], negatives: Iterable[str] = ()) -> list[str]:
        """Human-readable reasons why a combination is clinically implausible; empty when it is fine."""
        positives, negatives = set(positives), set(negatives)
        reasons: list[str] = []
        closed = self.implied_positives(positives)
        for rule in self.rules:
            if rule.kind == "excludes" and rule.if_ in closed and rule.then in closed:
                reasons.append(f"{rule.describe()}: both would be positive")
        for concept in sorted(closed & negatives):
            chain = [r for r in self.rules if r.kind == "implies" and r.then == concept and r.if_ in closed]
            why = chain[0].describe() if chain else f"{concept} is required positive"
            reasons.append(f"{why}: but {concept} is required negative")
        return list(dict.fromkeys(reasons))
