"""Masked, anatomy-preserving edits (RePaint / RadEdit style) and the unconstrained ablation.

The edit starts from the source noised to `strength` of the schedule (RadEdit skips the first part of
the steps), then denoises under the target concept vector with classifier-free guidance. After every step
the region outside the edit mask is replaced by the source noised to the timestep the latent has *just
reached* (RadEdit's public pipeline pastes it at the previous, one step too noisy, level). The final image
is a feathered composite of the edit and the source, so everything outside the mask is the source, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cxr_audit.synthesis.generator.model import (
    ConceptConditionedUNet,
    encode_vectors,
    inpainting_context,
    make_scheduler,
)


@dataclass
class EditSettings:
    steps: int = 50            # DDIM steps over the whole schedule; an edit runs strength * steps of them
    strength: float = 0.6      # how much of the schedule is re-run (1.0 = from pure noise)
    guidance: float = 3.0      # classifier-free guidance scale
    eta: float = 0.0           # DDIM stochasticity


def _guided_prediction(model: ConceptConditionedUNet, x: torch.Tensor, t: torch.Tensor, conditional: torch.Tensor,
                       null: torch.Tensor, guidance: float, context: torch.Tensor | None = None) -> torch.Tensor:
    """One UNet pass on [conditional; unconditional] and the guided combination."""
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([conditional, null]),
                 None if context is None else torch.cat([context, context]))
    cond, uncond = both.chunk(2)
    return uncond + guidance * (cond - uncond)


@torch.inference_mode()
def edit(model: ConceptConditionedUNet, sources: np.ndarray, target_labels: np.ndarray, masks: np.ndarray | None,
         soft_masks: np.ndarray | None, settings: EditSettings, seed: int) -> np.ndarray:
    """Edit a batch of source images (B, S, S) in [0, 1] toward `target_labels` (B, K).

    `masks` (B, S, S) bool marks where the image may change; None gives the unconstrained ablation, which
    regenerates the whole image from the perturbed vector.
    """
    device = next(model.parameters()).device
    scheduler = make_scheduler("ddim", model.prediction_type)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps[int(round(settings.steps * (1 - settings.strength))):]
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.tensor(sources, dtype=torch.float32, device=device)[:, None] * 2 - 1
    keep = None if masks is None else torch.tensor(~masks, dtype=torch.float32, device=device)[:, None]
    conditional = encode_vectors(target_labels).to(device)
    null = torch.zeros_like(conditional)  # every concept unknown: the unconditional input
    noise = torch.randn(x0.shape, generator=generator).to(device)
    # An inpainting generator also sees the source around the region (the whole image is the region in the
    # unconstrained ablation).
    context = None
    if model.inpainting:
        region = torch.ones_like(x0) if keep is None else 1 - keep
        context = inpainting_context(x0, region)
    x = scheduler.add_noise(x0, noise, timesteps[:1].repeat(len(x0)))
    for i, t in enumerate(timesteps):
        t_batch = t.repeat(len(x0)).to(device)
        prediction = _guided_prediction(model, x, t_batch, conditional, null, settings.guidance, context)
        x = scheduler.step(prediction, t, x, eta=settings.eta, generator=generator).prev_sample
        if keep is not None:
            if i + 1 < len(timesteps):  # the latent is now at timesteps[i + 1]: noise the source to that level
                fresh = torch.randn(x0.shape, generator=generator).to(device)
                known = scheduler.add_noise(x0, fresh, timesteps[i + 1].repeat(len(x0)))
            else:
                known = x0
            x = keep * known + (1 - keep) * x
    edited = ((x.clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
    if soft_masks is not None:
        edited = soft_masks * edited + (1 - soft_masks) * sources
    return edited.astype(np.float32)


@torch.inference_mode()
def sample(model: ConceptConditionedUNet, labels: np.ndarray, settings: EditSettings, seed: int,
           size: int) -> np.ndarray:
    """Plain sampling from pure noise with the same number of UNet calls as an edit of the same strength
    (the benchmark's reference for the cost of masking)."""
    device = next(model.parameters()).device
    scheduler = make_scheduler("ddim", model.prediction_type)
    scheduler.set_timesteps(settings.steps)
    timesteps = scheduler.timesteps[int(round(settings.steps * (1 - settings.strength))):]
    generator = torch.Generator().manual_seed(seed)
    conditional = encode_vectors(labels).to(device)
    null = torch.zeros_like(conditional)
    x = torch.randn((len(labels), 1, size, size), generator=generator).to(device)
    for t in timesteps:
        prediction = _guided_prediction(model, x, t.repeat(len(x)).to(device), conditional, null, settings.guidance)
        x = scheduler.step(prediction, t, x, eta=settings.eta, generator=generator).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2)[:, 0].cpu().numpy()
