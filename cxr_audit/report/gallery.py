"""Gallery panels for the report: source, edit region, edited image and signed difference, side by side.

Panels are PNG files inside the run directory (RUN/gallery), so the report can be re-rendered from the run
alone. Edits are picked round-robin over (operation, concept), accepted edits first, in plan order.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from cxr_audit.data.images import load_resized
from cxr_audit.provenance import atomic_write_bytes, sha256_file

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


def pick_edits(records: list[dict], n: int) -> list[dict]:
    accepted = [r for r in records if r["qc"]["passed"]] or records
    groups: dict[str, list[dict]] = {}
    for record in accepted:
        key = "+".join(f"{o['op']} {o['concept']}" for o in record["operations"])
        groups.setdefault(key, []).append(record)
    picked: list[dict] = []
    while len(picked) < n and any(groups.values()):
        for key in sorted(groups):
            if groups[key] and len(picked) < n:
                picked.append(groups[key].pop(0))
    return picked


def build_gallery(run: Path, manifest, n: int = 8) -> list[dict]:
    folder = run / "synthetic"
    summary = json.loads((folder / "synthesis.json").read_text())
    size = int(summary["generator"]["image_size"])
    records = [json.loads((folder / "records" / f"{e}.json").read_text())
               for e in sorted(p.stem for p in (folder / "records").glob("*.json"))]
    rows = manifest.frame.set_index("image_id", drop=False)
    items = []
    for record in pick_edits(records, n):
        source = load_resized(manifest.resolve_image(rows.loc[record["source_image_id"], "path"]), size)
        edited = load_resized(folder / "images" / f"{record['edit_id']}.png", size)
        mask = np.asarray(Image.open(folder / "masks" / f"{record['edit_id']}.png")) > 127
        strip = Image.new("RGB", (4 * PANEL + 18, PANEL), "white")
        for k, panel in enumerate((_panel(source), _overlay(source, mask), _panel(edited), _difference(edited, source))):
            strip.paste(panel, (k * (PANEL + 6), 0))
        buffer = io.BytesIO()
        strip.save(buffer, format="PNG")
        path = run / "gallery" / f"{record['edit_id']}.png"
        atomic_write_bytes(path, buffer.getvalue())
        items.append({"edit_id": record["edit_id"], "cell_id": record["cell_id"],
                      "operation": ", ".join(f"{o['op']} {o['concept']}" for o in record["operations"]),
                      "image": f"gallery/{record['edit_id']}.png", "image_sha256": sha256_file(path),
                      "qc": {k: record["qc"].get(k) for k in ("passed", "outside_mae", "outside_ssim", "alignment",
                                                             "ground_truth_mae", "reasons")}})
    return items
