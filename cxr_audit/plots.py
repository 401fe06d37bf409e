"""Matplotlib set up once for every figure the tool draws (headless, one style), and figures turned into PNG
bytes. PNG metadata carries no timestamp or version, so the same data gives the same bytes."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cxr_audit.provenance import atomic_write_bytes  # noqa: E402

DPI = 150
_PNG_METADATA = {"Software": None}
plt.rcParams.update({"font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8,
                     "legend.fontsize": 7, "figure.dpi": DPI})


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata=_PNG_METADATA)
    plt.close(figure)
    return buffer.getvalue()


def save_png(figure, path: str | Path) -> None:
    atomic_write_bytes(path, png_bytes(figure))


def data_uri(figure) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(figure)).decode()
