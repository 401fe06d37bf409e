"""The small CNN the tool trains itself: the demo's "deployed" classifier and the QC concept checkers.

Kept small on purpose: it must train in minutes on 2 CPU cores. It has dropout before its head so that
MC-dropout uncertainty is meaningful, like the DenseNets it stands in for. Saved as a safetensors state dict
with a model card naming `architecture: small_cxr_net`: safetensors bytes depend only on the weights, so the
same training gives the same file (and the same SHA-256) in every process, unlike TorchScript archives.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from cxr_audit.classifier.card import card_file
from cxr_audit.data.image_rows import ArrayImages, ImageRows, as_image_rows, read_ahead
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_bytes, atomic_write_text

SMALL_CNN_ARCHITECTURE = "small_cxr_net"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCXRNet(nn.Module):
    """A compact CNN: 1-channel image in, one logit per concept out."""

    def __init__(self, n_outputs: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, width), _block(width, width * 2), _block(width * 2, width * 4), _block(width * 4, width * 8),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width * 8, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy that ignores unknown (NaN) labels: their mean, or their sum (`reduction="sum"`,
    for micro-batches normalised by a larger batch)."""
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0
    return nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known], reduction=reduction)


def train_small_classifier(images: np.ndarray | ImageRows, labels: np.ndarray, epochs: int = 6, batch_size: int = 32,
                           lr: float = 2e-3, seed: int = 0, width: int = 16,
                           progress: bool = False, max_steps: int | None = None) -> SmallCXRNet:
    """Train :class:`SmallCXRNet` on (N, 1, H, W) images in [0, 1] (an array, or rows read a batch at a time)
    and (N, K) labels (NaN = unknown).

    Exposure jitter is the only augmentation: it keeps the model from keying on global brightness.
    `max_steps` stops early (benchmarks time a fixed number of steps on any set).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x = as_image_rows(images)
    y = torch.tensor(labels, dtype=torch.float32)
    net = SmallCXRNet(y.shape[1], width=width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    bar = progress_bar(total=steps, desc="training classifier", unit="step", disable=not progress)

    done = [0]

    def after_step() -> None:
        schedule.step()
        bar.update()
        done[0] += 1

    for _ in range(epochs):
        left = None if max_steps is None else max_steps - done[0]
        if left is not None and left <= 0:
            break
        _train_epoch(net, optimizer, x, y, batch_size, generator, after_step, max_steps=left)
    bar.close()
    return net.eval()


def _train_epoch(net: SmallCXRNet, optimizer: torch.optim.Optimizer, x: ImageRows, y: torch.Tensor,
                 batch_size: int, generator: torch.Generator, after_step=None, max_steps: int | None = None) -> None:
    """One pass over (x, y) in a seeded random order, with exposure jitter (the only augmentation: it keeps
    the model from keying on global brightness). The order is drawn first, so the epoch's batches are read
    ahead while earlier ones train."""
    net.train()
    order = torch.randperm(len(x), generator=generator)
    batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)][:max_steps]
    for batch, images in zip(batches, read_ahead(x, (b.numpy() for b in batches))):
        gain = 0.9 + 0.2 * torch.rand(len(batch), 1, 1, 1, generator=generator)
        loss = masked_bce(net(images * gain), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()


@dataclass
class TrainingRecord:
    """How a model was trained to convergence: what its card records."""

    max_epochs: int
    patience: int
    epochs_run: int
    best_epoch: int
    validation_loss: list[float] = field(default_factory=list)  # per epoch

    def card_entry(self) -> dict:
        return {"stopping": f"early stopping on validation loss (patience {self.patience} epochs)",
                "max_epochs": self.max_epochs, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "validation_loss": [round(v, 5) for v in self.validation_loss]}


def train_to_convergence(images: np.ndarray, labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                         max_epochs: int = 60, patience: int = 5, batch_size: int = 32, lr: float = 1e-3,
                         seed: int = 0, width: int = 16, progress: bool = False) -> tuple[SmallCXRNet, TrainingRecord]:
    """Train :class:`SmallCXRNet` until the validation loss stops improving for `patience` epochs, and return
    the weights of its best epoch: a converged model, so that fine-tuning it more cannot gain by extra steps
    alone. Same augmentation as :func:`train_small_classifier`; a constant learning rate (the schedule
    cannot know how long training will run)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = ArrayImages(np.asarray(images, np.float32)), torch.tensor(labels, dtype=torch.float32)
    x_val, y_val = torch.tensor(val_images, dtype=torch.float32), torch.tensor(val_labels, dtype=torch.float32)
    net = SmallCXRNet(y.shape[1], width=width)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    record = TrainingRecord(max_epochs=max_epochs, patience=patience, epochs_run=0, best_epoch=0)
    best_state, best_loss = copy.deepcopy(net.state_dict()), float("inf")
    bar = progress_bar(total=max_epochs, desc="training to convergence", unit="epoch", disable=not progress)
    for epoch in range(1, max_epochs + 1):
        _train_epoch(net, optimizer, x, y, batch_size, generator)
        net.eval()
        with torch.inference_mode():
            val_loss = float(masked_bce(torch.cat([net(x_val[i:i + 256]) for i in range(0, len(x_val), 256)]), y_val))
        record.validation_loss.append(val_loss)
        record.epochs_run = epoch
        bar.update()
        if val_loss < best_loss:
            best_loss, record.best_epoch, best_state = val_loss, epoch, copy.deepcopy(net.state_dict())
        elif epoch - record.best_epoch >= patience:
            break
    bar.close()
    net.load_state_dict(best_state)
    return net.eval(), record


def train_checker(images: np.ndarray | ImageRows, labels: np.ndarray, seed: int = 0,
                  progress: bool = False) -> SmallCXRNet:
    """The independent concept checker that grades synthetic edits (QC): a small classifier trained on real
    images only. Seeded apart from the run's seed so it never shares initial weights with a model trained
    alongside it."""
    return train_small_classifier(images, labels, epochs=8, seed=seed + 101, width=12, progress=progress)


@torch.inference_mode()
def predict_probabilities(net: nn.Module, images: np.ndarray | ImageRows, batch_size: int = 256) -> np.ndarray:
    net.eval()
    batches = as_image_rows(np.asarray(images, np.float32) if isinstance(images, np.ndarray) else images)
    scores = [torch.sigmoid(net(torch.from_numpy(batch))) for batch in batches.batches(batch_size)]
    return torch.cat(scores).numpy() if scores else np.zeros((0, net.head.out_features), np.float32)


def small_cnn_from_state(state: dict[str, torch.Tensor], n_outputs: int) -> SmallCXRNet:
    """An untrained SmallCXRNet shaped like `state` (its width is the first convolution's channel count)."""
    return SmallCXRNet(n_outputs, width=int(state["features.0.0.weight"].shape[0]))


def save_classifier(net: SmallCXRNet, path: str | Path, concepts: list[str], size: int,
                    training: dict | None = None, thresholds: dict[str, float] | None = None,
                    grading: dict[str, dict] | None = None) -> None:
    """Save a trained SmallCXRNet as safetensors with its model card (`<path>.card.yaml`); `training`, how it
    was trained, goes into the card."""
    from safetensors.torch import save

    path = Path(path)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in net.state_dict().items()}
    atomic_write_bytes(path, save(weights))
    card = {"format": "torchvision", "architecture": SMALL_CNN_ARCHITECTURE, "input_size": size, "channels": 1,
            "normalization": "unit", "outputs": "logits", "output_names": list(concepts)}
    if training:
        card["training"] = training
    if thresholds:
        card["thresholds"] = thresholds
    if grading:
        card["grading"] = grading
    atomic_write_text(card_file(path), yaml.safe_dump(card, sort_keys=False))
