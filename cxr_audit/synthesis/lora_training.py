"""Fine-tuning a pretrained text-to-image pipeline (RoentGen, or any Stable-Diffusion-layout chest X-ray model)
on the user's training split with LoRA adapters on its UNet's attention layers.

The base stays frozen; each image is encoded by the base's VAE and its prompt (the text backend's prompt
builder, from the image's concept vector: the words the synthesize stage will prompt with) by its text encoder,
and the adapters learn the base's own denoising objective (noise or v, as its scheduler says). Same machinery
as the native generator: accelerate (one process, or data-parallel under torchrun / accelerate launch), bf16
on a GPU, a checkpoint every few hundred steps from which a resumed run draws exactly what an uninterrupted
one would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr_audit.data.image_rows import ImageRows, as_image_rows
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.synthesis.lora_store import LORA_TARGETS, LoraCard, check_base_pipeline, read_config, save_lora
from cxr_audit.synthesis.pipeline_files import text_pipeline_sha256
from cxr_audit.synthesis.text_backend import PROMPT_STYLE, prompt_for

EVAL_IMAGES = 32  # the fixed set the card's before/after denoising loss is measured on


@dataclass
class LoraTrainConfig:
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-4
    rank: int = 8
    p_uncond: float = 0.1  # prompts dropped to the empty one, so classifier-free guidance works after training
    seed: int = 0
    checkpoint_every: int = 250
    max_minutes: float | None = None


@dataclass
class BasePipeline:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object           # the training schedule (DDPM on the base's betas)
    image_size: int


def load_base_pipeline(folder: Path) -> BasePipeline:
    """The base's parts, from local files only, checked first from their configs."""
    from diffusers import DDPMScheduler, DiffusionPipeline

    folder = check_base_pipeline(folder)
    try:
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                 requires_safety_checker=False)
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"--base {folder}: the pipeline could not be loaded ({exc}). It must be a complete "
                             "diffusers text-to-image folder on local disk (save it with save_pretrained).") from None
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return BasePipeline(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer,
                        DDPMScheduler.from_config(pipe.scheduler.config), int(pipe.unet.config.sample_size) * scale)


def base_image_size(folder: Path) -> int:
    """The size a base pipeline generates at (its UNet's sample size times the VAE's downsampling), from configs."""
    folder = check_base_pipeline(folder)
    unet, vae = read_config(folder / "unet" / "config.json"), read_config(folder / "vae" / "config.json")
    return int(unet.get("sample_size", 64)) * 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)


def train_lora(images: np.ndarray | ImageRows, labels: np.ndarray, concept_names: list[str], base: Path, out: Path,
               config: LoraTrainConfig, data_sha256: str, progress: bool = True) -> LoraCard:
    """LoRA adapters for `base`'s UNet, trained on (N, 1, S, S) images in [0, 1] at the base's size with (N, K)
    labels over `concept_names`; saved in `out` (resumes from out/checkpoint.pt)."""
    from accelerate import Accelerator
    from peft import LoraConfig

    out, base = Path(out), Path(base).resolve()
    parts = load_base_pipeline(base)
    images = as_image_rows(images)
    if images.shape[-1] != parts.image_size:
        raise ValueError(f"images are {images.shape[-1]} px; the base generates at {parts.image_size} px")
    on_gpu = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    frozen_dtype = torch.bfloat16 if on_gpu else torch.float32  # the base is only read: half the memory on a GPU
    for module in (parts.unet, parts.vae, parts.text_encoder):
        module.requires_grad_(False).to(device)
        if frozen_dtype != torch.float32:
            module.to(frozen_dtype)
    torch.manual_seed(config.seed)  # the same initial adapters on every process
    parts.unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian",
                                      target_modules=LORA_TARGETS))
    adapters = [p for p in parts.unet.parameters() if p.requires_grad]
    for p in adapters:
        p.data = p.data.float()  # trained in float32 whatever the base's precision
    optimizer = torch.optim.AdamW(adapters, lr=config.lr, weight_decay=1e-2)
    base_sha256 = text_pipeline_sha256(base)
    prompts, empty = _prompt_embeddings(parts, labels, concept_names, device)
    evaluate = _fixed_evaluation(parts, images, prompts, empty, config.seed, device)
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)
    checkpoint = out / "checkpoint.pt"
    step, loss_before = _resume(checkpoint, parts.unet, optimizer, generator, rank, world, base_sha256)
    if loss_before is None:
        loss_before = evaluate()
    unet, optimizer = accelerator.prepare(parts.unet, optimizer)
    noise_generator = torch.Generator(device)
    started = time.monotonic()
    bar = progress_bar(total=config.steps, initial=step, desc="training LoRA", unit="step",
                       disable=not (progress and accelerator.is_local_main_process))
    unet.train()
    while step < config.steps:
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        pixels = torch.from_numpy(images.take(batch.numpy())).to(device)
        condition = prompts[torch.as_tensor(batch)]
        drop = torch.rand(len(batch), generator=generator) < config.p_uncond
        condition = torch.where(drop[:, None, None].to(device), empty, condition)
        noise_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        t = torch.randint(0, parts.scheduler.config.num_train_timesteps, (len(batch),), generator=generator)
        with accelerator.autocast():
            loss = _denoising_loss(parts, unet, pixels, condition, t.to(device), noise_generator)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(adapters, 1.0)
        optimizer.step()
        step += 1
        bar.update()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
        if config.max_minutes is not None and world > 1:  # every process stops at the same step
            out_of_time = bool(accelerator.reduce(torch.tensor(float(out_of_time), device=device), "max").item())
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            _save_checkpoint(accelerator, checkpoint, unet, optimizer, generator, step, loss_before, base_sha256)
        if out_of_time:
            break
    bar.close()
    unet = accelerator.unwrap_model(unet).eval()
    card = LoraCard(base=str(base), base_sha256=base_sha256, concepts=list(concept_names),
                    image_size=parts.image_size, rank=config.rank, steps=step, seed=config.seed,
                    batch_size=config.batch_size * world, lr=config.lr, prompt_style=PROMPT_STYLE,
                    training_data_sha256=data_sha256, training_images=len(images),
                    prediction_type=parts.scheduler.config.prediction_type, eval_loss_before=loss_before,
                    eval_loss_after=evaluate(), processes=world, mixed_precision=accelerator.mixed_precision)
    if accelerator.is_main_process:
        save_lora(unet, card, out)
    accelerator.wait_for_everyone()
    return card


@torch.no_grad()
def _prompt_embeddings(parts: BasePipeline, labels: np.ndarray, concept_names: list[str], device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's prompt encoded once: ((N, tokens, width) embeddings, the empty prompt's (1, tokens, width)).
    Encoded per distinct prompt (a split has few distinct concept vectors) and indexed back."""
    texts = [prompt_for(row, concept_names)[0] for row in labels]
    distinct, index = np.unique(np.array(texts + [""], dtype=object), return_inverse=True)
    tokens = parts.tokenizer(list(distinct), padding="max_length", max_length=parts.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
    encoded = torch.cat([parts.text_encoder(chunk)[0] for chunk in tokens.split(64)]).float()
    return encoded[torch.as_tensor(index[:-1])], encoded[index[-1]][None]


def _denoising_loss(parts: BasePipeline, unet, pixels: torch.Tensor, condition: torch.Tensor, t: torch.Tensor,
                    noise_generator: torch.Generator) -> torch.Tensor:
    """The base's training loss on (B, 1, S, S) images in [0, 1]: encode (grey to the VAE's RGB), noise to t,
    predict the noise or v under the prompts."""
    rgb = (pixels * 2 - 1).expand(-1, 3, -1, -1).to(parts.vae.dtype)
    with torch.no_grad():  # the mean of the VAE's posterior: one deterministic latent per image
        latents = parts.vae.encode(rgb).latent_dist.mode().float() * parts.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=noise_generator, device=latents.device)
    noisy = parts.scheduler.add_noise(latents, noise, t)
    target = noise if parts.scheduler.config.prediction_type == "epsilon" \
        else parts.scheduler.get_velocity(latents, noise, t)
    prediction = unet(noisy, t, encoder_hidden_states=condition).sample
    return torch.nn.functional.mse_loss(prediction.float(), target)


def _fixed_evaluation(parts: BasePipeline, images: ImageRows, prompts: torch.Tensor, empty: torch.Tensor, seed: int,
                      device):
    """A function giving the denoising loss on the same images, noise and evenly spread timesteps every time it
    is called: the card's before and after (a training batch's loss moves with what it drew)."""
    rows = np.arange(min(EVAL_IMAGES, len(images)))
    pixels = torch.from_numpy(images.take(rows)).to(device)
    total = parts.scheduler.config.num_train_timesteps
    t = torch.linspace(0, total - 1, len(rows)).long().to(device)

    @torch.no_grad()
    def evaluate() -> float:
        noise_generator = torch.Generator(device).manual_seed(seed + 7)
        was_training = parts.unet.training
        parts.unet.eval()
        with torch.autocast(pixels.device.type, torch.bfloat16, enabled=pixels.device.type == "cuda"):
            loss = float(_denoising_loss(parts, parts.unet, pixels, prompts[torch.as_tensor(rows)], t,
                                         noise_generator))
        parts.unet.train(was_training)
        return loss
    return evaluate


def _resume(checkpoint: Path, unet, optimizer, generator: torch.Generator, rank: int, world: int,
            base_sha256: str) -> tuple[int, float | None]:
    """(step, loss before training) from a checkpoint, its adapters and optimizer loaded; (0, None) without one."""
    from peft.utils import set_peft_model_state_dict

    if not checkpoint.exists():
        return 0, None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if len(state["generators"]) != world:
        raise UserInputError(f"{checkpoint} was written by {len(state['generators'])} training process(es); this "
                             f"run has {world}. Resume with the same number of processes, or start in a new --out.")
    if state["base_sha256"] != base_sha256:
        raise UserInputError(f"{checkpoint} holds adapters for another base pipeline (SHA-256 "
                             f"{state['base_sha256'][:16]}..., this --base is {base_sha256[:16]}...). Resume with the "
                             "base it was started on, or start in a new --out.")
    set_peft_model_state_dict(unet, state["lora"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generators"][rank].clone())  # a copy: set_state on a view crashes torch
    return int(state["step"]), float(state["loss_before"])


def _save_checkpoint(accelerator, path: Path, unet, optimizer, generator: torch.Generator, step: int,
                     loss_before: float, base_sha256: str) -> None:
    from peft.utils import get_peft_model_state_dict

    states = accelerator.gather(generator.get_state().to(accelerator.device)[None]).cpu()
    if accelerator.is_main_process:
        tmp = path.with_suffix(".tmp")
        torch.save({"lora": get_peft_model_state_dict(accelerator.unwrap_model(unet)),
                    "optimizer": optimizer.state_dict(), "generators": [s.clone() for s in states], "step": step,
                    "loss_before": loss_before, "base_sha256": base_sha256}, tmp)
        tmp.replace(path)
    accelerator.wait_for_everyone()
