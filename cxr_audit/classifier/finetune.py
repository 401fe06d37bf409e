"""Fine-tune a copy of the deployed model on real (+ synthetic) images, with the controls CARS needs.

The deployed model is never changed: a fresh copy is loaded from its file, trained for a fixed budget of
steps with class-balanced sampling, early-stopped on a real-only validation split (mean AUPRC), and saved
serialized with a card that inherits the original's preprocessing: as a safetensors state dict when the original
was weights for a known architecture (the bytes then depend only on the weights), as TorchScript otherwise.
Every `checkpoint_every` steps the state (weights, optimizer, sampler RNG, early-stopping state) goes to the
`Checkpoints` the fine-tune stage gives, so a killed run resumes exactly where it stopped and ends with the
same weights as an uninterrupted one. The stage writes every file.
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from collections import deque
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from cxr_audit import distributed
from cxr_audit.classifier.adapter import LoadedModel
from cxr_audit.classifier.loading import load_model
from cxr_audit.classifier.micro_batches import (
    RunningStatsMerge,
    dropout_seed,
    effective_micro_batches,
    fingerprint_config,
)
from cxr_audit.classifier.small_cnn import masked_bce
from cxr_audit.data.image_rows import ArrayImages, ConcatenatedImages, ImageRows, as_image_rows, read_ahead
from cxr_audit.errors import UserInputError
from cxr_audit.metrics.discrimination import weighted_average_precision
from cxr_audit.progress import progress_bar


@dataclass
class FinetuneConfig:
    steps: int = 300               # the fixed budget: every arm gets the same number of optimizer steps
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    balanced: bool = True          # class-balanced sampling (rare findings drawn more often)
    eval_every: int = 50
    patience: int = 4              # evaluations without validation improvement before stopping
    checkpoint_every: int = 50
    seed: int = 0
    # The global batch is split into this many micro-batches (BatchNorm statistics and dropout per
    # micro-batch); at least one per process. One process with N reproduces N processes.
    micro_batches: int = 1


@dataclass
class TrainingImages:
    """Images in [0, 1] at the model's input size (in memory or rows of the decoded-image store, read a batch
    at a time), their labels (NaN unknown) and whether each is synthetic."""

    images: ImageRows      # (N, 1, S, S) float32 (an array is wrapped)
    labels: np.ndarray     # (N, K) float32
    synthetic: np.ndarray  # (N,) bool

    def __post_init__(self):
        self.images = as_image_rows(self.images)

    @staticmethod
    def real(images: np.ndarray | ImageRows, labels: np.ndarray) -> TrainingImages:
        return TrainingImages(images, labels.astype(np.float32), np.zeros(len(images), bool))

    @staticmethod
    def concatenate(parts: list[TrainingImages]) -> TrainingImages:
        return TrainingImages(ConcatenatedImages([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                              np.concatenate([p.synthetic for p in parts]))


@dataclass
class Checkpoints:
    """Where a fine-tune keeps its resumable state (the stage says where): `load` gives the last saved state
    or None, `save` keeps one (on the main process)."""

    load: Callable[[], dict | None]
    save: Callable[[dict], None]
    where: str = "the checkpoint"  # how messages name it


@dataclass
class Candidate:
    """A fine-tuned copy, serialized: the file's kind ('weights': a safetensors state dict; 'torchscript'), its
    bytes, and its card."""

    kind: str
    content: bytes
    card: object


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Class-balanced weights: an image counts as its rarest positive concept (or as 'no positive')."""
    positive = np.nan_to_num(labels, nan=0.0) == 1
    prevalence = positive.mean(axis=0).clip(1e-3)
    none_share = max(float((~positive.any(axis=1)).mean()), 1e-3)
    weights = np.where(positive, 1.0 / prevalence, 0.0).max(axis=1)
    weights[~positive.any(axis=1)] = 1.0 / none_share
    return weights / weights.sum()


def _trainable_copy(model: LoadedModel) -> LoadedModel:
    if model.module is None:
        raise UserInputError(f"Model {model.path} is {model.format}: fine-tuning needs a PyTorch model "
                             "(TorchScript, torchvision or torchxrayvision weights). The probe works with any model.")
    fresh = load_model(model.path, card=model.card, allow_pickle=model.format == "pickle")
    for parameter in fresh.module.parameters():
        parameter.requires_grad_(True)
    return fresh


def _logits(model: LoadedModel, images: torch.Tensor) -> torch.Tensor:
    out = model.raw_outputs(images)[:, model.output_index].float()
    if model.card.outputs == "probabilities":  # train through the logit of a probability output
        out = torch.logit(out.clamp(1e-6, 1 - 1e-6))
    return out


@torch.no_grad()
def _validation_auprc(model: LoadedModel, images: ImageRows, labels: np.ndarray, batch_size: int,
                      device: torch.device) -> float:
    model.module.eval()
    scores = torch.cat([torch.sigmoid(_logits(model, torch.from_numpy(batch).to(device)))
                        for batch in images.batches(batch_size)]).cpu().numpy()
    values = []
    for j in range(labels.shape[1]):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if 0 < y.sum() < len(y):
            values.append(float(weighted_average_precision(scores[known, j], y)[0]))
    return float(np.mean(values)) if values else float("nan")


def finetune(model: LoadedModel, train: TrainingImages, validation: TrainingImages, config: FinetuneConfig,
             arm: str, inputs_sha256: dict[str, str], checkpoints: Checkpoints,
             progress: bool = True) -> tuple[Candidate | None, dict]:
    """Fine-tune a copy of `model`; returns the candidate (serialized, on the main process; None elsewhere)
    and the record of the fine-tune (finetune.json less the candidate's file, which the stage names).

    Runs through `accelerate`: one process on the CPU or GPU when started plainly; data-parallel (DDP) over
    GPUs and nodes under `torchrun` or `accelerate launch`, bf16 autocast on GPUs. The global batch is split
    into micro-batches so that N processes give the weights of one process run with `micro_batches = N`
    (classifier/micro_batches.py). The main process validates, checkpoints and serializes the candidate."""
    # 1. Processes, the trainable copy, its optimizer and sampler, resumed from the last checkpoint.
    run = _TrainingRun.prepare(model, train, validation, config, inputs_sha256, checkpoints)
    # 2. The step loop, with evaluation, early stopping and checkpoints.
    started = time.monotonic()
    stopped_early = run.loop(config, arm, progress)
    # 3. The best weights, serialized by the main process.
    run.accelerator.wait_for_everyone()
    run.net.load_state_dict(run.best_weights)
    run.net.eval()
    state = run.state
    record = {
        "arm": arm, "inputs_sha256": inputs_sha256, "config": asdict(config),
        "base_model": {"path": model.path.name, "sha256": model.sha256, "format": model.format},
        "training_images": {"real": int((~train.synthetic).sum()), "synthetic": int(train.synthetic.sum())},
        "validation_images": len(validation.labels),
        "steps_run": state["step"], "best_step": state["best_step"], "stopped_early": stopped_early,
        "best_val_mean_auprc": round(state["best_score"], 6), "history": state["history"],
        "device": run.device.type, "processes": run.world, "micro_batches": run.micro,
        "seconds_this_call": round(time.monotonic() - started, 1),
        "note": "thresholds are re-derived on the validation split (the fine-tune changes calibration)",
    }
    candidate = _serialize_candidate(run.candidate, run.device) if run.main else None
    return candidate, record


class _TrainingRun:
    """The state of one fine-tune across its steps (what a checkpoint holds, and what it is made with)."""

    @classmethod
    def prepare(cls, model: LoadedModel, train: TrainingImages, validation: TrainingImages, config: FinetuneConfig,
                inputs_sha256: dict[str, str], checkpoints: Checkpoints) -> _TrainingRun:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self = cls()
        on_gpu = torch.cuda.is_available()
        # Buffers are not broadcast from rank 0 each forward: RunningStatsMerge makes them equal after each step.
        self.accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", cpu=not on_gpu,
                                       kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        accelerator = self.accelerator
        self.device, self.world, self.rank = accelerator.device, accelerator.num_processes, accelerator.process_index
        self.main = accelerator.is_main_process
        self.micro = effective_micro_batches(config.micro_batches, config.batch_size, self.world)
        self.per_process, self.micro_size = self.micro // self.world, config.batch_size // self.micro
        self.checkpoints, self.validation = checkpoints, validation
        self.candidate = _trainable_copy(model).to(self.device)
        # Seeded after the copy is built: building a state-dict model draws random initial weights, and the
        # dropout masks must not depend on how the model's weights were stored.
        torch.manual_seed(config.seed)
        self.net = self.candidate.module
        self.optimizer = torch.optim.AdamW([p for p in self.net.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.sampler = torch.Generator().manual_seed(config.seed)  # the same global batches on every process
        self.sampler_state = self.sampler.get_state()  # as of the last step taken (batches are drawn ahead)
        self.weights = torch.tensor(sample_weights(train.labels) if config.balanced
                                    else np.full(len(train.labels), 1 / len(train.labels)))
        # read a batch at a time: from the decoded-image store, the training set never is in memory
        self.x_train = train.images
        self.y_train = torch.tensor(train.labels)
        self.state = {"step": 0, "best_score": -1.0, "best_step": 0, "bad_evaluations": 0, "history": []}
        self.best_weights = copy.deepcopy(self.net.state_dict())
        self.fingerprint = json.dumps({"config": fingerprint_config(config, self.world), "inputs": inputs_sha256},
                                      sort_keys=True)
        self._resume()
        with warnings.catch_warnings():  # torch renamed the option accelerate passes; its meaning is unchanged
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.* is deprecated", category=FutureWarning)
            self.trained, self.optimizer = accelerator.prepare(self.net, self.optimizer)
        # the DDP-wrapped network behind the model's preprocessing
        view = copy.copy(self.candidate.backend)
        view.module = self.trained
        self.training_view = replace(self.candidate, backend=view)
        self.running_stats = RunningStatsMerge(self.net, self.per_process) if self.world > 1 else None
        return self

    def _resume(self) -> None:
        saved = self.checkpoints.load()
        if saved is None:
            return
        if saved["fingerprint"] != self.fingerprint:
            raise UserInputError(f"{self.checkpoints.where} belongs to a fine-tune with other settings, inputs or "
                                 "number of processes (micro-batches). Resume with the same ones, delete it, or "
                                 "choose another output folder.")
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.sampler.set_state(saved["sampler"])
        self.sampler_state = saved["sampler"]
        torch.set_rng_state(saved["torch_rng"])  # dropout masks continue as if never interrupted
        self.best_weights = saved["best_model"]
        self.state = json.loads(saved["state"])

    def loop(self, config: FinetuneConfig, arm: str, progress: bool) -> bool:
        """Train to the step budget or an early stop; returns whether it stopped early."""
        state = self.state
        bar = progress_bar(total=config.steps, initial=state["step"], desc=f"fine-tuning ({arm})", unit="step",
                           disable=not (progress and self.main))
        stopped_early = False
        batches = read_ahead(self.x_train, self._draws(config))
        while state["step"] < config.steps:
            images = next(batches)  # read first: it draws the batch (and any read ahead)
            step_loss = self.step(config, *self._drawn.popleft(), images)
            state["step"] += 1
            bar.update()
            if state["step"] % config.eval_every == 0 or state["step"] == config.steps:
                stopped_early = self.evaluate(config, step_loss, bar)
            if self.main and (state["step"] % config.checkpoint_every == 0 or stopped_early):
                self.checkpoints.save(self.checkpoint())
            if stopped_early:
                break
        batches.close()
        bar.close()
        return stopped_early

    def _draws(self, config: FinetuneConfig):
        """This process's rows of each global batch, drawn in step order from the sampler. The images are read
        ahead of the step that uses them, so the draws are kept (with the sampler's state after each) until
        their step takes them: a checkpoint then holds the state of the last step taken, not of the last read."""
        self._drawn: deque[tuple] = deque()
        mine = slice(self.rank * self.per_process * self.micro_size, (self.rank + 1) * self.per_process * self.micro_size)
        while True:
            batch = torch.multinomial(self.weights, config.batch_size, replacement=True, generator=self.sampler)
            gain = 0.9 + 0.2 * torch.rand(len(batch), 1, 1, 1, generator=self.sampler)  # exposure jitter
            self._drawn.append((batch, gain, self.sampler.get_state()))
            yield batch[mine].numpy()

    def step(self, config: FinetuneConfig, batch: torch.Tensor, gain: torch.Tensor, sampler_state: torch.Tensor,
             images: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one global batch (`images`: this process's rows of it), this process's
        micro-batches of it; returns its loss share."""
        self.trained.train()
        self.sampler_state = sampler_state
        known = int((~torch.isnan(self.y_train[batch])).sum())
        if self.running_stats:
            self.running_stats.snapshot()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        first, last = self.rank * self.per_process, (self.rank + 1) * self.per_process - 1
        for k in range(first, last + 1):
            part = slice(k * self.micro_size, (k + 1) * self.micro_size)
            local = slice((k - first) * self.micro_size, (k - first + 1) * self.micro_size)
            x = (images[local] * gain[part]).clamp(0, 1).to(self.device)
            y = self.y_train[batch[part]].to(self.device)
            if self.micro > 1:  # the micro-batch's dropout masks, whichever process runs it
                torch.manual_seed(dropout_seed(config.seed, self.state["step"], k, self.micro))
            with self.accelerator.autocast(), (nullcontext() if k == last else self.accelerator.no_sync(self.trained)):
                # DDP averages gradients over processes: scaled by `world`, the sum over micro-batches is the
                # global batch's mean-loss gradient
                loss = masked_bce(_logits(self.training_view, x), y, reduction="sum") * (self.world / max(known, 1))
                self.accelerator.backward(loss)
            step_loss += loss.detach().float() / self.world
        self.optimizer.step()
        if self.running_stats:
            self.running_stats.merge()
        return step_loss

    def evaluate(self, config: FinetuneConfig, step_loss: torch.Tensor, bar) -> bool:
        """Validation AUPRC on the main process, its early-stopping decision shared; returns whether to stop."""
        state = self.state
        score = _validation_auprc(self.candidate, self.validation.images, self.validation.labels,
                                  config.batch_size * 2, self.device) if self.main else None
        score = distributed.broadcast(score)  # every process takes the main process's early-stopping decision
        state["history"].append({"step": state["step"], "loss": round(distributed.all_reduce_sum(step_loss).item(), 6),
                                 "val_mean_auprc": round(score, 6)})
        bar.set_postfix(val_auprc=f"{score:.3f}")
        if score > state["best_score"]:
            state.update(best_score=score, best_step=state["step"], bad_evaluations=0)
            self.best_weights = copy.deepcopy(self.net.state_dict())
            return False
        state["bad_evaluations"] += 1
        return state["bad_evaluations"] >= config.patience

    def checkpoint(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler_state, "torch_rng": torch.get_rng_state(),
                "best_model": self.best_weights, "state": json.dumps(self.state), "fingerprint": self.fingerprint}


def _serialize_candidate(candidate: LoadedModel, device: torch.device) -> Candidate:
    """The fine-tuned network in its base model's format.

    Weights for a known architecture (torchvision, torchxrayvision, the project's small CNN) are saved as a
    safetensors state dict, whose bytes depend only on the weights. TorchScript and pickled models are saved
    as TorchScript: a scripted module as it is, an eager one scripted, else traced."""
    from safetensors.torch import save

    net = candidate.module.to("cpu").eval()
    card = candidate.card.model_copy(update={"thresholds": {}, "training": None})  # finetune.json says how
    if candidate.backend.saves_weights:
        weights = {name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}
        content = save(weights)
        net.to(device)
        return Candidate("weights", content, card.model_copy(update={"format": candidate.format}))
    size = candidate.card.input_size
    channels = 3 if candidate.card.channels == 3 or candidate.card.normalization == "imagenet" else 1
    if not isinstance(net, torch.jit.ScriptModule):
        try:
            net = torch.jit.script(net)
        except Exception:  # noqa: BLE001 - some torchvision models only trace
            with torch.no_grad():
                net = torch.jit.trace(net, torch.zeros(1, channels, size, size), check_trace=False)
    buffer = io.BytesIO()
    torch.jit.save(net, buffer)
    net.to(device)
    return Candidate("torchscript", buffer.getvalue(),
                     card.model_copy(update={"format": "torchscript", "architecture": None}))


def synthetic_training_images(frame, images: np.ndarray, concepts: list[str], size: int) -> TrainingImages:
    """Accepted synthetic images (`frame`: the synthetic manifest's rows, `images`: theirs, (N, S, S)); concepts
    the edit's target vector does not name are unknown (NaN), never assumed negative."""
    if not len(frame):
        return TrainingImages(ArrayImages(np.zeros((0, 1, size, size), np.float32)),
                              np.zeros((0, len(concepts)), np.float32), np.zeros(0, bool))
    labels = np.stack([frame[c].to_numpy(np.float32) if c in frame else np.full(len(frame), np.nan, np.float32)
                       for c in concepts], axis=1)
    return TrainingImages(ArrayImages(images[:, None].astype(np.float32)), labels, np.ones(len(frame), bool))
