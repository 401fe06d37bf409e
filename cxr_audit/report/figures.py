"""Every chart the tool draws, in one place: the coverage stage saves some as PNG files, the report embeds
them all in the PDF. Each function returns a matplotlib figure; `save_png` and `data_uri` (cxr_audit/plots.py)
turn it into bytes."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm

from cxr_audit.plots import data_uri, save_png  # noqa: F401 - how callers save and embed these figures

ARM_COLOURS = {"baseline": "#444444", "recalibrated": "#2ca02c", "real_only": "#1f77b4", "cars": "#d62728", "unconstrained": "#9467bd",
               "null_edits": "#8c8c3c"}
ARM_LABELS = {"baseline": "deployed", "recalibrated": "recalibrated", "real_only": "real-only FT", "cars": "CARS FT", "unconstrained": "unconstrained FT",
              "null_edits": "null-edit FT"}


def _grid(n: int, columns: int = 4, panel: float = 1.75):
    rows = max(1, math.ceil(n / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * panel, rows * panel * 0.95), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return figure, axes.flat


# ---------------------------------------------------------------------------------------------------------
# Coverage


def coverage_figure(cells: list, synthetic_by_cell: dict[str, int] | None = None, max_cells: int = 40,
                    split: str = "train"):
    """Real images per cell of the split counted (red: deficit, green: covered, grey: implausible) against the
    spec's minimum (black tick); accepted synthetic images stacked in orange; a cell with no image at all is
    marked at 0 in its colour. A cell's subgroup is part of its label. Explicit cells first, then the pairwise
    cells furthest below their minimum."""
    synthetic_by_cell = synthetic_by_cell or {}
    explicit = [c for c in cells if not c.id.startswith("PAIR:")]
    pairwise = sorted((c for c in cells if c.id.startswith("PAIR:")), key=lambda c: c.count / max(c.min_count, 1))
    shown = (explicit + pairwise)[:max_cells]
    figure, ax = plt.subplots(figsize=(7.0, 0.24 * max(len(shown), 1) + 1.0))
    y = np.arange(len(shown))
    real = np.array([c.count for c in shown])
    synthetic = np.array([synthetic_by_cell.get(c.id, 0) for c in shown])
    colours = ["#9e9e9e" if not c.plausible else ("#d62728" if c.deficit else "#2ca02c") for c in shown]
    counted = "real training images" if split == "train" else "real images (all splits)"
    ax.barh(y, real, color=colours, label=counted)
    empty = real == 0  # no bar to see: a marker in the cell's colour says 'none' (deficit or implausible)
    if empty.any():
        ax.scatter(np.zeros(int(empty.sum())), y[empty], marker="o", s=18, zorder=3,
                   color=[colour for colour, none in zip(colours, empty) if none])
    if synthetic.any():
        ax.barh(y, synthetic, left=real, color="#ff9f1c", label="accepted synthetic (CARS)")
    ax.scatter([c.min_count for c in shown], y, marker="|", s=140, color="black", zorder=3, label="required minimum")
    ax.set_yticks(y, [_cell_label(c) for c in shown], fontsize=7)
    ax.invert_yaxis()
    if real.size and real.max() > 1000:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("images (red: deficit, green: covered, grey: implausible; a dot: none)")
    ax.legend(loc="lower right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return figure


def _cell_label(cell) -> str:
    """A cell's id, with its subgroup when it has one (pairwise cells of a subgroup share their ids' look)."""
    subgroup = getattr(cell, "subgroup", None)
    if subgroup is None:
        return cell.id
    parts = [f"{key}={value[0]:g}-{value[1]:g}" if key == "age" else f"{key}={value}"
             for key, value in subgroup.model_dump(exclude_none=True).items()]
    return f"{cell.id} ({', '.join(parts)})" if parts else cell.id


def cooccurrence_figure(cooccurrence: dict[str, dict[str, int]], n_images: int):
    """Pairwise co-occurrence counts of positive findings (log colour scale, counts written in each cell)."""
    names = list(cooccurrence)
    counts = np.array([[cooccurrence[a].get(b, 0) for b in names] for a in names], dtype=float)
    size = max(4.5, 0.5 * len(names) + 2.2)
    figure, ax = plt.subplots(figsize=(size, size * 0.85))
    shown = np.where(counts > 0, counts, np.nan)
    vmax = max(np.nanmax(shown), 2) if np.isfinite(shown).any() else 2
    image = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=vmax))
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            value = int(counts[i, j])
            ax.text(j, i, f"{value:,}", ha="center", va="center", fontsize=5.5,
                    color="black" if value >= np.sqrt(vmax) else "white")
    ax.set_title(f"Co-occurrence of positive findings ({n_images:,} images)", fontsize=9)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images (log scale)")
    return figure


# ---------------------------------------------------------------------------------------------------------
# Performance


def _unit_axes(ax, title: str, xlabel: str, ylabel: str, top: float = 1.0) -> None:
    """A panel whose axes are both probabilities."""
    ax.set_title(title, fontsize=7.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, top)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def pr_curves_figure(arms: dict, targets: list[str]):
    """Precision-recall per target (a concept, or 'cell:<id>'), one line per arm."""
    figure, axes = _grid(len(targets))
    for ax, target in zip(axes, targets):
        for arm, metrics in arms.items():
            curve = metrics.pr_curves.get(target)
            if curve is not None and curve.recall:
                ax.plot(curve.recall, curve.precision, color=ARM_COLOURS[arm], linewidth=1.1, label=ARM_LABELS[arm])
        _unit_axes(ax, target.replace("cell:", "cell "), "recall", "precision", top=1.02)
    axes[0].legend(loc="lower left", frameon=False)
    figure.tight_layout()
    return figure


def reliability_figure(arms: dict, concepts: list[str]):
    """Per concept and arm: relplot's smooth reliability curve with its 95% patient-bootstrap band, over the
    equal-width binned points (dots); the diagonal is perfect calibration."""
    figure, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
        for arm, metrics in arms.items():
            diagram = metrics.reliability.get(concept)
            if diagram is None:
                continue
            colour = ARM_COLOURS.get(arm, "#444444")
            smooth = diagram.smooth
            if smooth is not None:
                ax.fill_between(smooth.mesh, smooth.lower, smooth.upper, color=colour, alpha=0.15, linewidth=0)
                ax.plot(smooth.mesh, smooth.mean, color=colour, linewidth=1.1, label=ARM_LABELS[arm])
            keep = np.array(diagram.count) > 0
            confidence = np.array(diagram.confidence, dtype=float)[keep]
            frequency = np.array(diagram.frequency, dtype=float)[keep]
            ax.plot(confidence, frequency, marker="o", markersize=2.2, linewidth=0, color=colour,
                    label=None if smooth is not None else ARM_LABELS[arm])
        _unit_axes(ax, concept, "predicted", "observed")
    axes[0].legend(loc="upper left", frameon=False)
    figure.tight_layout()
    return figure


def uncertainty_figure(metrics, concepts: list[str]):
    figure, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        histogram = metrics.uncertainty_histograms.get(concept)
        if histogram is None:
            ax.axis("off")
            continue
        edges = np.array(histogram.bin_edges)
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centres, histogram.entropy_bits, width=width, color="#4c72b0", alpha=0.75, label="predictive entropy")
        if histogram.mutual_information_bits is not None:
            ax.bar(centres, histogram.mutual_information_bits, width=width, color="#dd8452", alpha=0.6,
                   label="mutual information")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(concept, fontsize=7.5)
        ax.set_xlabel("bits")
        ax.set_ylabel("images")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.legend(handles, labels, loc="upper center", ncol=2, frameon=False)  # above the panels, hiding none
    return figure


def probe_figure(by_concept: dict):
    keys = list(by_concept)
    figure, ax = plt.subplots(figsize=(7.0, 0.3 * len(keys) + 0.9))
    for k, key in enumerate(keys):
        entry = by_concept[key]
        before, after = entry.mean_score_before, entry.mean_score_after
        change = entry.directional_change.value
        colour = "#2ca02c" if change is not None and change > 0 else "#d62728"
        ax.annotate("", xy=(after, k), xytext=(before, k), arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
        ax.plot([before], [k], "o", color="#555555", markersize=3)
    ax.set_yticks(range(len(keys)), [f"{k} (n={by_concept[k].pairs})" for k in keys])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(keys) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("mean score of the edited concept: source (dot) -> edited (arrow head)")
    ax.spines[["top", "right"]].set_visible(False)
    return figure


def subgroup_figure(metrics, concepts: list[str], metric: str = "auroc"):
    """A forest plot per concept: the metric in each subgroup (sex, age band, view, device) with its interval,
    the concept's overall value as a dashed line."""
    figure, axes = _grid(len(concepts), columns=4, panel=1.9)
    for ax, concept in zip(axes, concepts):
        rows = [(f"{variable.replace('_band', '')} {level}", getattr(entry[concept], metric))
                for variable, levels in metrics.subgroups.items() for level, entry in levels.items()
                if concept in entry and getattr(entry[concept], metric) is not None]
        if not rows:
            ax.axis("off")
            continue
        for k, (label, interval) in enumerate(rows):
            if interval.ci and None not in interval.ci:
                ax.plot(interval.ci, [k, k], color="#4c72b0", linewidth=1.2)
            ax.plot([interval.value], [k], "o", color="#222222", markersize=2.5)
        overall = metrics.concepts[concept].metric(metric).value
        if overall is not None:
            ax.axvline(overall, color="#999999", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=5.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_xlim(max(0.0, min(r.value for _, r in rows) - 0.15), 1.0)
        ax.set_title(concept, fontsize=7.5)
        ax.set_xlabel(metric.upper())
    figure.tight_layout()
    return figure
