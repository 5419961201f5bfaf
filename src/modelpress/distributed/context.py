"""Which process am I, and how many are there: torchrun's environment turned into a process group.

``torchrun --nproc-per-node N`` starts N copies of a program with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`init_distributed` joins the process
group they describe (gloo on CPU; gloo for CPU tensors and NCCL for CUDA tensors when there is a GPU
for every local rank and ``$MODELPRESS_DEVICE`` does not ask for the CPU), or adopts one the caller
already initialised (tests spawn their own processes).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from modelpress.core.device import DEVICE_ENV, cpu_requested
from modelpress.core.errors import ConfigError

_TORCHRUN_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group.

    Args:
        rank: 0 .. world_size - 1; rank 0 alone writes files and progress.
        world_size: number of processes (>= 2).
        local_rank: index on this machine (selects the GPU).
        backend: the process group's backend string, e.g. ``gloo``.
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 when not launched by torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer; got {raw!r}") from None


def init_distributed() -> DistContext | None:
    """Join (or adopt) the process group; ``None`` when this is the only process.

    Returns:
        A :class:`DistContext` when a process group of two or more ranks is initialised (by the
        caller, or here from torchrun's environment variables), else ``None``.

    Raises:
        ConfigError: ``WORLD_SIZE`` > 1 but the other variables torchrun sets are missing, or more
            processes on this machine than GPUs (NCCL needs one each) without ``$MODELPRESS_DEVICE=cpu``.
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if launched_world_size() <= 1:
            return None
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: "
                              "launch with torchrun --standalone --nproc-per-node N ...")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available() and not cpu_requested():
            local_world, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
            if local_world > gpus:  # NCCL refuses two ranks on one GPU, and only after every rank has waited
                raise ConfigError(f"torchrun started {local_world} processes on this machine but it has {gpus} GPU(s); "
                                  f"use --nproc-per-node {gpus}, or set {DEVICE_ENV}=cpu to train on the CPU")
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"  # the loop keeps CPU tensors on gloo; a CUDA model uses NCCL
        else:
            backend = "gloo"
        dist.init_process_group(backend=backend)
        # the group lives as long as the process (several train() calls share it); close it on exit
        atexit.register(_destroy)
    if dist.get_world_size() < 2:
        return None
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                       str(dist.get_backend()))


def _destroy() -> None:
    if dist.is_initialized():
        try:
            # gloo may still be delivering this rank's last message; a rank that closed its sockets
            # first would make the others abort with "connection reset by peer"
            dist.barrier()
        finally:
            dist.destroy_process_group()


def current_rank() -> int:
    """This process's rank, 0 when no process group is initialised."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on rank 0 and in a single process: the one that writes files and prints reports."""
    return current_rank() == 0


def on_every_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (the flag itself in one process).

    A rank that stops alone (say, on a non-finite loss) would leave the others waiting in their next
    collective for ever; deciding together lets every rank stop at the same step.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    agreed = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return bool(agreed.item())


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """The mean of each number over all ranks (identical on every rank afterwards).

    Args:
        values: name -> float on this rank; every rank must pass the same names in the same order.

    Returns:
        name -> mean over ranks; the input unchanged when no process group is initialised.
    """
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return dict(values)
    packed = torch.tensor([float(v) for v in values.values()], dtype=torch.float64)  # (K,)
    dist.all_reduce(packed)
    packed /= dist.get_world_size()
    return dict(zip(values, packed.tolist()))
