"""Lung segmentation for real images: the anatomy the masked editor needs when no masks are on disk.

A small U-Net trained on the 90 hand-drawn lung masks of `../shared/data/covid_lungs` (`cxr-audit
train-lung-seg` retrains it; the trained network ships in `cxr_audit/demo_assets/lung_seg.pt` with a card
holding its held-out Dice). It predicts one lung mask; the two lungs are split into patient-right (image
left) and patient-left by connected components, and the heart, mediastinum and costophrenic regions are
derived from the lungs by `anatomy.regions_from_anatomy`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from cxr_audit.anatomy.masks import mask_folder
from cxr_audit.anatomy.regions import regions_from_anatomy
from cxr_audit.data.images import load_resized
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_json, read_json, sha256_file

SEG_SIZE = 128
SHIPPED_SEGMENTER = Path(__file__).parents[1] / "demo_assets" / "lung_seg.pt"


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class LungUNet(nn.Module):
    """A four-level U-Net (16-32-64-128 channels, about 0.5 M parameters): image (N,1,H,W) -> lung logit."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.down1, self.down2, self.down3 = _double_conv(1, w[0]), _double_conv(w[0], w[1]), _double_conv(w[1], w[2])
        self.bottom = _double_conv(w[2], w[3])
        self.up3, self.merge3 = nn.ConvTranspose2d(w[3], w[2], 2, stride=2), _double_conv(2 * w[2], w[2])
        self.up2, self.merge2 = nn.ConvTranspose2d(w[2], w[1], 2, stride=2), _double_conv(2 * w[1], w[1])
        self.up1, self.merge1 = nn.ConvTranspose2d(w[1], w[0], 2, stride=2), _double_conv(2 * w[0], w[0])
        self.head = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.down1(x)
        s2 = self.down2(nn.functional.max_pool2d(s1, 2))
        s3 = self.down3(nn.functional.max_pool2d(s2, 2))
        x = self.bottom(nn.functional.max_pool2d(s3, 2))
        x = self.merge3(torch.cat([self.up3(x), s3], dim=1))
        x = self.merge2(torch.cat([self.up2(x), s2], dim=1))
        x = self.merge1(torch.cat([self.up1(x), s1], dim=1))
        return self.head(x)


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    predicted, truth = predicted.astype(bool), truth.astype(bool)
    total = predicted.sum() + truth.sum()
    return float(2 * (predicted & truth).sum() / total) if total else 1.0


def load_lung_dataset(folder: Path, size: int = SEG_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """covid_lungs layout: metadata.csv with image, lung_mask, patientid -> images, masks, patient ids."""
    folder = Path(folder)
    metadata = folder / "metadata.csv"
    if not metadata.exists():
        raise UserInputError(f"{metadata} does not exist: --data must be a folder with metadata.csv (columns image, "
                             "lung_mask, patientid), like ../shared/data/covid_lungs.")
    frame = pd.read_csv(metadata)
    for column in ("image", "lung_mask", "patientid"):
        if column not in frame:
            raise UserInputError(f"{metadata} has no column {column!r}.")
    images = np.stack([load_resized(folder / p, size) for p in frame["image"]])
    masks = np.stack([np.asarray(Image.open(folder / p).convert("L").resize((size, size), Image.Resampling.NEAREST)) > 127
                      for p in frame["lung_mask"]])
    return images.astype(np.float32), masks, frame["patientid"].astype(str).to_numpy()


def _augment(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Small affine jitter (scale, shift, rotation) and exposure/contrast changes: what differs between sites."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=generator) - 0.5) * 0.2
    scale = 1 + (torch.rand(n, generator=generator) - 0.5) * 0.2
    shift = (torch.rand(n, 2, generator=generator) - 0.5) * 0.12
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = nn.functional.grid_sample(x, grid, padding_mode="border", align_corners=False)
    y = (nn.functional.grid_sample(y, grid, mode="nearest", align_corners=False) > 0.5).float()
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.6)
    return x.clamp(1e-4, 1) ** gamma, y


def train_lung_segmenter(folder: Path, out: Path, steps: int = 800, seed: int = 0, holdout: float = 0.2,
                         progress: bool = True) -> dict:
    """Train on a patient-level split of the covid_lungs masks; report Dice on the held-out patients."""
    torch.manual_seed(seed)
    images, masks, patients = load_lung_dataset(folder)
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    held = set(rng.choice(unique, size=max(1, int(round(holdout * unique.size))), replace=False))
    test = np.array([p in held for p in patients])
    x = torch.tensor(images[~test])[:, None]
    y = torch.tensor(masks[~test], dtype=torch.float32)[:, None]
    net = LungUNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    for _ in progress_bar(range(steps), desc="training lung segmenter", unit="step", disable=not progress):
        net.train()
        batch = torch.randint(0, len(x), (8,), generator=generator)
        xb, yb = _augment(x[batch], y[batch], generator)
        logits = net(xb)
        probabilities = torch.sigmoid(logits)
        soft_dice = 1 - (2 * (probabilities * yb).sum((1, 2, 3)) + 1) / (probabilities.sum((1, 2, 3)) + yb.sum((1, 2, 3)) + 1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, yb) + soft_dice.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    net.eval()
    with torch.inference_mode():
        predicted = torch.sigmoid(net(torch.tensor(images[test])[:, None]))[:, 0].numpy() > 0.5
    scores = [dice(p, t) for p, t in zip(predicted, masks[test])]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.jit.script(net).save(str(tmp))
    tmp.replace(out)
    card = {"input_size": SEG_SIZE, "training_images": int((~test).sum()), "heldout_images": int(test.sum()),
            "heldout_patients": sorted(held), "heldout_dice_mean": round(float(np.mean(scores)), 4),
            "heldout_dice_min": round(float(np.min(scores)), 4), "steps": steps, "seed": seed,
            "training_seconds": round(time.monotonic() - started, 1),
            "data": str(folder), "data_sha256": sha256_file(Path(folder) / "metadata.csv"), "weights_sha256": sha256_file(out)}
    atomic_write_json(out.with_name(out.name + ".json"), card)
    return card


class LungSegmenter:
    """A trained lung segmenter (TorchScript) whose card's SHA-256 must match the weights."""

    def __init__(self, path: Path = SHIPPED_SEGMENTER):
        path = Path(path)
        card_path = path.with_name(path.name + ".json")
        if not path.exists() or not card_path.exists():
            raise UserInputError(f"No lung segmenter at {path}. Train one: `cxr-audit train-lung-seg --data "
                                 "../shared/data/covid_lungs --out PATH`.")
        self.card = read_json(card_path, "")
        if not isinstance(self.card, dict) or "weights_sha256" not in self.card:
            raise UserInputError(f"{card_path} is not a lung segmenter card (no 'weights_sha256'). Train the "
                                 "segmenter again with `cxr-audit train-lung-seg`.")
        if sha256_file(path) != self.card["weights_sha256"]:
            raise UserInputError(f"{path} does not match the SHA-256 in {card_path}; retrain or restore it.")
        try:  # TorchScript only: a pickled file is never unpickled here
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as error:
            raise UserInputError(f"Lung segmenter {path} is not a TorchScript file ({str(error).splitlines()[0][:120]}); "
                                 "the segmenter is loaded as TorchScript only, never unpickled. Train it again "
                                 "with `cxr-audit train-lung-seg`.") from None

    @torch.inference_mode()
    def lungs(self, image: np.ndarray) -> np.ndarray:
        """Boolean lung mask at the image's size, from a [0, 1] image of any size."""
        x = torch.tensor(np.asarray(Image.fromarray(np.round(image * 255).astype(np.uint8)).resize(
            (SEG_SIZE, SEG_SIZE), Image.Resampling.BILINEAR)), dtype=torch.float32)[None, None] / 255
        probability = torch.sigmoid(self.net(x))[0, 0].numpy()
        resized = Image.fromarray((probability * 255).astype(np.uint8)).resize(image.shape[::-1], Image.Resampling.BILINEAR)
        return np.asarray(resized) > 127

    def anatomy(self, image: np.ndarray) -> dict[str, np.ndarray]:
        return split_lungs(self.lungs(image))


def split_lungs(lungs: np.ndarray) -> dict[str, np.ndarray]:
    """One lung mask -> {'lung_right', 'lung_left'} (patient's right is on the image's left): the two largest
    connected components by centroid; if the lungs touch, the midline between their outer edges splits them."""
    labelled, count = ndimage.label(lungs)
    shape = lungs.shape
    if count >= 2:
        sizes = ndimage.sum(lungs, labelled, range(1, count + 1))
        first, second = (np.argsort(sizes)[::-1][:2] + 1)
        if sizes[second - 1] > 0.2 * sizes[first - 1]:
            a, b = labelled == first, labelled == second
            if np.flatnonzero(a.any(axis=0)).mean() > np.flatnonzero(b.any(axis=0)).mean():
                a, b = b, a
            return {"lung_right": a, "lung_left": b}
    cols = np.flatnonzero(lungs.any(axis=0))
    middle = (cols[0] + cols[-1]) // 2 if cols.size else shape[1] // 2
    x = np.arange(shape[1])[None, :]
    return {"lung_right": lungs & (x < middle), "lung_left": lungs & (x >= middle)}


def write_masks(segmenter: LungSegmenter, manifest, out_root: Path, size: int | None = None,
                progress: bool = True, replace: bool = False) -> int:
    """Segment every image of `manifest` and write masks in the layout synthesis reads:
    <out_root>/masks/<image path without suffix>/lung_right.png, lung_left.png.

    Masks already there (a phantom's exact ones, an earlier segmentation, hand-drawn ones) are never replaced
    unless `replace`: the check runs before anything is written."""
    existing = [Path(out_root) / mask_folder(p) / "lung_right.png" for p in manifest.frame["path"]]
    existing = [p for p in existing if p.exists()]
    if existing and not replace:
        raise UserInputError(f"{len(existing):,} images already have lung masks under {Path(out_root) / 'masks'} (e.g. "
                             f"{existing[0]}): the dataset's own, or an earlier segmentation. They are kept; pass "
                             "--force to replace them.")
    written = 0
    overlays = []
    for path in progress_bar(manifest.frame["path"], desc="segmenting lungs", unit="img", disable=not progress):
        image = load_resized(manifest.resolve_image(path), size or SEG_SIZE)
        anatomy = segmenter.anatomy(image)
        if len(overlays) < 24:
            overlays.append(_overlay(image, anatomy))
        folder = Path(out_root) / mask_folder(path)
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in anatomy.items():
            Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"{name}.png")
        written += 1
    if overlays:  # a contact sheet: right lung red, left green, cardiac region blue, costophrenic angles yellow
        columns = 6
        tile = overlays[0].shape[0]
        sheet = np.full(((len(overlays) + columns - 1) // columns * tile, columns * tile, 3), 255, np.uint8)
        for k, picture in enumerate(overlays):
            r, c = divmod(k, columns)
            sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = picture
        Image.fromarray(sheet).save(Path(out_root) / "lung_overlays.png")
    return written


def _overlay(image: np.ndarray, anatomy: dict[str, np.ndarray]) -> np.ndarray:
    rgb = np.repeat(image[..., None], 3, axis=2)
    empty = np.zeros_like(image, bool)
    regions = regions_from_anatomy(anatomy) if (anatomy["lung_right"] | anatomy["lung_left"]).any() else None
    heart = regions["cardiac_silhouette"]["both"] if regions else empty
    angles = regions["costophrenic_angles"]["both"] if regions else empty
    for mask, colour in ((anatomy["lung_right"], (1, 0.2, 0.2)), (anatomy["lung_left"], (0.2, 1, 0.2)),
                         (heart & ~angles, (0.3, 0.4, 1)), (angles, (1, 0.9, 0.1))):
        rgb[mask] = 0.6 * rgb[mask] + 0.4 * np.array(colour)
    return np.round(rgb * 255).astype(np.uint8)
