"""Gallery panels for the report: source, edit region, edited image and signed difference, side by side.

The gallery stage saves the panels inside the run directory (RUN/gallery), so the report can be re-rendered
from the run alone. Edits are picked round-robin over (operation, concept), accepted edits first, in plan order.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxr_audit.synthesis.documents import EditRecord

PANEL = 160  # pixels per panel


def _panel(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).resize(
        (PANEL, PANEL), Image.Resampling.BILINEAR).convert("RGB")


def _overlay(image: np.ndarray, mask: np.ndarray) -> Image.Image:
    rgb = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    tint = np.array([1.0, 0.55, 0.0])
    rgb[mask] = 0.55 * rgb[mask] + 0.45 * tint
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.NEAREST)


def _difference(edited: np.ndarray, source: np.ndarray, scale: float = 0.25) -> Image.Image:
    signed = np.clip((edited - source) / scale, -1, 1) * 0.5 + 0.5  # 0.5 = no change; red brighter, blue darker
    rgb = colormaps["coolwarm"](signed)[..., :3]
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8)).resize((PANEL, PANEL), Image.Resampling.NEAREST)


def pick_edits(records: list[EditRecord], n: int) -> list[EditRecord]:
    accepted = [r for r in records if r.qc.passed] or records
    groups: dict[str, list[EditRecord]] = {}
    for record in accepted:
        groups.setdefault("+".join(o.label for o in record.operations), []).append(record)
    picked: list[EditRecord] = []
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop(0))
    return picked


def gallery_strip(source: np.ndarray, edited: np.ndarray, region: np.ndarray) -> bytes:
    """One edit's panels as a PNG: the source, its edit region, the edited image, the signed difference."""
    strip = Image.new("RGB", (4 * PANEL + 18, PANEL), "white")
    for k, panel in enumerate((_panel(source), _overlay(source, region), _panel(edited), _difference(edited, source))):
        strip.paste(panel, (k * (PANEL + 6), 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()
