"""Finding layers: each finding present is its own density change, drawn into its anatomical region."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from cxr_audit.data.phantom.body import Body, ellipse_distance, lines_layer, smooth_noise, smoothstep_inside
from cxr_audit.data.phantom.study import FindingParams


def _point_in_lung_box(body: Body, side: str, relative_xy: tuple[float, float]) -> tuple[float, float]:
    """A finding's centre, given as a fraction of its lung's bounding box."""
    x0, y0, x1, y1 = body.lung_box[side]
    return x0 + relative_xy[0] * (x1 - x0), y0 + relative_xy[1] * (y1 - y0)


# How far beside the heart border an effusion (by its severity) or a consolidation effaces it, normalised units.
SILHOUETTE_REACH = (0.04, 0.10)


def _severity_and_side(f: FindingParams, name: str) -> tuple[float, str]:
    """How severe a one-sided finding is, and on which side."""
    return f.severity[name], f.side[name]


def _efface_heart_border(body: Body, change: np.ndarray, band: np.ndarray, side: str) -> np.ndarray:
    """The silhouette sign: the opacity lying against the heart border (`band`, in [0, 1]) is as dense as the
    heart, so the border there disappears and the heart's edge cannot be told from the opacity."""
    return np.maximum(change, band * body.tissue_fill(side))


def finding_layers(body: Body, f: FindingParams) -> dict[str, np.ndarray]:
    """{finding: density change} for each finding present (not Cardiomegaly, which changes the heart
    itself). `render` derives each finding's mask from where its change is non-zero. The appearance's
    contrast scales each pathology; the silhouette sign, where on, overrides it next to the heart."""
    rng = np.random.default_rng(f.blob_seed)
    texture = smooth_noise(rng, body.grid.size, sigma=body.grid.size / 40)
    # in this order: the findings that draw from `rng` draw in it
    return {name: draw(body, f, texture, rng) for name, draw in FINDING_DRAWERS.items() if name in f.present}


def _effusion(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fluid in the costophrenic recess with a concave meniscus up the lateral wall (one side or both)."""
    g, a, look = body.grid, body.anatomy, f.appearance
    severity = f.severity["Pleural Effusion"]
    sides = ("right", "left") if f.side["Pleural Effusion"] == "both" else (f.side["Pleural Effusion"],)
    change = np.zeros_like(g.x)
    for side in sides:
        x0, _, x1, bottom = body.lung_box[side]
        lateral = np.clip(np.abs(g.x - (x1 if side == "right" else x0)) / (x1 - x0), 0, 1)
        level = bottom - (0.07 + 0.12 * severity)  # fluid level rises with severity
        meniscus = level - 0.13 * lateral ** 3     # concave: climbs the lateral chest wall
        fluid = smoothstep_inside(meniscus - g.y, 0.035)
        depth = np.clip((g.y - meniscus) / 0.08, 0, 1)  # denser toward the base
        layer = look.contrast * (0.24 + 0.14 * depth) * fluid * body.lung(side)  # fluid replaces air
        if look.silhouette:  # fluid tracks up the heart border from the diaphragm: more fluid, higher, wider
            reach = SILHOUETTE_REACH[0] + (SILHOUETTE_REACH[1] - SILHOUETTE_REACH[0]) * severity
            height = body.heart_top + (0.6 - 0.5 * severity) * (a.dome_left - body.heart_top)
            layer = _efface_heart_border(body, layer, body.heart_border_band(reach, below=height), side)
        change += layer
    return change


def _pneumothorax(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lung collapsed toward its hilum: a lucent space without markings and a visible pleural line."""
    g, look = body.grid, f.appearance
    severity, side = _severity_and_side(f, "Pneumothorax")
    lung = body.lung(side)
    x0, y0, x1, y1 = body.lung_box[side]
    cx, cy = body.hila[side]
    # The collapsed lung: the lung scaled toward its hilum; the space left is the pneumothorax.
    scale = 1 - (0.12 + 0.22 * severity)
    sx = cx + (g.x - cx) / scale
    sy = cy + (g.y - cy) / scale
    coords = np.stack([sy * g.size - 0.5, sx * g.size - 0.5])
    collapsed = ndimage.map_coordinates(lung, coords, order=1, mode="constant")
    upper = smoothstep_inside(g.y - ((y0 + y1) / 2 + 0.12), 0.08)  # apical and lateral, fading down
    space = np.clip(lung - collapsed, 0, 1) * upper
    pleural_line = np.clip(collapsed - ndimage.grey_erosion(collapsed, size=(2, 2)), 0, 1)
    markings = body.markings(lung)
    change = -0.10 * space - 0.10 * markings * (space > 0.05) + 0.08 * pleural_line * (space.max() > 0)
    return look.contrast * change


def _consolidation(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A textured airspace blob in one lung; next to the heart it effaces the border."""
    g, look = body.grid, f.appearance
    severity, side = _severity_and_side(f, "Consolidation")
    cx, cy = _point_in_lung_box(body, side, f.consolidation_xy)
    radius = 0.05 + 0.07 * severity
    blob = smoothstep_inside(ellipse_distance(g, cx, cy, radius * 1.2, radius) + 0.02 * texture, 0.03)
    change = look.contrast * 0.28 * blob * body.lung(side) * (0.8 + 0.2 * np.clip(texture, -1, 1))
    if look.silhouette:
        change = _efface_heart_border(body, change, body.heart_border_band(SILHOUETTE_REACH[0] + 0.03) * blob, side)
    return change


def _edema(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A perihilar bat-wing haze in both lungs."""
    g, look = body.grid, f.appearance
    severity = f.severity["Edema"]
    haze = np.zeros_like(g.x)
    for side in ("right", "left"):
        hx, hy = body.hila[side]
        d = np.hypot((g.x - hx) / 1.1, (g.y - hy - 0.03) / 1.3)
        haze = np.maximum(haze, np.exp(-(d / (0.10 + 0.06 * severity)) ** 2))  # bat-wing
    lungs = body.lung("both")
    change = (0.20 + 0.08 * severity) * haze * lungs * (0.85 + 0.15 * np.clip(texture, -1, 1))
    return look.contrast * change


def _atelectasis(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plate-like (discoid) bands in the lower zone of one lung, more with severity."""
    g, look = body.grid, f.appearance
    severity, side = _severity_and_side(f, "Atelectasis")
    x0, y0, x1, y1 = body.lung_box[side]
    lines = []
    for k in range(1 + int(severity * 2.5)):
        y = y0 + (0.58 + 0.1 * k + 0.04 * rng.random()) * (y1 - y0)
        xa = x0 + (0.15 + 0.15 * rng.random()) * (x1 - x0)
        xb = x1 - (0.15 + 0.15 * rng.random()) * (x1 - x0)
        lines.append(([(xa, y + 0.01 * rng.normal()), ((xa + xb) / 2, y + 0.012), (xb, y)], 0.012 + 0.01 * severity))
    bands = ndimage.gaussian_filter(lines_layer(g, lines), 0.8)
    change = 0.30 * bands * body.lung(side)
    return look.contrast * change


def _nodule(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A round, sharp-edged density in one lung."""
    severity, side = _severity_and_side(f, "Nodule")
    g, look, (cx, cy) = body.grid, f.appearance, _point_in_lung_box(body, side, f.nodule_xy)
    radius = 0.018 + 0.022 * severity
    disc = smoothstep_inside(ellipse_distance(g, cx, cy, radius, radius), 2 * g.px)
    change = 0.30 * disc * np.clip(body.lung(side) + 0.3, 0, 1)
    return look.contrast * change


def _devices(body: Body, f: FindingParams, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Radio-opaque lines: endotracheal tube, central venous line, ECG leads (not scaled by contrast)."""
    g, a = body.grid, body.anatomy
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
    return 0.6 * lines_layer(g, lines)


FINDING_DRAWERS = {"Pleural Effusion": _effusion, "Pneumothorax": _pneumothorax, "Consolidation": _consolidation,
                   "Edema": _edema, "Atelectasis": _atelectasis, "Nodule": _nodule, "Support Devices": _devices}
