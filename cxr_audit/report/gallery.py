"""Gallery panels for the report: source, edit region, edited image and signed difference, side by side.

Panels are PNG files inside the run directory (RUN/gallery), so the report can be re-rendered from the run
alone. Edits are picked round-robin over (operation, concept), accepted edits first, in plan order.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image
from pydantic import BaseModel, ConfigDict

from cxr_audit.data.images import load_resized
from cxr_audit.provenance import atomic_write_bytes, sha256_file
from cxr_audit.rundir import GalleryLayout, SynthesisLayout
from cxr_audit.synthesis.documents import EditRecord, read_records, read_summary

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


class GalleryItem(BaseModel):
    """One gallery panel as audit.json records it (the PNG lies in the run; its SHA-256 is checked)."""

    model_config = ConfigDict(extra="forbid")
    edit_id: str
    cell_id: str
    operation: str
    image: str
    image_sha256: str
    qc: dict[str, Any]


class GalleryDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[GalleryItem]


def pick_edits(records: list[EditRecord], n: int) -> list[EditRecord]:
    accepted = [r for r in records if r.qc.passed] or records
    groups: dict[str, list[EditRecord]] = {}
    for record in accepted:
        groups.setdefault("+".join(f"{o.op} {o.concept}" for o in record.operations), []).append(record)
    picked: list[EditRecord] = []
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop(0))
    return picked


def build_gallery(synthesis: SynthesisLayout, gallery: GalleryLayout, manifest, n: int = 8) -> GalleryDocument:
    """Write the panels of up to `n` edits into `gallery` and describe them."""
    size = int(read_summary(synthesis).generator["image_size"])
    rows = manifest.frame.set_index("image_id", drop=False)
    items = []
    for record in pick_edits(read_records(synthesis), n):
        source = load_resized(manifest.resolve_image(rows.loc[record.source_image_id, "path"]), size)
        edited = load_resized(synthesis.image(record.edit_id), size)
        mask = np.asarray(Image.open(synthesis.mask(record.edit_id))) > 127
        strip = Image.new("RGB", (4 * PANEL + 18, PANEL), "white")
        for k, panel in enumerate((_panel(source), _overlay(source, mask), _panel(edited), _difference(edited, source))):
            strip.paste(panel, (k * (PANEL + 6), 0))
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        path = gallery.image(record.edit_id)
        atomic_write_bytes(path, buffer.getvalue())
        qc = record.qc.model_dump()
        items.append(GalleryItem(
            edit_id=record.edit_id, cell_id=record.cell_id,
            operation=", ".join(f"{o.op} {o.concept}" for o in record.operations),
            image=gallery.relative_image(record.edit_id), image_sha256=sha256_file(path),
            qc={k: qc[k] for k in ("passed", "outside_mae", "outside_ssim", "alignment", "ground_truth_mae", "reasons")}))
    return GalleryDocument(items=items)
