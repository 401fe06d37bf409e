"""Anatomy for real images: train the lung segmenter and write masks for a dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxr_audit.cli.app import DataFormat, FormatOption, RootOption, command, console


@command("train-lung-seg")
def train_lung_seg_command(
    data: Annotated[Path, typer.Option("--data", help="Folder with metadata.csv, images/ and lung_masks/ "
                                       "(e.g. ../shared/data/covid_lungs).")],
    out: Annotated[Path, typer.Option("--out", help="TorchScript file to write (a .json card goes beside it).")],
    steps: Annotated[int, typer.Option("--steps")] = 800,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train the lung segmenter on hand-drawn masks; prints the Dice on held-out patients."""
    from cxr_audit.anatomy.segmenter import train_lung_segmenter

    card = train_lung_segmenter(data, out, steps=steps, seed=seed)
    console.print(f"Lung segmenter: Dice on {card['heldout_images']} held-out images: mean "
                  f"{card['heldout_dice_mean']:.3f}, min {card['heldout_dice_min']:.3f}. Wrote {out}", markup=False)


@command("segment")
def segment_command(
    data: Annotated[Path, typer.Option("--data", help="Labels file of the images to segment.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset root to write masks/ into (usually the data's root).")],
    data_format: FormatOption = DataFormat.auto,
    root: RootOption = None,
    model: Annotated[Path | None, typer.Option("--model", help="Lung segmenter (default: the shipped one).")] = None,
    size: Annotated[int, typer.Option("--size", min=32, max=2048, help="Mask size in pixels.")] = 128,
    force: Annotated[bool, typer.Option("--force", help="Replace masks that already exist.")] = False,
) -> None:
    """Segment the lungs of every image and write masks where synthesis looks for them."""
    from cxr_audit.anatomy.segmenter import SHIPPED_SEGMENTER, LungSegmenter, write_masks
    from cxr_audit.data.readers import read_manifest

    manifest = read_manifest(data, (data_format or DataFormat.auto).value, root)
    written = write_masks(LungSegmenter(model or SHIPPED_SEGMENTER), manifest, out, size, replace=force)
    console.print(f"Wrote lung masks for {written} images under {out / 'masks'}", markup=False)
