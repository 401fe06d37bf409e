"""The phantom's studies: who the patient is (anatomy), how the film was taken (acquisition), which findings
are present and with what parameters. A study is rebuilt from two seeds, so any row of a phantom dataset can
be rendered again, or with one finding added or removed (`counterfactual`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

# The findings the phantom draws; everything else in the CheXpert vocabulary is known-absent.
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Nodule",
    "Support Devices",
)
ANATOMY_MASKS: tuple[str, ...] = ("lung_right", "lung_left", "heart", "mediastinum")


@dataclass(frozen=True)
class Anatomy:
    """One patient's body, fixed across their studies (a follow-up changes pose and exposure only)."""

    body_width: float       # half-width of the trunk, normalised
    shoulder_y: float
    lung_top: float         # apex height
    lung_half_width: float  # lateral extent of each lung from the midline
    lung_inner: float       # medial edge distance from the midline
    dome_right: float       # diaphragm dome height (y) under the right lung (image left)
    dome_left: float
    dome_depth: float       # how far the costophrenic angles sit below the domes
    heart_width: float      # normal heart's full width as a fraction of thoracic width (CTR)
    heart_height: float
    heart_shift: float      # heart centre offset to the patient's left (image right)
    mediastinum_width: float
    rib_spacing: float
    rib_phase: float
    markings_seed: int


@dataclass(frozen=True)
class Acquisition:
    """What changes between studies of one patient: pose, exposure, noise."""

    rotation_deg: float
    shift_x: float
    exposure: float   # gamma of the display curve
    contrast: float
    noise: float
    blur: float       # in output pixels
    noise_seed: int


@dataclass(frozen=True)
class Appearance:
    """How findings look in a dataset: the scenario's difficulty and the interaction between findings.
    Recorded in every labels.csv row, so a row (and its counterfactuals) renders again exactly."""

    # Silhouette sign: pleural fluid or consolidation lying against the heart border is as dense as the heart,
    # so that stretch of border disappears (and the heart cannot be measured there).
    silhouette: bool = False
    contrast: float = 1.0        # scales every pathology's departure from normal (devices excepted)
    severity_min: float = 0.4    # each finding's severity is drawn uniformly in [severity_min, severity_max]
    severity_max: float = 1.0


@dataclass(frozen=True)
class FindingParams:
    """Parameters of every finding for one study; `present` says which ones are drawn."""

    present: frozenset[str]
    severity: dict[str, float]
    side: dict[str, str]           # 'right' | 'left' | 'both' (patient's side)
    cardiomegaly_ctr: float        # CTR when Cardiomegaly is present (> 0.5), at full contrast
    nodule_xy: tuple[float, float]  # position inside the lung box, 0..1 each
    consolidation_xy: tuple[float, float]
    blob_seed: int
    devices: tuple[str, ...]       # which support devices: 'ett', 'line', 'ecg'
    appearance: Appearance = Appearance()

    def enlarged_ctr(self, normal_ctr: float) -> float:
        """The CTR of this study's enlarged heart: the appearance's contrast moves it from the patient's own
        normal heart (0) to the drawn enlargement (1), so lower contrast gives subtler cardiomegaly."""
        if self.appearance.contrast == 1.0:  # exactly the drawn value (no rounding through the formula)
            return self.cardiomegaly_ctr
        return normal_ctr + self.appearance.contrast * (self.cardiomegaly_ctr - normal_ctr)

    def with_present(self, present: set[str] | frozenset[str]) -> "FindingParams":
        return dataclasses.replace(self, present=frozenset(present))


@dataclass(frozen=True)
class Study:
    patient_id: str
    study: int
    anatomy: Anatomy
    acquisition: Acquisition
    findings: FindingParams


@dataclass
class Rendered:
    image: np.ndarray                     # float32 (size, size) in [0, 1]
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # bool (size, size): anatomy + findings



# ---------------------------------------------------------------------------------------------------------
# Sampling


def _uniform(rng: np.random.Generator, **ranges: tuple[float, float]) -> dict[str, float]:
    """One uniform draw per named (low, high) range, in the order given (the order fixes the phantom)."""
    return {name: rng.uniform(low, high) for name, (low, high) in ranges.items()}


def sample_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    male = sex == "M"
    lung_half = rng.uniform(0.30, 0.36) + (0.01 if male else 0.0)
    dome_right = rng.uniform(0.66, 0.74)
    # Arguments are evaluated left to right: the draws happen in the order written.
    return Anatomy(
        body_width=lung_half + rng.uniform(0.06, 0.10),
        **_uniform(rng, shoulder_y=(0.08, 0.13), lung_top=(0.12, 0.17)),
        lung_half_width=lung_half,
        lung_inner=rng.uniform(0.045, 0.06),
        dome_right=dome_right,
        dome_left=dome_right + rng.uniform(0.01, 0.04),  # the left hemidiaphragm usually sits lower
        **_uniform(rng, dome_depth=(0.05, 0.09), heart_width=(0.38, 0.46), heart_height=(0.20, 0.25),
                   heart_shift=(0.03, 0.06), mediastinum_width=(0.055, 0.075), rib_spacing=(0.055, 0.068),
                   rib_phase=(0.0, 1.0)),
        markings_seed=int(rng.integers(2**31)),
    )


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    return Acquisition(
        rotation_deg=rng.normal(0.0, 1.5),
        shift_x=rng.normal(0.0, 0.01),
        **_uniform(rng, exposure=(0.8, 1.25), contrast=(0.9, 1.1), noise=(0.008, 0.02), blur=(0.4, 0.8)),
        noise_seed=int(rng.integers(2**31)),
    )


def sample_finding_params(rng: np.random.Generator, present: set[str],
                          appearance: Appearance = Appearance()) -> FindingParams:
    """Every finding's parameters, present or not. The draws are the same whatever the appearance (it only
    maps them), so one study seed gives the same patient under every scenario."""
    sides = {name: str(rng.choice(["right", "left"])) for name in PHANTOM_FINDINGS}
    sides["Pleural Effusion"] = str(rng.choice(["right", "left", "both"], p=[0.35, 0.3, 0.35]))
    sides["Edema"] = "both"
    devices = [d for d in ("ett", "line", "ecg") if rng.random() < 0.6] or ["line"]
    return FindingParams(
        present=frozenset(present),
        severity={name: float(rng.uniform(appearance.severity_min, appearance.severity_max))
                  for name in PHANTOM_FINDINGS},
        side=sides,
        cardiomegaly_ctr=float(rng.uniform(0.56, 0.66)),
        nodule_xy=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.2, 0.65))),
        consolidation_xy=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.35, 0.75))),
        blob_seed=int(rng.integers(2**31)),
        devices=tuple(devices),
        appearance=appearance,
    )


def make_study(patient_id: str, study: int, sex: str, patient_seed: int, study_seed: int,
               present: set[str] | frozenset[str], appearance: Appearance = Appearance()) -> Study:
    """A study rebuilt from its two seeds: the patient's anatomy from `patient_seed` (shared by all their
    studies), pose, exposure and every finding's parameters from `study_seed`. The labels CSV stores both
    seeds, so any row can be rendered again, or with a finding added or removed."""
    unknown = set(present) - set(PHANTOM_FINDINGS)
    if unknown:
        raise ValueError(f"the phantom cannot draw {sorted(unknown)}")
    anatomy = sample_anatomy(np.random.default_rng(patient_seed), sex)
    rng = np.random.default_rng(study_seed)
    acquisition = sample_acquisition(rng)
    return Study(patient_id, study, anatomy, acquisition, sample_finding_params(rng, set(present), appearance))


def counterfactual(study: Study, add: str | None = None, remove: str | None = None) -> Study:
    """The same study with one finding added or removed: same patient, pose, exposure and noise."""
    present = set(study.findings.present)
    for name in (add, remove):
        if name is not None and name not in PHANTOM_FINDINGS:
            raise ValueError(f"the phantom cannot draw {name!r}; it draws {', '.join(PHANTOM_FINDINGS)}")
    if add:
        present.add(add)
    if remove:
        present.discard(remove)
    return dataclasses.replace(study, findings=study.findings.with_present(present))
