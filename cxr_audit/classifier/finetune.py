"""Fine-tune a copy of the deployed model on real (+ synthetic) images, with the controls CARS needs.

The deployed model is never changed: a fresh copy is loaded from its file, trained for a fixed budget of
steps with class-balanced sampling, early-stopped on a real-only validation split (mean AUPRC), and saved
beside a card that inherits the original's preprocessing: as a safetensors state dict when the original was
weights for a known architecture (the bytes then depend only on the weights), as TorchScript otherwise. Every `checkpoint_every` steps the
state (weights, optimizer, sampler RNG, early-stopping state) goes to `checkpoint.pt`, so a killed run
resumes exactly where it stopped and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import io
import json
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

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
from cxr_audit.errors import UserInputError
from cxr_audit.metrics.discrimination import weighted_average_precision
from cxr_audit.progress import progress_bar
from cxr_audit.provenance import atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file


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
    """Images in [0, 1] at the model's input size, their labels (NaN unknown) and whether each is synthetic."""

    images: np.ndarray     # (N, 1, S, S) float32
    labels: np.ndarray     # (N, K) float32
    synthetic: np.ndarray  # (N,) bool

    @staticmethod
    def real(images: np.ndarray, labels: np.ndarray) -> TrainingImages:
        return TrainingImages(images, labels.astype(np.float32), np.zeros(len(images), bool))

    @staticmethod
    def concatenate(parts: list[TrainingImages]) -> TrainingImages:
        return TrainingImages(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                              np.concatenate([p.synthetic for p in parts]))


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
def _validation_auprc(model: LoadedModel, images: torch.Tensor, labels: np.ndarray, batch_size: int) -> float:
    model.module.eval()
    scores = torch.cat([torch.sigmoid(_logits(model, images[i:i + batch_size]))
                        for i in range(0, len(images), batch_size)]).cpu().numpy()
    values = []
    for j in range(labels.shape[1]):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if 0 < y.sum() < len(y):
            values.append(float(weighted_average_precision(scores[known, j], y)[0]))
    return float(np.mean(values)) if values else float("nan")


def finetune(model: LoadedModel, train: TrainingImages, validation: TrainingImages, layout,
             config: FinetuneConfig, arm: str, inputs_sha256: dict[str, str], progress: bool = True,
             stop_after: int | None = None) -> dict:
    """Fine-tune a copy of `model` into `layout` (a rundir.FinetuneLayout); returns the record written to
    its finetune.json.

    Runs through `accelerate`: one process on the CPU or GPU when started plainly; data-parallel (DDP) over
    GPUs and nodes under `torchrun` or `accelerate launch`, bf16 autocast on GPUs. The global batch is split
    into micro-batches so that N processes give the weights of one process run with `micro_batches = N`
    (classifier/micro_batches.py). The main process validates, checkpoints and saves.

    `stop_after` ends the call after that many steps in this call, leaving the checkpoint (used by tests to
    stand in for a killed process)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    on_gpu = torch.cuda.is_available()
    # Buffers are not broadcast from rank 0 each forward: RunningStatsMerge makes them equal after each step.
    accelerator = Accelerator(mixed_precision="bf16" if on_gpu else "no", cpu=not on_gpu,
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    micro = effective_micro_batches(config.micro_batches, config.batch_size, world)
    per_process, micro_size = micro // world, config.batch_size // micro
    if main:
        layout.folder.mkdir(parents=True, exist_ok=True)
    candidate = _trainable_copy(model).to(device)
    # Seeded after the copy is built: building a state-dict model draws random initial weights, and the dropout
    # masks must not depend on how the model's weights were stored.
    torch.manual_seed(config.seed)
    net = candidate.module
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    sampler = torch.Generator().manual_seed(config.seed)  # the same global batches on every process
    weights = torch.tensor(sample_weights(train.labels) if config.balanced else np.full(len(train.labels),
                                                                                          1 / len(train.labels)))
    # shared with the array, not copied: the training images are the fine-tune's largest memory (only batches
    # are read from them, never written)
    x_train = torch.from_numpy(np.require(train.images, np.float32, ["C", "W"]))
    y_train = torch.tensor(train.labels)
    x_val = torch.tensor(validation.images).to(device) if main else None
    state = {"step": 0, "best_score": -1.0, "best_step": 0, "bad_evaluations": 0, "history": []}
    best_weights = copy.deepcopy(net.state_dict())
    checkpoint = layout.checkpoint
    fingerprint = json.dumps({"config": fingerprint_config(config, world), "inputs": inputs_sha256}, sort_keys=True)
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu" if device.type == "cpu" else device, weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise UserInputError(f"{checkpoint} belongs to a fine-tune with other settings, inputs or number of "
                                 "processes (micro-batches). Resume with the same ones, delete it, or choose "
                                 "another output folder.")
        net.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.set_state(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])  # dropout masks continue as if never interrupted
        best_weights = saved["best_model"]
        state = json.loads(saved["state"])
    with warnings.catch_warnings():  # torch renamed the option accelerate passes; its meaning here is unchanged
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.* is deprecated", category=FutureWarning)
        trained, optimizer = accelerator.prepare(net, optimizer)
    training_view = replace(candidate, module=trained)  # the DDP-wrapped network behind the model's preprocessing
    running_stats = RunningStatsMerge(net, per_process) if world > 1 else None
    started = time.monotonic()
    bar = progress_bar(total=config.steps, initial=state["step"], desc=f"fine-tuning ({arm})", unit="step",
                       disable=not (progress and main))
    steps_this_call = 0
    stopped_early = False
    while state["step"] < config.steps:
        trained.train()
        batch = torch.multinomial(weights, config.batch_size, replacement=True, generator=sampler)
        gain = 0.9 + 0.2 * torch.rand(len(batch), 1, 1, 1, generator=sampler)  # exposure jitter, as in training
        known = int((~torch.isnan(y_train[batch])).sum())
        if running_stats:
            running_stats.snapshot()
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for k in range(rank * per_process, (rank + 1) * per_process):
            part = slice(k * micro_size, (k + 1) * micro_size)
            x = (x_train[batch[part]] * gain[part]).clamp(0, 1).to(device)
            y = y_train[batch[part]].to(device)
            if micro > 1:  # the micro-batch's dropout masks, whichever process runs it
                torch.manual_seed(dropout_seed(config.seed, state["step"], k, micro))
            last = k == (rank + 1) * per_process - 1
            with accelerator.autocast(), (nullcontext() if last else accelerator.no_sync(trained)):
                # DDP averages gradients over processes: scaled by `world`, the sum over micro-batches is the
                # global batch's mean-loss gradient
                loss = masked_bce(_logits(training_view, x), y, reduction="sum") * (world / max(known, 1))
                accelerator.backward(loss)
            step_loss += loss.detach().float() / world
        optimizer.step()
        if running_stats:
            running_stats.merge()
        state["step"] += 1
        steps_this_call += 1
        bar.update()
        if state["step"] % config.eval_every == 0 or state["step"] == config.steps:
            score = _validation_auprc(candidate, x_val, validation.labels, config.batch_size * 2) if main else None
            score = distributed.broadcast(score)  # every process takes the main process's early-stopping decision
            state["history"].append({"step": state["step"], "loss": round(distributed.all_reduce_sum(step_loss).item(), 6),
                                     "val_mean_auprc": round(score, 6)})
            bar.set_postfix(val_auprc=f"{score:.3f}")
            if score > state["best_score"]:
                state.update(best_score=score, best_step=state["step"], bad_evaluations=0)
                best_weights = copy.deepcopy(net.state_dict())
            else:
                state["bad_evaluations"] += 1
                stopped_early = state["bad_evaluations"] >= config.patience
        interrupted = stop_after is not None and steps_this_call >= stop_after
        if main and (state["step"] % config.checkpoint_every == 0 or stopped_early or interrupted):
            _save_checkpoint(checkpoint, net, optimizer, sampler, best_weights, state, fingerprint)
        if stopped_early or interrupted:
            break
    bar.close()
    accelerator.wait_for_everyone()
    if stop_after is not None and state["step"] < config.steps and not stopped_early:
        return {"interrupted_at_step": state["step"]}
    net.load_state_dict(best_weights)
    net.eval()
    record = {
        "arm": arm, "inputs_sha256": inputs_sha256, "config": asdict(config),
        "base_model": {"path": str(model.path), "sha256": model.sha256, "format": model.format},
        "training_images": {"real": int((~train.synthetic).sum()), "synthetic": int(train.synthetic.sum())},
        "validation_images": len(validation.labels),
        "steps_run": state["step"], "best_step": state["best_step"], "stopped_early": stopped_early,
        "best_val_mean_auprc": round(state["best_score"], 6), "history": state["history"],
        "device": device.type, "processes": world, "micro_batches": micro,
        "seconds_this_call": round(time.monotonic() - started, 1),
        "note": "thresholds are re-derived on the validation split (the fine-tune changes calibration)",
    }
    if main:
        candidate_path, card = _save_candidate(candidate, layout, device)
        atomic_write_text(layout.card_for(candidate_path), yaml.safe_dump(card.model_dump(mode="json"),
                                                                          sort_keys=False))
        record["candidate"] = {"path": candidate_path.name, "sha256": sha256_file(candidate_path)}
        atomic_write_json(layout.record, record)
    accelerator.wait_for_everyone()
    return record


def _save_checkpoint(path: Path, net: nn.Module, optimizer, sampler: torch.Generator, best_weights: dict,
                     state: dict, fingerprint: str) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "sampler": sampler.get_state(),
                "torch_rng": torch.get_rng_state(),
                "best_model": best_weights, "state": json.dumps(state), "fingerprint": fingerprint}, tmp)
    tmp.replace(path)


def _save_candidate(candidate: LoadedModel, layout, device: torch.device):
    """Save the fine-tuned network in its base model's format; returns (path, card).

    Weights for a known architecture (torchvision, torchxrayvision, the project's small CNN) are saved as a
    safetensors state dict, whose bytes depend only on the weights. TorchScript and pickled models are saved
    as TorchScript: a scripted module as it is, an eager one scripted, else traced."""
    from safetensors.torch import save

    net = candidate.module.to("cpu").eval()
    card = candidate.card.model_copy(update={"thresholds": {}, "training": None})  # finetune.json says how
    if candidate.format in ("torchvision", "torchxrayvision"):
        weights = {name: tensor.detach().contiguous() for name, tensor in net.state_dict().items()}
        atomic_write_bytes(layout.candidate_weights, save(weights))
        net.to(device)
        return layout.candidate_weights, card.model_copy(update={"format": candidate.format})
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
    atomic_write_bytes(layout.candidate_torchscript, buffer.getvalue())
    net.to(device)
    return layout.candidate_torchscript, card.model_copy(update={"format": "torchscript", "architecture": None})


def synthetic_training_images(layout, concepts: list[str], size: int) -> TrainingImages:
    """Accepted synthetic images of a synthesize run (a rundir.SynthesisLayout); concepts the edit's target
    vector does not name are unknown (NaN), never assumed negative."""
    import pandas as pd

    from cxr_audit.data.images import load_resized

    if not layout.manifest.exists():
        raise UserInputError(f"{layout.manifest} does not exist: run `cxr-audit synthesize` first.")
    if layout.manifest.stat().st_size < 5:  # nothing accepted: an empty CSV
        return TrainingImages(np.zeros((0, 1, size, size), np.float32), np.zeros((0, len(concepts)), np.float32),
                              np.zeros(0, bool))
    frame = pd.read_csv(layout.manifest)
    images = np.stack([load_resized(layout.manifest_image(p), size) for p in frame["Path"]])[:, None]
    labels = np.stack([frame[c].to_numpy(np.float32) if c in frame else np.full(len(frame), np.nan, np.float32)
                       for c in concepts], axis=1)
    return TrainingImages(images.astype(np.float32), labels, np.ones(len(frame), bool))
