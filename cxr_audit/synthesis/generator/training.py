"""Training the concept-conditioned generator (DDPM loss, EMA, checkpoint/resume, accelerate for several
GPUs or nodes)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxr_audit.data.image_rows import ImageRows, as_image_rows
from cxr_audit.errors import UserInputError
from cxr_audit.progress import progress_bar
from cxr_audit.synthesis.generator.model import (
    ConceptConditionedUNet,
    encode_vectors,
    inpainting_context,
    make_scheduler,
)
from cxr_audit.synthesis.generator.store import GeneratorCard, save_generator


@dataclass
class TrainConfig:
    steps: int = 1500
    batch_size: int = 16
    lr: float = 4e-4
    ema_decay: float = 0.995
    p_uncond: float = 0.1
    seed: int = 0
    checkpoint_every: int = 250
    max_minutes: float | None = None
    # Timesteps are drawn as T * u**timestep_exponent: 1 is uniform; below 1 the noisier half of the schedule,
    # where a finding's shape and size are decided, gets more of the training steps. 0.5 (density rising
    # linearly with t): on the phantom's 6-minute CPU budget checker agreement rose from 0.47 to 0.75
    # (Cardiomegaly) and from 0.28 to 0.44 (Effusion) over uniform draws, one seed each.
    timestep_exponent: float = 0.5
    # "v_prediction" (Salimans & Ho 2022) or "epsilon". Near the noisy end of the schedule the noise is almost
    # the input itself, so an epsilon model learns little there about the image it should produce, and its
    # image estimate divides by a vanishing signal level; v keeps a useful target at every noise level. On the
    # phantom's 6-minute CPU budget it took Effusion inserts the checker agrees with from about half to over
    # 0.9 (docs/generator_budget.md).
    prediction_type: str = "v_prediction"


def train_generator(images: np.ndarray | ImageRows, labels: np.ndarray, concept_names: list[str], out: Path,
                    config: TrainConfig, data_sha256: str, block_out_channels: tuple[int, ...] = (16, 32, 32),
                    progress: bool = True, regions=None) -> GeneratorCard:
    """DDPM training on (N, 1, S, S) images in [0, 1] (an array, or rows of the decoded-image store: only each
step's batch is read) with (N, K) labels; resumes from out/checkpoint.pt.

    With `regions` (a RegionSampler over the same images) the generator is an inpainting model: each sample
    hides one concept's anatomical region, shows the rest of the image as context, and the loss is taken
    mostly inside the region. The concept then decides most of what the model has to predict, so the
    conditioning is learned in a fraction of the steps a whole-image model needs.

    Runs through `accelerate`: one process on the CPU or GPU when started plainly; data-parallel over GPUs
    and nodes when started by `torchrun` or `accelerate launch`. Each process draws its own batches from its
    own seeded generator, so a step sees world_size x batch_size images; bf16 autocast on a GPU."""
    from accelerate import Accelerator

    out = Path(out)
    images = as_image_rows(images)
    on_gpu = torch.cuda.is_available()
    # cpu=True is what lets accelerate run CPU processes started by torchrun as one data-parallel job (gloo)
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", cpu=not on_gpu)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)  # the same initial weights on every process
    size = images.shape[-1]
    model = ConceptConditionedUNet(concept_names, size, block_out_channels, inpainting=regions is not None,
                                   prediction_type=config.prediction_type).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    scheduler = make_scheduler("ddpm", config.prediction_type)
    generator = torch.Generator().manual_seed(config.seed + 1_000_003 * rank)  # rank 0: the single-process stream
    checkpoint = out / "checkpoint.pt"
    step = _resume(checkpoint, model, ema, optimizer, generator, rank, world, config.prediction_type)
    model, optimizer = accelerator.prepare(model, optimizer)
    c_all = encode_vectors(labels).to(device)
    noise_generator = torch.Generator(device)
    started = time.monotonic()
    bar = progress_bar(total=config.steps, initial=step, desc="training generator", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    while step < config.steps:
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        # Read here, not ahead in a worker: the batch is drawn from the same stream as the step's noise and
        # regions, so drawing ahead would change what every later step draws (16 rows cost well under a ms).
        x0 = torch.from_numpy(images.take(batch.numpy())).to(device) * 2 - 1
        loss = _train_step(accelerator, model, optimizer, scheduler, x0, c_all, batch, labels, regions, config,
                           generator, noise_generator)
        with torch.no_grad():
            decay = min(config.ema_decay, (1 + step) / (10 + step))  # warm-up: EMA follows early weights
            for p_ema, p in zip(ema.parameters(), accelerator.unwrap_model(model).parameters()):
                p_ema.lerp_(p, 1 - decay)
        step += 1
        bar.update()
        if step % 10 == 0:  # reading the loss waits for the GPU: not every step
            bar.set_postfix(loss=f"{loss.item():.4f}")
        out_of_time = config.max_minutes is not None and time.monotonic() - started > 60 * config.max_minutes
        if config.max_minutes is not None and world > 1:  # every process stops at the same step
            out_of_time = bool(accelerator.reduce(torch.tensor(float(out_of_time), device=device), "max").item())
        if step % config.checkpoint_every == 0 or step == config.steps or out_of_time:
            _save_checkpoint(accelerator, checkpoint, model, ema, optimizer, generator, step, config.prediction_type)
        if out_of_time:
            break
    bar.close()
    card = GeneratorCard(concepts=list(concept_names), image_size=size, block_out_channels=list(block_out_channels),
                         layers_per_block=1, training_data_sha256=data_sha256, training_images=len(images),
                         steps=step, seed=config.seed, inpainting=regions is not None, processes=world,
                         batch_size=config.batch_size * world, mixed_precision=accelerator.mixed_precision,
                         timestep_exponent=config.timestep_exponent, prediction_type=config.prediction_type,
                         one_side_share=None if regions is None else regions.p_one_side)
    if accelerator.is_main_process:
        save_generator(ema, card, out)
    accelerator.wait_for_everyone()
    return card


def _resume(checkpoint: Path, model, ema, optimizer, generator: torch.Generator, rank: int, world: int,
            prediction_type: str) -> int:
    """Load a checkpoint into the training state (weights_only: it holds tensors and numbers); returns its step
    (0 without one). One of another process count or prediction type is refused."""
    if not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    generators = state["generators"] if "generators" in state else [state["generator"]]  # single-process checkpoints
    saved_world = len(generators)
    if saved_world != world:
        raise UserInputError(f"{checkpoint} was written by {saved_world} training process(es); this run has "
                             f"{world}. Resume with the same number of processes, or start in a new --out.")
    saved_prediction = state.get("prediction_type", "epsilon")  # checkpoints written before v existed
    if saved_prediction != prediction_type:
        raise UserInputError(f"{checkpoint} was trained to predict {saved_prediction}; this run asks for "
                             f"{prediction_type}. Resume with --prediction-type {saved_prediction}, or "
                             "start in a new --out.")
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    # a copy: set_state on a view into a larger storage crashes torch (seen with 2.14)
    generator.set_state(generators[rank].clone())
    return int(state["step"])


def _train_step(accelerator, model, optimizer, scheduler, x0: torch.Tensor, c_all: torch.Tensor, batch: torch.Tensor,
                labels: np.ndarray, regions, config: TrainConfig, generator: torch.Generator,
                noise_generator: torch.Generator) -> torch.Tensor:
    """One denoising step on `batch` (`x0`: its images in [-1, 1], on the device; noise, timesteps, dropped
    conditions and regions drawn from `generator` in a fixed order, so a resumed run draws what an
    uninterrupted one would); returns the loss."""
    device = x0.device
    vectors = c_all[batch.to(device)]
    # The noise is drawn where it is used (on a GPU, drawing it on the CPU costs more than the step), from a
    # per-step seed, so the CPU generator's state alone makes a resume exact.
    noise_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    noise = torch.randn(x0.shape, generator=noise_generator, device=device)
    t = _draw_timesteps(len(batch), scheduler.config.num_train_timesteps, config.timestep_exponent,
                        generator).to(device)
    drop = (torch.rand(len(batch), generator=generator) < config.p_uncond).to(device)
    context, weight = None, None
    if regions is not None:
        region = regions.sample(batch.numpy(), labels, generator).to(device)
        context = inpainting_context(x0, region)
        weight = region + 0.1 * (1 - region)  # outside, the context gives the answer: a little weight
    with accelerator.autocast():
        prediction = model(scheduler.add_noise(x0, noise, t), t, ConceptConditionedUNet.condition(vectors, drop),
                           context)
        target = noise if config.prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
        error = (prediction.float() - target) ** 2
        loss = error.mean() if weight is None else (error * weight).sum() / weight.sum()
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    accelerator.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return loss


def _draw_timesteps(count: int, total: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    if exponent == 1.0:  # the plain uniform draw (keeps earlier runs' batches identical)
        return torch.randint(0, total, (count,), generator=generator)
    u = torch.rand(count, generator=generator)
    return (total * u ** exponent).long().clamp_(0, total - 1)


def _save_checkpoint(accelerator, path: Path, model, ema, optimizer, generator: torch.Generator, step: int,
                     prediction_type: str) -> None:
    """Weights, optimizer, step and every process's batch-sampling state (so a resumed run draws the
    batches an uninterrupted one would have); written by the main process, atomically."""
    states = accelerator.gather(generator.get_state().to(accelerator.device)[None]).cpu()
    if accelerator.is_main_process:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                    "optimizer": optimizer.state_dict(), "generators": [state.clone() for state in states], "step": step,
                    "prediction_type": prediction_type}, tmp)
        tmp.replace(path)
    accelerator.wait_for_everyone()
