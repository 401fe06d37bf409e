"""Several processes working as one: a command started by `torchrun` or `accelerate launch` (several GPUs, or
several nodes) runs the same stages on every process.

Started plainly, a command is one process and everything here is a no-op. Under a launcher, the process group
is set up from the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR...) through accelerate: NCCL on
GPUs, gloo on CPUs. The main process (rank 0) decides, reads and writes the run directory; the others share
the work of the stages that split it (fine-tuning, inference) and wait at each stage's end.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from typing import Any


def launched() -> bool:
    """Whether a launcher started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@lru_cache(maxsize=1)
def _state():
    """accelerate's process state (it initialises torch.distributed from the launcher's environment)."""
    import torch
    from accelerate import PartialState

    # cpu=True is what lets accelerate run CPU processes started by torchrun as one job (gloo)
    return PartialState(cpu=not torch.cuda.is_available())


def rank() -> int:
    return _state().process_index if launched() else 0


def world_size() -> int:
    return _state().num_processes if launched() else 1


def is_main() -> bool:
    return rank() == 0


def broadcast(value: Any) -> Any:
    """The main process's `value` (any picklable object), on every process."""
    if not launched():
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def gather(value: Any) -> list[Any]:
    """Every process's `value`, in rank order, on every process."""
    if not launched():
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


def all_reduce_sum(tensor):
    """The element-wise sum of `tensor` over the processes, in place (the tensor is returned)."""
    if launched():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def on_main(work: Callable[[], Any]) -> Any:
    """`work()` on the main process only (what reads and writes the run directory); the others wait. A user
    error it raises is raised on every process, so none is left waiting for a step that will not come.
    Returns `work()`'s result on the main process, None on the others."""
    from cxr_audit.errors import UserInputError

    result, failure = None, None
    if is_main():
        try:
            result = work()
        except UserInputError as error:
            failure = error
    message = broadcast(str(failure) if failure else None)
    if failure is not None:
        raise failure
    if message is not None:
        raise UserInputError(message)
    return result
