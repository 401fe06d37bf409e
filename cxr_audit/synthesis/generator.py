"""The concept-conditioned diffusion generator (diffusers UNet2DModel + a concept-vector projection).

Conditioning: each concept's label becomes two inputs (positive, negative), so unknown is (0, 0) and
distinct from negative. The vector is projected and added to the UNet's time embedding
(`class_embed_type="identity"`) and also broadcast as extra input channels. With probability `p_uncond`
training replaces it by the all-unknown vector, which gives classifier-free guidance at sampling time.

Saved in diffusers' layout (`unet/`, `scheduler/`) plus `concept_encoder.safetensors` and
`generator_card.json`, which pins every weight file's SHA-256; loading refuses files that do not match.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from cxr_audit import __version__, concepts
from cxr_audit.errors import UserInputError
from cxr_audit.provenance import atomic_write_json, sha256_file

GENERATOR_CARD = "generator_card.json"


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


@dataclass
class GeneratorCard:
    concepts: list[str]
    image_size: int
    block_out_channels: list[int]
    layers_per_block: int
    training_data_sha256: str
    training_images: int
    steps: int
    seed: int
    inpainting: bool = False       # trained to fill an anatomical region given the image around it
    processes: int = 1             # data-parallel training processes (GPUs)
    batch_size: int | None = None  # images per step, over all processes
    mixed_precision: str = "no"
    timestep_exponent: float = 1.0  # TrainConfig.timestep_exponent (cards written before it: uniform draws)
    prediction_type: str = "epsilon"  # TrainConfig.prediction_type (cards written before it: the noise)
    one_side_share: float | None = None  # RegionSampler.p_one_side (None: not recorded, or no regions)
    tool_version: str = __version__
    weights_sha256: dict[str, str] = field(default_factory=dict)


def make_scheduler(kind: str = "ddpm", prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                  prediction_type=prediction_type)
    return DDPMScheduler(**common) if kind == "ddpm" else DDIMScheduler(**common, set_alpha_to_one=True)


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


def train_generator(images: np.ndarray, labels: np.ndarray, concept_names: list[str], out: Path,
                    config: TrainConfig, data_sha256: str, block_out_channels: tuple[int, ...] = (16, 32, 32),
                    progress: bool = True, regions=None) -> GeneratorCard:
    """DDPM training on (N, 1, S, S) images in [0, 1] with (N, K) labels; resumes from out/checkpoint.pt.

    With `regions` (a RegionSampler over the same images) the generator is an inpainting model: each sample
    hides one concept's anatomical region, shows the rest of the image as context, and the loss is taken
    mostly inside the region. The concept then decides most of what the model has to predict, so the
    conditioning is learned in a fraction of the steps a whole-image model needs.

    Runs through `accelerate`: one process on the CPU or GPU when started plainly; data-parallel over GPUs
    and nodes when started by `torchrun` or `accelerate launch`. Each process draws its own batches from its
    own seeded generator, so a step sees world_size x batch_size images; bf16 autocast on a GPU."""
    from accelerate import Accelerator

    out = Path(out)
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
    step = 0
    checkpoint = out / "checkpoint.pt"
    if checkpoint.exists():  # resume: weights_only is enough, the checkpoint holds tensors and numbers
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        generators = state["generators"] if "generators" in state else [state["generator"]]  # single-process checkpoints
        saved_world = len(generators)
        if saved_world != world:
            raise UserInputError(f"{checkpoint} was written by {saved_world} training process(es); this run has "
                                 f"{world}. Resume with the same number of processes, or start in a new --out.")
        saved_prediction = state.get("prediction_type", "epsilon")  # checkpoints written before v existed
        if saved_prediction != config.prediction_type:
            raise UserInputError(f"{checkpoint} was trained to predict {saved_prediction}; this run asks for "
                                 f"{config.prediction_type}. Resume with --prediction-type {saved_prediction}, or "
                                 "start in a new --out.")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        # a copy: set_state on a view into a larger storage crashes torch (seen with 2.14)
        generator.set_state(generators[rank].clone())
        step = int(state["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    x_all = torch.tensor(images, dtype=torch.float32, device=device) * 2 - 1  # a few hundred MB at most
    c_all = encode_vectors(labels).to(device)
    noise_generator = torch.Generator(device)
    started = time.monotonic()
    bar = tqdm(total=config.steps, initial=step, desc="training generator", unit="step",
               disable=not (progress and accelerator.is_local_main_process))
    while step < config.steps:
        batch = torch.randint(0, len(x_all), (config.batch_size,), generator=generator)
        on_device = batch.to(device)
        x0, vectors = x_all[on_device], c_all[on_device]
        # The noise is drawn where it is used (on a GPU, drawing it on the CPU costs more than the step),
        # from a per-step seed, so the CPU generator's state alone makes a resume exact.
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


def save_generator(model: ConceptConditionedUNet, card: GeneratorCard, out: Path) -> None:
    from safetensors.torch import save_file

    model.unet.save_pretrained(out / "unet", safe_serialization=True)
    make_scheduler("ddpm", card.prediction_type).save_pretrained(out / "scheduler")
    encoder_state = {f"encoder.{k}": v.contiguous() for k, v in model.encoder.state_dict().items()}
    save_file(encoder_state, str(out / "concept_encoder.safetensors"))
    card.weights_sha256 = {
        "unet/diffusion_pytorch_model.safetensors": sha256_file(out / "unet" / "diffusion_pytorch_model.safetensors"),
        "concept_encoder.safetensors": sha256_file(out / "concept_encoder.safetensors"),
    }
    atomic_write_json(out / GENERATOR_CARD, asdict(card))


def generator_sha256(folder: Path) -> str:
    """One identity for a saved generator: the hash of its card (which pins the weights' hashes); for a
    text-conditioned pipeline folder, a hash over its weight and config files."""
    from cxr_audit.synthesis.text_backend import is_text_pipeline, text_pipeline_sha256

    folder = Path(folder)
    if not (folder / GENERATOR_CARD).exists() and is_text_pipeline(folder):
        return text_pipeline_sha256(folder)
    return sha256_file(folder / GENERATOR_CARD)


def load_generator(folder: str | Path, device: str | torch.device | None = None):
    """(model, card) of a saved generator, from local files, refusing weights whose SHA-256 differs from the
    card; on the GPU when there is one (edits run where the model is). A folder holding a diffusers
    text-to-image pipeline instead gives a text_backend.TextConditionedGenerator and its card."""
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    folder = Path(folder)
    card_path = folder / GENERATOR_CARD
    if not card_path.exists():
        from cxr_audit.synthesis.text_backend import TextConditionedGenerator, is_text_pipeline

        if is_text_pipeline(folder):  # the second backend: a local text-conditioned diffusers pipeline
            generator = TextConditionedGenerator(folder, device)
            return generator, generator.card
        raise UserInputError(f"{folder} is not a cxr-audit generator (no {GENERATOR_CARD}). Train one with "
                             "`cxr-audit train-generator`.")
    card = GeneratorCard(**json.loads(card_path.read_text()))
    for relative, expected in card.weights_sha256.items():
        actual = sha256_file(folder / relative)
        if actual != expected:
            raise UserInputError(f"{folder / relative} has SHA-256 {actual[:16]}..., but the generator card pins "
                                 f"{expected[:16]}...: the weights were changed or corrupted. Retrain or restore them.")
    model = ConceptConditionedUNet([concepts.resolve(c) for c in card.concepts], card.image_size,
                                   tuple(card.block_out_channels), card.layers_per_block, card.inpainting,
                                   card.prediction_type)
    model.unet = UNet2DModel.from_pretrained(folder / "unet", local_files_only=True)
    state = load_file(str(folder / "concept_encoder.safetensors"))
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    from cxr_audit.models import default_device

    return model.to(device or default_device()).eval(), card


class RegionSampler:
    """Training regions for an inpainting generator: for each image, the edit region of one concept (a
    positive one half of the time when the image has any, so present findings are seen inside their region);
    10% of samples hide the whole image (unconstrained mode). Regions come from label-independent anatomy
    (anatomy.regions_from_anatomy), so their shape never gives the label away.

    One-sided concepts (Effusion, Pneumothorax, ...) hide both sides half of the time and one side, drawn at
    random, otherwise. An insert edits one side, with the other side shown clean; a model that only ever saw
    both sides hidden puts the finding wherever it likes, often on the side that is then thrown away. The
    side is drawn without looking at the label, so it gives nothing away either: with a label of 1 and a
    clean side in view, the finding has to go in the hidden side."""

    SIDES = ("both", "right", "left")

    def __init__(self, anatomies: list[dict[str, np.ndarray]], concept_names: list[str], p_whole: float = 0.1,
                 focus: list[str] | None = None, p_one_side: float = 0.5):
        from cxr_audit.anatomy import region_planes

        self.anatomies = anatomies
        self.concept_names = list(concept_names)
        self.p_whole = p_whole
        self.p_one_side = p_one_side
        # Concepts the plan will edit get most of the training regions: on a CPU budget, the steps go where
        # the edits will be made.
        self.focus = [c for c in (focus or []) if c in self.concept_names]
        self._lateral = {c for c in self.concept_names if concepts.get(c).lateral}
        self._planes = region_planes(self.concept_names, self.SIDES)
        self._plane_index = {plane: i for i, plane in enumerate(self._planes)}
        self._packed: dict[int, np.ndarray] = {}  # image -> bit-packed (planes, S, S) regions

    def _region(self, index: int, concept: str, side: str = "both") -> np.ndarray:
        from cxr_audit.anatomy import binary_edit_masks

        # All regions of an image at once (its anatomy is derived once), bit-packed: 435 images x 32 planes
        # (NIH's 14 concepts, 9 of them with one-sided planes too) at 256 px stay near 115 MB, and a training
        # step costs no anatomy work after the first epoch.
        if index not in self._packed:
            regions = binary_edit_masks(self.concept_names, self.anatomies[index], self.SIDES)
            self._packed[index] = np.packbits(np.stack([regions[plane] for plane in self._planes]), axis=-1)
        size = self.anatomies[index]["lung_right"].shape[1]
        return np.unpackbits(self._packed[index][self._plane_index[concept, side]], axis=-1, count=size)

    def sample(self, indices: np.ndarray, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        size = next(iter(self.anatomies[0].values())).shape
        out = np.zeros((len(indices), 1, *size), np.float32)
        # whole image, focus, positive, concept, one side, which side
        draws = torch.rand(len(indices), 6, generator=generator).numpy()
        for k, index in enumerate(indices):
            if draws[k, 0] < self.p_whole:
                out[k, 0] = 1
                continue
            candidates = self.focus if self.focus and draws[k, 1] < 0.8 else self.concept_names
            positives = [c for j, c in enumerate(self.concept_names) if labels[index, j] == 1 and c in candidates]
            pool = positives if positives and draws[k, 2] < 0.5 else candidates
            concept = pool[min(int(draws[k, 3] * len(pool)), len(pool) - 1)]
            side = "both"
            if concept in self._lateral and draws[k, 4] < self.p_one_side:
                side = "right" if draws[k, 5] < 0.5 else "left"
            out[k, 0] = self._region(int(index), concept, side)
        return torch.from_numpy(out)
