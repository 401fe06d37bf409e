"""Anatomy layers of one study at one size: shape primitives and the body (trunk, lungs, heart,
mediastinum, spine, ribs, clavicles, vessel markings), as density in normalised coordinates."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from cxr_audit.data.phantom.study import Anatomy

SUPERSAMPLE = 2  # lines drawn with PIL at this multiple of the size, then box-filtered down
AIR = 0.38           # density the air in the lungs removes from the trunk's
HEART_EXTRA = 0.07   # the heart's density above the trunk's


# ---------------------------------------------------------------------------------------------------------
# Shapes


class Grid:
    """Normalised pixel-centre coordinates for one image size."""

    def __init__(self, size: int):
        self.size = size
        centres = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")
        self.px = 1.0 / size  # one pixel in normalised units


def smoothstep_inside(distance: np.ndarray, edge: float) -> np.ndarray:
    """1 inside (distance < 0), 0 outside, a smooth ramp of width `edge` across the boundary."""
    return np.clip(0.5 - distance / edge, 0.0, 1.0).astype(np.float32)


def ellipse_distance(grid: Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Approximate signed distance to an ellipse (negative inside), in normalised units."""
    r = np.sqrt(((grid.x - cx) / rx) ** 2 + ((grid.y - cy) / ry) ** 2)
    return (r - 1.0) * min(rx, ry)


def dome_y(grid: Grid, x_centre: float, half_width: float, top: float, depth: float) -> np.ndarray:
    """A hemidiaphragm: a parabola peaking at `top` over x_centre, `depth` lower at +-half_width."""
    return top + depth * ((grid.x - x_centre) / half_width) ** 2


def lines_layer(grid: Grid, polylines: list[tuple[list[tuple[float, float]], float]]) -> np.ndarray:
    """Anti-aliased polylines (points normalised, width normalised) as a [0, 1] layer."""
    big = grid.size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for points, width in polylines:
        scaled = [(x * big, y * big) for x, y in points]
        draw.line(scaled, fill=255, width=max(1, int(round(width * big))), joint="curve")
    small = canvas.resize((grid.size, grid.size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma)
    return field / (field.std() + 1e-8)


# ---------------------------------------------------------------------------------------------------------
# Rendering


class Body:
    """Anatomy layers and masks of one study at one size, shared by all its finding layers."""

    def __init__(self, grid: Grid, anatomy: Anatomy, ctr: float):
        a = anatomy
        self.grid, self.anatomy = grid, a
        g, edge = grid, 1.5 * grid.px
        self.mid = 0.5
        self.lung_right_x = self.mid - (a.lung_inner + a.lung_half_width) / 2  # image left
        self.lung_left_x = self.mid + (a.lung_inner + a.lung_half_width) / 2
        lung_rx = (a.lung_half_width - a.lung_inner) / 2 + 0.03
        lung_cy = (a.lung_top + a.dome_left + a.dome_depth) / 2
        lung_ry = (a.dome_left + a.dome_depth - a.lung_top) / 2 + 0.04
        self.dome_r = dome_y(g, self.lung_right_x, lung_rx, a.dome_right, a.dome_depth)
        self.dome_l = dome_y(g, self.lung_left_x, lung_rx, a.dome_left, a.dome_depth)
        below_dome = np.where(g.x < self.mid, g.y - self.dome_r, g.y - self.dome_l)
        self.below_dome = below_dome

        # Heart: an ellipse resting on the left dome, its width set by the cardiothoracic ratio.
        thoracic_width = 2 * a.lung_half_width
        self.ctr = ctr
        heart_rx = ctr * thoracic_width / 2
        heart_ry = a.heart_height / 2 * (1 + 0.6 * max(0.0, ctr - 0.5))
        heart_cx = self.mid + a.heart_shift - 0.35 * max(0.0, ctr - a.heart_width) * thoracic_width / 2
        heart_cy = a.dome_left - heart_ry * 0.55
        self.heart_top = heart_cy - heart_ry
        heart = smoothstep_inside(ellipse_distance(g, heart_cx, heart_cy, heart_rx, heart_ry), edge)
        heart *= smoothstep_inside(below_dome - 0.01, edge)  # the diaphragm flattens its base
        self.heart = heart

        # Mediastinum: narrow at the top, widening toward the heart.
        medi_half = a.mediastinum_width / 2
        widening = np.clip((g.y - a.lung_top) / (a.dome_right - a.lung_top), 0, 1)
        medi = smoothstep_inside(np.abs(g.x - self.mid) - medi_half * (0.8 + 0.5 * widening), edge)
        medi *= smoothstep_inside(a.lung_top - 0.04 - g.y, 4 * edge) * smoothstep_inside(below_dome, edge)
        knob = smoothstep_inside(ellipse_distance(g, self.mid + medi_half * 1.1, a.lung_top + 0.12,
                                                    0.035, 0.03), edge)  # aortic knob
        self.mediastinum = np.maximum(medi, knob)

        lungs = []
        for cx in (self.lung_right_x, self.lung_left_x):
            lung = smoothstep_inside(ellipse_distance(g, cx, lung_cy, lung_rx, lung_ry), edge)
            lung *= smoothstep_inside(below_dome, edge)           # above the diaphragm
            lung *= smoothstep_inside(a.lung_top - g.y, 4 * edge)  # rounded apex
            lungs.append(lung * (1 - self.mediastinum) * (1 - heart))
        self.lung_right, self.lung_left = lungs
        self.lung_box = {  # for placing findings: (x0, y0, x1, y1) of each lung
            "right": (self.lung_right_x - lung_rx, a.lung_top, self.lung_right_x + lung_rx,
                      a.dome_right + a.dome_depth),
            "left": (self.lung_left_x - lung_rx, a.lung_top, self.lung_left_x + lung_rx,
                     a.dome_left + a.dome_depth),
        }
        self.thickness = np.clip(1 - ((g.x - self.mid) / (a.body_width + 0.02)) ** 2, 0, 1) ** 0.5
        self.hila = {"right": (self.mid - medi_half - 0.03, a.lung_top + 0.25 * (lung_ry * 2)),
                     "left": (self.mid + medi_half + 0.03, a.lung_top + 0.27 * (lung_ry * 2))}

    def lung(self, side: str) -> np.ndarray:
        if side == "both":
            return np.maximum(self.lung_right, self.lung_left)
        return self.lung_right if side == "right" else self.lung_left

    def heart_border_band(self, reach: float, below: float | None = None) -> np.ndarray:
        """1 just outside the heart's border, fading to 0 at `reach` (normalised units) from it; with
        `below`, only below that height (fluid tracking up the heart border from the diaphragm)."""
        outside = self.heart < 0.5
        distance = ndimage.distance_transform_edt(outside) * self.grid.px
        band = np.clip(1 - distance / reach, 0, 1) * outside
        if below is not None:
            band = band * smoothstep_inside(below - self.grid.y, 3 * self.grid.px)
        return band.astype(np.float32)

    def tissue_fill(self, side: str) -> np.ndarray:
        """The density change that makes lung as dense as the heart: its air replaced by fluid or tissue."""
        return AIR * self.lung(side) * (0.85 + 0.15 * self.thickness) + HEART_EXTRA * (self.lung(side) > 0)

    def density(self) -> np.ndarray:
        g, a = self.grid, self.anatomy
        # Trunk: thicker in the middle, shoulders at the top, neck above.
        trunk = smoothstep_inside(np.abs(g.x - self.mid) - a.body_width * (1 - 0.25 * (g.y < a.shoulder_y)
                                   * ((a.shoulder_y - g.y) / a.shoulder_y) ** 2), 6 * g.px)
        trunk *= smoothstep_inside(a.shoulder_y - 0.05 - g.y, 20 * g.px) + \
            smoothstep_inside(np.abs(g.x - self.mid) - 0.09, 4 * g.px)
        thickness = self.thickness
        density = 0.62 * np.clip(trunk, 0, 1) * (0.55 + 0.45 * thickness)
        lungs = np.maximum(self.lung_right, self.lung_left)
        density -= AIR * lungs * (0.85 + 0.15 * thickness)
        # Heart and mediastinum are soft tissue: brighter than lung mostly because no air lies in front.
        density += HEART_EXTRA * self.heart + 0.05 * self.mediastinum
        trachea = smoothstep_inside(np.abs(g.x - self.mid) - 0.012, 2 * g.px)
        trachea *= smoothstep_inside(g.y - (a.lung_top + 0.13), 4 * g.px)  # air column down to the carina
        density -= 0.12 * trachea
        density += self._spine() + self._ribs(lungs) + self._clavicles()
        density += 0.10 * self.markings(lungs)
        bubble = smoothstep_inside(ellipse_distance(g, self.lung_left_x + 0.02, a.dome_left + 0.06,
                                                      0.05, 0.025), 3 * g.px)
        density -= 0.18 * bubble * (self.below_dome > 0.02)  # gastric air under the left dome
        return density

    def _spine(self) -> np.ndarray:
        g, a = self.grid, self.anatomy
        column = smoothstep_inside(np.abs(g.x - self.mid) - 0.028, 3 * g.px) * (g.y > a.shoulder_y - 0.05)
        vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * (g.y / (a.rib_spacing * 0.95)))
        return 0.07 * column * vertebrae

    def _ribs(self, lungs: np.ndarray) -> np.ndarray:
        """Posterior ribs: bands that rise from the spine and fall laterally, visible across the chest."""
        g, a = self.grid, self.anatomy
        layer = np.zeros_like(g.x)
        thickness = a.rib_spacing * 0.38
        x_off = np.abs(g.x - self.mid)
        chest = smoothstep_inside(x_off - (a.lung_half_width + 0.03), 3 * g.px)
        for k in range(11):
            y0 = a.lung_top - 0.03 + (k + a.rib_phase * 0.5) * a.rib_spacing
            centre = y0 + 0.9 * (x_off - 0.03) ** 2 * 2.2 - 0.02 * np.sin(x_off * 9)
            band = smoothstep_inside(np.abs(g.y - centre) - thickness / 2, 2 * g.px)
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
        return 0.16 * ndimage.gaussian_filter(lines_layer(g, lines), 0.4)

    def markings(self, lungs: np.ndarray) -> np.ndarray:
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
        layer = lines_layer(g, lines)
        distance_from_hilum = np.minimum(
            np.hypot(g.x - self.hila["right"][0], g.y - self.hila["right"][1]),
            np.hypot(g.x - self.hila["left"][0], g.y - self.hila["left"][1]))
        return layer * np.exp(-distance_from_hilum / 0.18) * lungs


