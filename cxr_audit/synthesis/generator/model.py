"""The concept-conditioned diffusion generator: a diffusers UNet2DModel plus a concept-vector projection, and
the schedulers it is trained and sampled with.

Conditioning: each concept's label becomes two inputs (positive, negative), so unknown is (0, 0) and
distinct from negative. The vector is projected and added to the UNet's time embedding
(`class_embed_type="identity"`) and also broadcast as extra input channels. With probability `p_uncond`
training replaces it by the all-unknown vector, which gives classifier-free guidance at sampling time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def encode_vectors(labels: np.ndarray) -> torch.Tensor:
    """(N, K) labels with 1 / 0 / NaN -> (N, 2K) float inputs: [is positive, is negative] per concept."""
    labels = np.asarray(labels, dtype=np.float32)
    return torch.from_numpy(np.concatenate([(labels == 1), (labels == 0)], axis=1).astype(np.float32))


class ConceptConditionedUNet(nn.Module):
    """UNet2DModel conditioned on the concept vector twice: projected and added to the time embedding
    (global), and broadcast as extra input channels (seen by every convolution from the first layer,
    which a small model on a CPU budget learns much faster). The all-zero vector, every concept unknown,
    is the unconditional input for classifier-free guidance."""

    def __init__(self, concept_names: list[str], image_size: int = 64,
                 block_out_channels: tuple[int, ...] = (16, 32, 32), layers_per_block: int = 1,
                 inpainting: bool = False, prediction_type: str = "epsilon"):
        super().__init__()
        from diffusers import UNet2DModel

        self.concept_names = list(concept_names)
        self.inpainting = inpainting
        self.prediction_type = prediction_type  # what the UNet predicts: "epsilon" (the noise) or "v_prediction"
        n = len(block_out_channels)
        self.unet = UNet2DModel(
            sample_size=image_size, in_channels=1 + 2 * len(concept_names) + (2 if inpainting else 0), out_channels=1,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            class_embed_type="identity", norm_num_groups=min(8, block_out_channels[0]))
        width = self.unet.time_embedding.linear_2.out_features
        self.encoder = nn.Sequential(nn.Linear(2 * len(concept_names), width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def condition(vectors: torch.Tensor, unconditional: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning input: the encoded vectors, zeroed (all unknown) where unconditional."""
        if unconditional is None:
            return vectors
        return vectors * (~unconditional)[:, None].to(vectors.dtype)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, vectors: torch.Tensor,
                context: torch.Tensor | None = None) -> torch.Tensor:
        """`context` (inpainting models): (N, 2, H, W) = [source outside the region (0 inside), region mask];
        None means no known pixels (the whole image is the region)."""
        planes = vectors[:, :, None, None].expand(-1, -1, noisy.shape[2], noisy.shape[3]).to(noisy.dtype)
        inputs = [noisy, planes]
        if self.inpainting:
            if context is None:
                context = torch.cat([torch.zeros_like(noisy), torch.ones_like(noisy)], dim=1)
            inputs.insert(1, context.to(noisy.dtype))
        return self.unet(torch.cat(inputs, dim=1), timesteps, class_labels=self.encoder(vectors)).sample


def inpainting_context(x0: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """[x0 outside the region, 0 inside; the region] for images x0 in [-1, 1] and a (N, 1, H, W) region in {0, 1}."""
    return torch.cat([x0 * (1 - region), region], dim=1)



def make_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                  prediction_type=prediction_type)
    return DDPMScheduler(**common) if kind == "ddpm" else DDIMScheduler(**common, set_alpha_to_one=True)

