"""Masked edit against plain sampling with the same UNet and the same number of UNet calls (target: the
edit costs <= 1.1x), and edits per second at 64 / 128 / 256 px on this machine's device."""

from __future__ import annotations

import time

import numpy as np
import torch

from cxr_audit.synthesis.editor import EditSettings, edit, sample
from cxr_audit.synthesis.generator.model import ConceptConditionedUNet

CONCEPTS = ["Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Edema", "Atelectasis",
            "Nodule", "Support Devices"]


def timed(function, repeats: int = 2) -> float:
    function()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    import sys

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device}, threads: {torch.get_num_threads()}")
    settings = EditSettings(steps=30, strength=1.0)  # the audit's default: the region regenerated from noise
    sizes = [int(a) for a in sys.argv[1:]] or [64, 128, 256]
    widths_for = {64: (16, 32, 32), 128: (16, 32, 64, 64), 256: (16, 32, 64, 64, 64)}
    for size in sizes:
        widths = widths_for[size]
        # a GPU is measured at a batch that fills it; CPU at 128/256 px: a small batch keeps it minutes
        batch = 64 if device.type == "cuda" else (8 if size <= 64 else 2)
        model = ConceptConditionedUNet(CONCEPTS, size, widths, inpainting=True).to(device).eval()
        rng = np.random.default_rng(0)
        sources = rng.random((batch, size, size)).astype(np.float32)
        labels = (rng.random((batch, len(CONCEPTS))) < 0.3).astype(np.float32)
        masks = np.zeros((batch, size, size), bool)
        masks[:, size // 4: size // 2, size // 4: 3 * size // 4] = True
        soft = masks.astype(np.float32)
        repeats = 2 if size <= 64 else 1
        masked = timed(lambda: edit(model, sources, labels, masks, soft, settings, seed=0), repeats)
        plain = timed(lambda: sample(model, labels, settings, seed=0, size=size), repeats)
        print(f"{size:>3} px, UNet {widths}: masked edit {masked / batch * 1000:7.1f} ms/edit, plain sampling "
              f"{plain / batch * 1000:7.1f} ms/image, ratio {masked / plain:.2f} (target <= 1.1); "
              f"{batch / masked:.2f} edits/s ({int(settings.steps * settings.strength)} guided steps)")


if __name__ == "__main__":
    main()
