"""The report's figures, drawn from audit.json alone (PNG bytes, embedded in the PDF as data URIs)."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ARM_COLOURS = {"baseline": "#444444", "real_only": "#1f77b4", "cars": "#d62728", "unconstrained": "#9467bd"}
ARM_LABELS = {"baseline": "deployed", "real_only": "real-only FT", "cars": "CARS FT", "unconstrained": "unconstrained FT"}
plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8,
                     "legend.fontsize": 7, "figure.dpi": 150})


def to_data_uri(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _grid(n: int, columns: int = 4, panel: float = 1.75):
    rows = max(1, math.ceil(n / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * panel, rows * panel * 0.95), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return figure, axes.flat


def coverage_figure(cells: list[dict], synthetic_by_cell: dict[str, int]) -> str:
    shown = [c for c in cells if c["deficit"] > 0 or synthetic_by_cell.get(c["id"])] or cells[:20]
    shown = shown[:30]
    figure, ax = plt.subplots(figsize=(7.0, 0.22 * len(shown) + 0.9))
    y = np.arange(len(shown))
    real = np.array([c["count"] for c in shown])
    synthetic = np.array([synthetic_by_cell.get(c["id"], 0) for c in shown])
    ax.barh(y, real, color="#4c72b0", label="real training images")
    ax.barh(y, synthetic, left=real, color="#ff9f1c", label="accepted synthetic (CARS)")
    for k, cell in enumerate(shown):
        ax.plot([cell["min_count"]] * 2, [k - 0.42, k + 0.42], color="black", linewidth=1.2)
    ax.set_yticks(y, [c["id"] for c in shown])
    ax.invert_yaxis()
    ax.set_xlabel("images (black tick: minimum the spec requires)")
    ax.legend(loc="lower right", frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)


def cooccurrence_figure(cooccurrence: dict[str, dict[str, int]]) -> str:
    names = list(cooccurrence)
    matrix = np.array([[cooccurrence[a].get(b, 0) for b in names] for a in names], dtype=float)
    figure, ax = plt.subplots(figsize=(0.42 * len(names) + 1.8, 0.42 * len(names) + 1.2))
    image = ax.imshow(np.log10(matrix + 1), cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=6,
                    color="white" if np.log10(matrix[i, j] + 1) < np.log10(matrix.max() + 1) * 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    figure.colorbar(image, ax=ax, shrink=0.7, label="log10(images + 1)")
    return to_data_uri(figure)


def pr_curves_figure(arms: dict[str, dict], targets: list[str]) -> str:
    figure, axes = _grid(len(targets))
    for ax, target in zip(axes, targets):
        for arm, metrics in arms.items():
            curve = metrics["pr_curves"].get(target)
            if not curve or not curve.get("recall"):
                continue
            ax.plot(curve["recall"], curve["precision"], color=ARM_COLOURS[arm], linewidth=1.1, label=ARM_LABELS[arm])
        ax.set_title(target.replace("cell:", "cell "), fontsize=7.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    axes[0].legend(loc="lower left", frameon=False)
    figure.tight_layout()
    return to_data_uri(figure)


def reliability_figure(arms: dict[str, dict], concepts: list[str]) -> str:
    figure, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle="--")
        for arm, metrics in arms.items():
            diagram = metrics["reliability"].get(concept)
            if not diagram:
                continue
            counts = np.array(diagram["count"])
            keep = counts > 0
            ax.plot(np.array(diagram["confidence"], dtype=float)[keep], np.array(diagram["frequency"], dtype=float)[keep],
                    marker="o", markersize=2.5, linewidth=1, color=ARM_COLOURS[arm], label=ARM_LABELS[arm])
        ax.set_title(concept, fontsize=7.5)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("mean predicted")
        ax.set_ylabel("observed")
    axes[0].legend(loc="upper left", frameon=False)
    figure.tight_layout()
    return to_data_uri(figure)


def uncertainty_figure(metrics: dict, concepts: list[str]) -> str:
    figure, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        histogram = metrics.get("uncertainty_histograms", {}).get(concept)
        if not histogram:
            ax.axis("off")
            continue
        edges = np.array(histogram["bin_edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        ax.bar(centres, histogram["entropy_bits"], width=width, color="#4c72b0", alpha=0.75, label="predictive entropy")
        if "mutual_information_bits" in histogram:
            ax.bar(centres, histogram["mutual_information_bits"], width=width, color="#dd8452", alpha=0.6,
                   label="mutual information")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(concept, fontsize=7.5)
        ax.set_xlabel("bits")
        ax.set_ylabel("images")
    handles, labels = axes[0].get_legend_handles_labels()
    figure.tight_layout(rect=(0, 0, 1, 0.94))
    figure.legend(handles, labels, loc="upper center", ncol=2, frameon=False)  # above the panels, hiding none
    return to_data_uri(figure)


def probe_figure(by_concept: dict[str, dict]) -> str:
    keys = list(by_concept)
    figure, ax = plt.subplots(figsize=(7.0, 0.3 * len(keys) + 0.9))
    for k, key in enumerate(keys):
        entry = by_concept[key]
        before, after = entry["mean_score_before"], entry["mean_score_after"]
        colour = "#2ca02c" if entry["directional_change"]["value"] and entry["directional_change"]["value"] > 0 else "#d62728"
        ax.annotate("", xy=(after, k), xytext=(before, k), arrowprops=dict(arrowstyle="->", color=colour, lw=1.5))
        ax.plot([before], [k], "o", color="#555555", markersize=3)
    ax.set_yticks(range(len(keys)), [f"{k} (n={by_concept[k]['pairs']})" for k in keys])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(keys) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("mean score of the edited concept: source (dot) -> edited (arrow head)")
    ax.spines[["top", "right"]].set_visible(False)
    return to_data_uri(figure)
