"""What makes a fine-tune on N processes give the weights of a one-process run: the global batch is split into
micro-batches, and everything a micro-batch's forward pass depends on is fixed by the micro-batch itself,
not by the process that happens to run it.

- The global batch (indices, exposure gains) is drawn by every process from the same seeded generator;
  process r runs micro-batches r*L .. r*L+L-1 (L = micro-batches per process).
- Loss: a micro-batch contributes its summed cross-entropy divided by the known labels of the *global*
  batch, so the micro-batches' gradients add up to the global batch's mean-loss gradient.
- Dropout: each micro-batch seeds the random stream from (seed, step, micro-batch index).
- BatchNorm: statistics are per micro-batch in the forward pass, as with gradient accumulation on one
  process. The running averages are merged after each step into exactly what one process updating them
  micro-batch after micro-batch would hold (SyncBatchNorm would use global-batch statistics instead, and it
  does not run on CPUs).

A one-process run with `micro_batches = N` therefore reproduces an N-process run (within float rounding of
the gradient all-reduce); `micro_batches = 1` is the plain single-batch step.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from cxr_audit import distributed
from cxr_audit.errors import UserInputError


def effective_micro_batches(requested: int, batch_size: int, world: int) -> int:
    """Micro-batches per global batch: at least one per process, a multiple of the process count, and a
    divisor of the batch size."""
    count = max(requested, world)
    if count % world or batch_size % count:
        raise UserInputError(f"The fine-tune batch ({batch_size}) must split into {count} equal micro-batches, a "
                             f"multiple of the {world} processes: change --batch-size or --micro-batches.")
    return count


def fingerprint_config(config, world: int) -> dict:
    """A fine-tune's settings as they decide its weights: the micro-batches actually used (a one-process run
    with N reproduces N processes), named only when there are several, as before micro-batches existed."""
    settings = asdict(config)
    settings.pop("micro_batches")
    count = effective_micro_batches(config.micro_batches, config.batch_size, world)
    return settings if count == 1 else {**settings, "micro_batches": count}


def dropout_seed(seed: int, step: int, micro_batch: int, count: int) -> int:
    return (seed * 1_000_003 + step * count + micro_batch) % 2**63


def _batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class RunningStatsMerge:
    """Merges BatchNorm running averages over processes after a step (see the module's docstring).

    With momentum m, one process updating after micro-batches 0..M-1 holds
    (1-m)^M r0 + sum_k (1-m)^(M-1-k) m s_k. Process p ran micro-batches pL..pL+L-1 from r0 and holds
    r_p = (1-m)^L r0 + sum_j (1-m)^(L-1-j) m s_(pL+j), so the one-process value is
    (1-m)^M r0 + sum_p (1-m)^((W-1-p) L) (r_p - (1-m)^L r0): one all-reduce of each process's term."""

    def __init__(self, net: nn.Module, per_process: int):
        self.layers = _batchnorms(net)
        self.per_process = per_process
        for layer in self.layers:
            if layer.momentum is None:
                raise UserInputError("The model has BatchNorm with a cumulative running average (momentum=None); "
                                     "fine-tuning it on several processes is not supported: run one process.")
        self.before: list[tuple[torch.Tensor, torch.Tensor]] = []

    def snapshot(self) -> None:
        self.before = [(b.running_mean.detach().clone(), b.running_var.detach().clone()) for b in self.layers]

    @torch.no_grad()
    def merge(self) -> None:
        world, rank, per_process = distributed.world_size(), distributed.rank(), self.per_process
        for layer, (mean0, var0) in zip(self.layers, self.before):
            keep = 1.0 - layer.momentum
            for buffer, start in ((layer.running_mean, mean0), (layer.running_var, var0)):
                term = (buffer - keep ** per_process * start) * keep ** ((world - 1 - rank) * per_process)
                distributed.all_reduce_sum(term)
                buffer.copy_(keep ** (per_process * world) * start + term)
            # every process counted its own micro-batches: the one-process count is all of them
            layer.num_batches_tracked += per_process * (world - 1)
