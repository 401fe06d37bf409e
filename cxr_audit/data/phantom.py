"""A procedural chest X-ray phantom: anatomy, findings in their regions, exact masks, counterfactuals.

No real radiographs or weights can be downloaded where this tool must run, so the phantom is the tool's
default dataset, its test fixture and its self-check: it knows the ground truth of every pixel.

How an image is made. Everything is drawn as *density* (how much the body attenuates X-rays along a ray)
in normalised coordinates (x right, y down, both 0..1, in the image's orientation: the patient's right is
on the image's left). Anatomy layers are sums of smooth analytic shapes; each finding is its own layer with
its own mask. Display intensity follows Beer-Lambert (1 - exp(-mu * density)), then a per-patient exposure
curve, a slight blur, and quantum-like noise whose random field is fixed per study.

Every finding's parameters are sampled for every study, present or not; presence is a flag. A
counterfactual flips one flag and renders again: same anatomy, same noise field, so the pair differs only
where that finding's layer is (its mask), which is what scores the synthetic edits.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

# The findings the phantom draws; everything else in the CheXpert vocabulary is known-absent.
PHANTOM_FINDINGS: tuple[str, ...] = (
    "Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis", "Nodule",
    "Support Devices",
)
ANATOMY_MASKS: tuple[str, ...] = ("lung_right", "lung_left", "heart", "mediastinum")
MU = 1.5  # attenuation scale of the Beer-Lambert display curve
SUPERSAMPLE = 2  # lines drawn with PIL at this multiple of the size, then box-filtered down


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
class FindingParams:
    """Parameters of every finding for one study; `present` says which ones are drawn."""

    present: frozenset[str]
    severity: dict[str, float]
    side: dict[str, str]           # 'right' | 'left' | 'both' (patient's side)
    cardiomegaly_ctr: float        # CTR when Cardiomegaly is present (> 0.5)
    nodule_xy: tuple[float, float]  # position inside the lung box, 0..1 each
    consolidation_xy: tuple[float, float]
    blob_seed: int
    devices: tuple[str, ...]       # which support devices: 'ett', 'line', 'ecg'

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


def sample_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    male = sex == "M"
    lung_half = rng.uniform(0.30, 0.36) + (0.01 if male else 0.0)
    dome_right = rng.uniform(0.66, 0.74)
    return Anatomy(
        body_width=lung_half + rng.uniform(0.06, 0.10),
        shoulder_y=rng.uniform(0.08, 0.13),
        lung_top=rng.uniform(0.12, 0.17),
        lung_half_width=lung_half,
        lung_inner=rng.uniform(0.045, 0.06),
        dome_right=dome_right,
        dome_left=dome_right + rng.uniform(0.01, 0.04),  # the left hemidiaphragm usually sits lower
        dome_depth=rng.uniform(0.05, 0.09),
        heart_width=rng.uniform(0.38, 0.46),
        heart_height=rng.uniform(0.20, 0.25),
        heart_shift=rng.uniform(0.03, 0.06),
        mediastinum_width=rng.uniform(0.055, 0.075),
        rib_spacing=rng.uniform(0.055, 0.068),
        rib_phase=rng.uniform(0.0, 1.0),
        markings_seed=int(rng.integers(2**31)),
    )


def sample_acquisition(rng: np.random.Generator) -> Acquisition:
    return Acquisition(
        rotation_deg=rng.normal(0.0, 1.5),
        shift_x=rng.normal(0.0, 0.01),
        exposure=rng.uniform(0.8, 1.25),
        contrast=rng.uniform(0.9, 1.1),
        noise=rng.uniform(0.008, 0.02),
        blur=rng.uniform(0.4, 0.8),
        noise_seed=int(rng.integers(2**31)),
    )


def sample_finding_params(rng: np.random.Generator, present: set[str]) -> FindingParams:
    sides = {name: str(rng.choice(["right", "left"])) for name in PHANTOM_FINDINGS}
    sides["Pleural Effusion"] = str(rng.choice(["right", "left", "both"], p=[0.35, 0.3, 0.35]))
    sides["Edema"] = "both"
    devices = [d for d in ("ett", "line", "ecg") if rng.random() < 0.6] or ["line"]
    return FindingParams(
        present=frozenset(present),
        severity={name: float(rng.uniform(0.4, 1.0)) for name in PHANTOM_FINDINGS},
        side=sides,
        cardiomegaly_ctr=float(rng.uniform(0.56, 0.66)),
        nodule_xy=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.2, 0.65))),
        consolidation_xy=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.35, 0.75))),
        blob_seed=int(rng.integers(2**31)),
        devices=tuple(devices),
    )


def make_study(patient_id: str, study: int, sex: str, patient_seed: int, study_seed: int,
               present: set[str] | frozenset[str]) -> Study:
    """A study rebuilt from its two seeds: the patient's anatomy from `patient_seed` (shared by all their
    studies), pose, exposure and every finding's parameters from `study_seed`. The labels CSV stores both
    seeds, so any row can be rendered again, or with a finding added or removed."""
    unknown = set(present) - set(PHANTOM_FINDINGS)
    if unknown:
        raise ValueError(f"the phantom cannot draw {sorted(unknown)}")
    anatomy = sample_anatomy(np.random.default_rng(patient_seed), sex)
    rng = np.random.default_rng(study_seed)
    acquisition = sample_acquisition(rng)
    return Study(patient_id, study, anatomy, acquisition, sample_finding_params(rng, set(present)))


# ---------------------------------------------------------------------------------------------------------
# Shapes


class _Grid:
    """Normalised pixel-centre coordinates for one image size."""

    def __init__(self, size: int):
        self.size = size
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")
        self.px = 1.0 / size  # one pixel in normalised units


def _smoothstep_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, a smooth ramp of width `edge` across the boundary."""
    return np.clip(0.5 - distance / edge, 0.0, 1.0).astype(np.float32)


def _ellipse_distance(grid: _Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), in normalised units."""
    r = np.sqrt(((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2)
    return (r - 1.0) * min(rx, ry)


def _dome_y(grid: _Grid, x_centre: float, half_width: float, top: float, depth: float) -> np.ndarray:
    """A hemidiaphragm: a parabola peaking at `top` over x_centre, `depth` lower at +-half_width."""
    return top + depth * ((grid.x - x_centre) / half_width) ** 2


def _lines_layer(grid: _Grid, polylines: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Anti-aliased polylines (points normalised, width normalised) as a [0, 1] layer."""
    big = grid.size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width in polylines:
        scaled = [(x * big, y * big) for x, y in points]
        draw.line(scaled, fill=255, width=max(1, int(round(width * big))), joint="curve")
    small = canvas.resize((grid.size, grid.size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


# ---------------------------------------------------------------------------------------------------------
# Rendering


class _Body:
    """Anatomy layers and masks of one study at one size, shared by all its finding layers."""

    def __init__(self, grid: _Grid, anatomy: Anatomy, ctr: float):
        a = anatomy
        self.grid, self.anatomy = grid, a
        g, edge = grid, 1.5 * grid.px
        self.mid = 0.5
        self.lung_right_x = self.mid - (a.lung_inner + a.lung_half_width) / 2  # image left
        self.lung_left_x = self.mid + (a.lung_inner + a.lung_half_width) / 2
        lung_rx = (a.lung_half_width - a.lung_inner) / 2 + 0.03
        lung_cy = (a.lung_top + a.dome_left + a.dome_depth) / 2
        lung_ry = (a.dome_left + a.dome_depth - a.lung_top) / 2 + 0.04
        self.dome_r = _dome_y(g, self.lung_right_x, lung_rx, a.dome_right, a.dome_depth)
        self.dome_l = _dome_y(g, self.lung_left_x, lung_rx, a.dome_left, a.dome_depth)
        below_dome = np.where(g.x < self.mid, g.y - self.dome_r, g.y - self.dome_l)
        self.below_dome = below_dome

        # Heart: an ellipse resting on the left dome, its width set by the cardiothoracic ratio.
        thoracic_width = 2 * a.lung_half_width
        self.ctr = ctr
        heart_rx = ctr * thoracic_width / 2
        heart_ry = a.heart_height / 2 * (1 + 0.6 * max(0.0, ctr - 0.5))
        heart_cx = self.mid + a.heart_shift - 0.35 * max(0.0, ctr - a.heart_width) * thoracic_width / 2
        heart_cy = a.dome_left - heart_ry * 0.55
        heart = _smoothstep_inside(_ellipse_distance(g, heart_cx, heart_cy, heart_rx, heart_ry), edge)
        heart *= _smoothstep_inside(below_dome - 0.01, edge)  # the diaphragm flattens its base
        self.heart = heart

        # Mediastinum: narrow at the top, widening toward the heart.
        medi_half = a.mediastinum_width / 2
        widening = np.clip((g.y - a.lung_top) / (a.dome_right - a.lung_top), 0, 1)
        medi = _smoothstep_inside(np.abs(g.x - self.mid) - medi_half * (0.8 + 0.5 * widening), edge)
        medi *= _smoothstep_inside(a.lung_top - 0.04 - g.y, 4 * edge) * _smoothstep_inside(below_dome, edge)
        knob = _smoothstep_inside(_ellipse_distance(g, self.mid + medi_half * 1.1, a.lung_top + 0.12,
                                                    0.035, 0.03), edge)  # aortic knob
        self.mediastinum = np.maximum(medi, knob)

        lungs = []
        for cx in (self.lung_right_x, self.lung_left_x):
            lung = _smoothstep_inside(_ellipse_distance(g, cx, lung_cy, lung_rx, lung_ry), edge)
            lung *= _smoothstep_inside(below_dome, edge)           # above the diaphragm
            lung *= _smoothstep_inside(a.lung_top - g.y, 4 * edge)  # rounded apex
            lungs.append(lung * (1 - self.mediastinum) * (1 - heart))
        self.lung_right, self.lung_left = lungs
        self.lung_box = {  # for placing findings: (x0, y0, x1, y1) of each lung
            "right": (self.lung_right_x - lung_rx, a.lung_top, self.lung_right_x + lung_rx,
                      a.dome_right + a.dome_depth),
            "left": (self.lung_left_x - lung_rx, a.lung_top, self.lung_left_x + lung_rx,
                     a.dome_left + a.dome_depth),
        }
        self.hila = {"right": (self.mid - medi_half - 0.03, a.lung_top + 0.25 * (lung_ry * 2)),
                     "left": (self.mid + medi_half + 0.03, a.lung_top + 0.27 * (lung_ry * 2))}

    def lung(self, side: str) -> np.ndarray:
        if side == "both":
            return np.maximum(self.lung_right, self.lung_left)
        return self.lung_right if side == "right" else self.lung_left

    def density(self) -> np.ndarray:
        g, a = self.grid, self.anatomy
        # Trunk: thicker in the middle, shoulders at the top, neck above.
        trunk = _smoothstep_inside(np.abs(g.x - self.mid) - a.body_width * (1 - 0.25 * (g.y < a.shoulder_y)
                                   * ((a.shoulder_y - g.y) / a.shoulder_y) ** 2), 6 * g.px)
        trunk *= _smoothstep_inside(a.shoulder_y - 0.05 - g.y, 20 * g.px) + \
            _smoothstep_inside(np.abs(g.x - self.mid) - 0.09, 4 * g.px)
        thickness = np.clip(1 - ((g.x - self.mid) / (a.body_width + 0.02)) ** 2, 0, 1) ** 0.5
        density = 0.62 * np.clip(trunk, 0, 1) * (0.55 + 0.45 * thickness)
        lungs = np.maximum(self.lung_right, self.lung_left)
        density -= 0.38 * lungs * (0.85 + 0.15 * thickness)
        # Heart and mediastinum are soft tissue: brighter than lung mostly because no air lies in front.
        density += 0.07 * self.heart + 0.05 * self.mediastinum
        trachea = _smoothstep_inside(np.abs(g.x - self.mid) - 0.012, 2 * g.px)
        trachea *= _smoothstep_inside(g.y - (a.lung_top + 0.13), 4 * g.px)  # air column down to the carina
        density -= 0.12 * trachea
        density += self._spine() + self._ribs(lungs) + self._clavicles()
        density += 0.10 * self._markings(lungs)
        bubble = _smoothstep_inside(_ellipse_distance(g, self.lung_left_x + 0.02, a.dome_left + 0.06,
                                                      0.05, 0.025), 3 * g.px)
        density -= 0.18 * bubble * (self.below_dome > 0.02)  # gastric air under the left dome
        return density

    def _spine(self) -> np.ndarray:
        g, a = self.grid, self.anatomy
        column = _smoothstep_inside(np.abs(g.x - self.mid) - 0.028, 3 * g.px) * (g.y > a.shoulder_y - 0.05)
        vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (g.y / (a.rib_spacing * 0.95)))
        return 0.07 * column * vertebrae

    def _ribs(self, lungs: np.ndarray) -> np.ndarray:
        """Posterior ribs: bands that rise from the spine and fall laterally, visible across the chest."""
        g, a = self.grid, self.anatomy
        layer = np.zeros_like(g.x)
        thickness = a.rib_spacing * 0.38
        x_off = np.abs(g.x - self.mid)
        chest = _smoothstep_inside(x_off - (a.lung_half_width + 0.03), 3 * g.px)
        for k in range(11):
            y0 = a.lung_top - 0.03 + (k + a.rib_phase * 0.5) * a.rib_spacing
            centre = y0 + 0.9 * (x_off - 0.03) ** 2 * 2.2 - 0.02 * np.sin(x_off * 9)
            band = _smoothstep_inside(np.abs(g.y - centre) - thickness / 2, 2 * g.px)
            cortex = np.exp(-((np.abs(g.y - centre) - thickness / 2) / (0.5 * thickness)) ** 2)
            layer += band * 0.7 + 0.3 * cortex * band
        return 0.045 * np.clip(layer, 0, 1.3) * chest * (x_off > 0.03) * (0.5 + 0.5 * lungs)

    def _clavicles(self) -> np.ndarray:
        g, a = self.grid, self.anatomy
        lines = []
        for sign in (-1, 1):
            start = (self.mid + sign * 0.04, a.lung_top + 0.02)
            end = (self.mid + sign * (a.lung_half_width + 0.06), a.lung_top - 0.04)
            middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 - 0.012)
            lines.append(([start, middle, end], 0.022))
        return 0.16 * ndimage.gaussian_filter(_lines_layer(g, lines), 0.4)

    def _markings(self, lungs: np.ndarray) -> np.ndarray:
        """Vessel markings: branching lines from each hilum, fading toward the periphery."""
        g = self.grid
        rng = np.random.default_rng(self.anatomy.markings_seed)
        lines = []
        for side, sign in (("right", -1), ("left", 1)):
            hx, hy = self.hila[side]
            for _ in range(16):
                angle = rng.uniform(-0.45 * np.pi, 0.55 * np.pi)  # fan out laterally, up and down
                length = rng.uniform(0.12, 0.26)
                points, x, y, width = [(hx, hy)], hx, hy, 0.010
                for step in range(4):
                    angle += rng.normal(0, 0.25)
                    x += sign * math.cos(angle) * length / 4
                    y += math.sin(angle) * length / 4 * 0.9
                    points.append((x, y))
                lines.append((points, width))
                if rng.random() < 0.6:  # one branch
                    bx, by = points[2]
                    b_angle = angle + rng.choice([-0.6, 0.6])
                    lines.append(([(bx, by), (bx + sign * math.cos(b_angle) * 0.07,
                                              by + math.sin(b_angle) * 0.06)], 0.006))
        layer = _lines_layer(g, lines)
        distance_from_hilum = np.minimum(
            np.hypot(g.x - self.hila["right"][0], g.y - self.hila["right"][1]),
            np.hypot(g.x - self.hila["left"][0], g.y - self.hila["left"][1]))
        return layer * np.exp(-distance_from_hilum / 0.18) * lungs


def _point_in_lung_box(body: _Body, side: str, relative_xy: tuple[float, float]) -> tuple[float, float]:
    """A finding's centre, given as a fraction of its lung's bounding box."""
    x0, y0, x1, y1 = body.lung_box[side]
    return x0 + relative_xy[0] * (x1 - x0), y0 + relative_xy[1] * (y1 - y0)


def _finding_layers(body: _Body, f: FindingParams) -> dict[str, np.ndarray]:
    """{finding: density change} for each finding present (not Cardiomegaly, which changes the heart
    itself). `render` derives each finding's mask from where its change is non-zero."""
    g, a = body.grid, body.anatomy
    layers: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(f.blob_seed)
    texture = _smooth_noise(rng, g.size, sigma=g.size / 40)

    if "Pleural Effusion" in f.present:
        severity = f.severity["Pleural Effusion"]
        sides = ("right", "left") if f.side["Pleural Effusion"] == "both" else (f.side["Pleural Effusion"],)
        change = np.zeros_like(g.x)
        for side in sides:
            x0, _, x1, bottom = body.lung_box[side]
            lateral = np.clip(np.abs(g.x - (x1 if side == "right" else x0)) / (x1 - x0), 0, 1)
            level = bottom - (0.07 + 0.12 * severity)  # fluid level rises with severity
            meniscus = level - 0.13 * lateral ** 3     # concave: climbs the lateral chest wall
            fluid = _smoothstep_inside(meniscus - g.y, 0.035)
            depth = np.clip((g.y - meniscus) / 0.08, 0, 1)  # denser toward the base
            change += (0.24 + 0.14 * depth) * fluid * body.lung(side)  # fluid replaces air
        layers["Pleural Effusion"] = change

    if "Pneumothorax" in f.present:
        severity, side = f.severity["Pneumothorax"], f.side["Pneumothorax"]
        lung = body.lung(side)
        x0, y0, x1, y1 = body.lung_box[side]
        cx, cy = body.hila[side]
        # The collapsed lung: the lung scaled toward its hilum; the space left is the pneumothorax.
        scale = 1 - (0.12 + 0.22 * severity)
        sx = cx + (g.x - cx) / scale
        sy = cy + (g.y - cy) / scale
        coords = np.stack([sy * g.size - 0.5, sx * g.size - 0.5])
        collapsed = ndimage.map_coordinates(lung, coords, order=1, mode="constant")
        upper = _smoothstep_inside(g.y - ((y0 + y1) / 2 + 0.12), 0.08)  # apical and lateral, fading down
        space = np.clip(lung - collapsed, 0, 1) * upper
        pleural_line = np.clip(collapsed - ndimage.grey_erosion(collapsed, size=(2, 2)), 0, 1)
        markings = body._markings(lung)
        change = -0.10 * space - 0.10 * markings * (space > 0.05) + 0.08 * pleural_line * (space.max() > 0)
        layers["Pneumothorax"] = change

    if "Consolidation" in f.present:
        severity, side = f.severity["Consolidation"], f.side["Consolidation"]
        cx, cy = _point_in_lung_box(body, side, f.consolidation_xy)
        radius = 0.05 + 0.07 * severity
        blob = _smoothstep_inside(_ellipse_distance(g, cx, cy, radius * 1.2, radius) + 0.02 * texture, 0.03)
        change = 0.28 * blob * body.lung(side) * (0.8 + 0.2 * np.clip(texture, -1, 1))
        layers["Consolidation"] = change

    if "Edema" in f.present:
        severity = f.severity["Edema"]
        haze = np.zeros_like(g.x)
        for side in ("right", "left"):
            hx, hy = body.hila[side]
            d = np.hypot((g.x - hx) / 1.1, (g.y - hy - 0.03) / 1.3)
            haze = np.maximum(haze, np.exp(-(d / (0.10 + 0.06 * severity)) ** 2))  # bat-wing
        lungs = body.lung("both")
        change = (0.20 + 0.08 * severity) * haze * lungs * (0.85 + 0.15 * np.clip(texture, -1, 1))
        layers["Edema"] = change

    if "Atelectasis" in f.present:
        severity, side = f.severity["Atelectasis"], f.side["Atelectasis"]
        x0, y0, x1, y1 = body.lung_box[side]
        lines = []
        for k in range(1 + int(severity * 2.5)):  # plate-like (discoid) bands in the lower zone
            y = y0 + (0.58 + 0.1 * k + 0.04 * rng.random()) * (y1 - y0)
            xa = x0 + (0.15 + 0.15 * rng.random()) * (x1 - x0)
            xb = x1 - (0.15 + 0.15 * rng.random()) * (x1 - x0)
            lines.append(([(xa, y + 0.01 * rng.normal()), ((xa + xb) / 2, y + 0.012), (xb, y)], 0.012 + 0.01 * severity))
        bands = ndimage.gaussian_filter(_lines_layer(g, lines), 0.8)
        change = 0.30 * bands * body.lung(side)
        layers["Atelectasis"] = change

    if "Nodule" in f.present:
        severity, side = f.severity["Nodule"], f.side["Nodule"]
        cx, cy = _point_in_lung_box(body, side, f.nodule_xy)
        radius = 0.018 + 0.022 * severity
        disc = _smoothstep_inside(_ellipse_distance(g, cx, cy, radius, radius), 2 * g.px)
        change = 0.30 * disc * np.clip(body.lung(side) + 0.3, 0, 1)
        layers["Nodule"] = change

    if "Support Devices" in f.present:
        lines = []
        if "ett" in f.devices:  # endotracheal tube down the trachea, tip above the carina
            tip = a.lung_top + 0.12
            lines.append(([(body.mid - 0.004, 0.0), (body.mid, tip * 0.5), (body.mid + 0.003, tip)], 0.010))
        if "line" in f.devices:  # right-sided central venous line into the SVC
            sx = body.lung_right_x - 0.05
            lines.append(([(sx - 0.08, a.lung_top - 0.05), (sx, a.lung_top - 0.01),
                           (body.mid - 0.03, a.lung_top + 0.06), (body.mid - 0.025, a.lung_top + 0.17)], 0.007))
        if "ecg" in f.devices:  # ECG leads: small rings with wires
            for px, py in ((body.lung_right_x, a.lung_top + 0.02), (body.lung_left_x + 0.05, a.lung_top + 0.03)):
                ring = [(px + 0.018 * math.cos(t), py + 0.018 * math.sin(t)) for t in np.linspace(0, 2 * np.pi, 16)]
                lines.append((ring, 0.006))
                lines.append(([(px, py + 0.018), (px + 0.02, py + 0.12)], 0.004))
        layer = _lines_layer(g, lines)
        change = 0.6 * layer
        layers["Support Devices"] = change
    return layers


def render(study: Study, size: int = 128) -> Rendered:
    """Draw one study: the image and masks for anatomy and every finding present."""
    f, a, q = study.findings, study.anatomy, study.acquisition
    grid = _Grid(size)
    ctr = f.cardiomegaly_ctr if "Cardiomegaly" in f.present else a.heart_width
    body = _Body(grid, a, ctr)
    density = body.density()
    masks = {
        "lung_right": body.lung_right > 0.5, "lung_left": body.lung_left > 0.5,
        "heart": body.heart > 0.5, "mediastinum": body.mediastinum > 0.5,
    }
    if "Cardiomegaly" in f.present:
        # What the enlargement changed: the enlarged heart (which covers the normal one) and the lung it
        # displaced. Every layer that depends on the heart changes only where either heart is non-zero.
        normal = _Body(grid, a, a.heart_width)
        masks["Cardiomegaly"] = (body.heart > 0) | (normal.heart > 0)
    for name, change in _finding_layers(body, f).items():
        # Compact support: density changes too faint to see are cut, so the mask is exactly where the
        # finding changed the image.
        change = np.where(np.abs(change) > 0.005, change, 0.0)
        density = density + change
        masks[name] = change != 0
    image = _display(density, q, grid)
    # Blur (scipy truncates its kernel at 4 sigma) and pose interpolation spread each change by a few
    # pixels; the masks cover that spread, so a counterfactual pair is identical outside the mask.
    spread = int(4 * q.blur + 0.5) + 2
    for name in list(masks):
        if name in PHANTOM_FINDINGS:
            # A square element: the separable blur kernel reaches diagonally as far as straight.
            masks[name] = ndimage.binary_dilation(masks[name], structure=np.ones((3, 3), bool),
                                                  iterations=spread)
    image, masks = _pose(image, masks, q)
    return Rendered(image=image, masks=masks)


def _display(density: np.ndarray, q: Acquisition, grid: _Grid) -> np.ndarray:
    intensity = 1.0 - np.exp(-MU * np.clip(density, 0, None))
    intensity = intensity / (1.0 - math.exp(-MU * 1.2))
    intensity = np.clip(intensity * q.contrast, 0, 1) ** q.exposure
    intensity = ndimage.gaussian_filter(intensity, q.blur)
    noise_field = np.random.default_rng(q.noise_seed).standard_normal(intensity.shape).astype(np.float32)
    # Quantum-like noise: stronger where fewer photons reach the detector (bright, dense regions). The
    # same field for every counterfactual of a study, scaled by the local signal, so unchanged pixels
    # stay identical.
    intensity = intensity + q.noise * np.sqrt(np.clip(intensity, 0, 1)) * noise_field
    return np.clip(intensity, 0, 1).astype(np.float32)


def _pose(image: np.ndarray, masks: dict[str, np.ndarray], q: Acquisition):
    if abs(q.rotation_deg) < 1e-3 and abs(q.shift_x) < 1e-6:
        return image, masks
    size = image.shape[0]
    angle = math.radians(q.rotation_deg)
    c, s = math.cos(angle), math.sin(angle)
    centre = np.array([size / 2 - 0.5, size / 2 - 0.5])
    matrix = np.array([[c, -s], [s, c]])
    offset = centre - matrix @ centre - matrix @ np.array([0.0, q.shift_x * size])
    # Zero padding (a collimated border): edge replication would smear edge changes beyond the masks.
    image = ndimage.affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    masks = {k: ndimage.affine_transform(m.astype(np.float32), matrix, offset=offset, order=0,
                                         mode="constant") > 0.5 for k, m in masks.items()}
    return image.astype(np.float32), masks


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


def cardiothoracic_ratio(masks: dict[str, np.ndarray]) -> float:
    """CTR from masks: the heart's widest horizontal extent over the widest extent across both lungs."""
    def width(mask: np.ndarray) -> int:
        columns = np.flatnonzero(mask.any(axis=0))
        return int(columns[-1] - columns[0] + 1) if columns.size else 0

    thorax = width(masks["lung_right"] | masks["lung_left"] | masks["heart"])
    return width(masks["heart"]) / max(thorax, 1)
