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

import math

import numpy as np
from scipy import ndimage

from cxr_audit.data.phantom.body import Body, Grid
from cxr_audit.data.phantom.findings import SILHOUETTE_REACH, finding_layers
from cxr_audit.data.phantom.study import PHANTOM_FINDINGS, Acquisition, Rendered, Study

MU = 1.5  # attenuation scale of the Beer-Lambert display curve


def render(study: Study, size: int = 128) -> Rendered:
    """Draw one study: the image and masks for anatomy and every finding present."""
    f, a, q = study.findings, study.anatomy, study.acquisition
    grid = Grid(size)
    ctr = f.enlarged_ctr(a.heart_width) if "Cardiomegaly" in f.present else a.heart_width
    body = Body(grid, a, ctr)
    density = body.density()
    masks = {
        "lung_right": body.lung_right > 0.5, "lung_left": body.lung_left > 0.5,
        "heart": body.heart > 0.5, "mediastinum": body.mediastinum > 0.5,
    }
    if "Cardiomegaly" in f.present:
        # What the enlargement changed: the enlarged heart (which covers the normal one) and the lung it
        # displaced. Every layer that depends on the heart changes only where either heart is non-zero.
        normal = Body(grid, a, a.heart_width)
        changed = (body.heart > 0) | (normal.heart > 0)
        if f.appearance.silhouette:  # the effaced border band moves with the heart's edge
            reach = math.ceil(max(SILHOUETTE_REACH) * size) + 1
            changed = ndimage.binary_dilation(changed, structure=np.ones((3, 3), bool), iterations=reach)
        masks["Cardiomegaly"] = changed
    for name, change in finding_layers(body, f).items():
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


def _display(density: np.ndarray, q: Acquisition, grid: Grid) -> np.ndarray:
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


def cardiothoracic_ratio(masks: dict[str, np.ndarray]) -> float:
    """CTR from masks: the heart's widest horizontal extent over the widest extent across both lungs."""
    def width(mask: np.ndarray) -> int:
        columns = np.flatnonzero(mask.any(axis=0))
        return int(columns[-1] - columns[0] + 1) if columns.size else 0

    thorax = width(masks["lung_right"] | masks["lung_left"] | masks["heart"])
    return width(masks["heart"]) / max(thorax, 1)
