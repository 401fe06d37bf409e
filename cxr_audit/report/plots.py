"""Figures shared by the terminal commands and the PDF report (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from cxr_audit.coverage import CoverageReport  # noqa: E402
from cxr_audit.provenance import atomic_write_bytes  # noqa: E402

DPI = 150
# PNG metadata carries matplotlib's version and no timestamp, so the same data gives the same bytes.
_PNG_METADATA = {"Software": None}


def save_figure(figure: plt.Figure, path: str | Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata=_PNG_METADATA)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def cooccurrence_heatmap(report: CoverageReport, path: str | Path) -> None:
    """Pairwise co-occurrence counts of positive findings (log colour scale, counts written in each cell)."""
    names = list(report.cooccurrence)
    counts = np.array([[report.cooccurrence[a][b] for b in names] for a in names], dtype=float)
    size = max(5.0, 0.55 * len(names) + 2.5)
    figure, axes = plt.subplots(figsize=(size, size * 0.85))
    shown = np.where(counts > 0, counts, np.nan)
    vmax = max(np.nanmax(shown), 2) if np.isfinite(shown).any() else 2
    image = axes.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=vmax))
    axes.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(names)), names, fontsize=8)
    threshold = np.sqrt(vmax)
    for i in range(len(names)):
        for j in range(len(names)):
            value = int(counts[i, j])
            colour = "black" if value >= threshold else "white"
            axes.text(j, i, f"{value:,}" if value else "0", ha="center", va="center", fontsize=6, color=colour)
    axes.set_title(f"Co-occurrence of positive findings ({report.dataset.n_images:,} images)", fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="images (log scale)")
    save_figure(figure, path)


def coverage_bars(report: CoverageReport, path: str | Path, max_cells: int = 40) -> None:
    """Count against required minimum for the explicit cells and the worst pairwise cells."""
    explicit = [c for c in report.cells if not c.id.startswith("PAIR:")]
    pairwise = sorted((c for c in report.cells if c.id.startswith("PAIR:")),
                      key=lambda c: c.count / max(c.min_count, 1))
    cells = (explicit + pairwise)[:max_cells]
    if not cells:
        return
    figure, axes = plt.subplots(figsize=(8, 0.28 * len(cells) + 1.2))
    y = np.arange(len(cells))
    counts = [c.count for c in cells]
    colours = ["#9e9e9e" if not c.plausible else ("#d62728" if c.deficit else "#2ca02c") for c in cells]
    axes.barh(y, counts, color=colours)
    axes.scatter([c.min_count for c in cells], y, marker="|", s=120, color="black", zorder=3,
                 label="required minimum")
    axes.set_yticks(y, [c.id for c in cells], fontsize=7)
    axes.invert_yaxis()
    axes.set_xscale("symlog", linthresh=10)
    axes.set_xlabel("images in cell (red: deficit, green: covered, grey: implausible)")
    axes.legend(loc="lower right", fontsize=7)
    axes.set_title("Coverage of required cells", fontsize=10)
    save_figure(figure, path)
