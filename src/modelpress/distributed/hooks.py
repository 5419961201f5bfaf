"""DDP communication hooks that count what they send: plain allreduce, TernGrad and PowerSGD.

"Bytes sent" is the payload one rank hands to the collectives for one optimiser step: ``4 n`` for a
fp32 allreduce of ``n`` gradients, the packed codes and scales for TernGrad, and PowerSGD's ``P`` and
``Q`` factors plus the tensors it leaves uncompressed. With two ranks this is also what a ring
algorithm puts on the wire per rank (an allreduce sends ``2 (W-1)/W`` times its payload, an
all-gather ``W - 1`` times it), so the ratios to allreduce are the compression ratios.
"""

# no `from __future__ import annotations`: DDP checks the hooks' annotations as real types
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel

from modelpress.core.errors import ConfigError
from modelpress.distributed.terngrad import TernGradState, terngrad_hook

COMPRESSIONS = ("terngrad", "powersgd")


@dataclass
class CommStats:
    """Running count of gradient bytes one rank sent, and of the steps they were sent in."""

    bytes_sent: int = 0
    steps: int = 0

    def add(self, nbytes: int, *, last_bucket: bool) -> None:
        """Count one bucket's payload; the step ends with the last bucket."""
        self.bytes_sent += int(nbytes)
        self.steps += int(last_bucket)

    @property
    def bytes_per_step(self) -> float:
        return self.bytes_sent / max(self.steps, 1)

    def reset(self) -> None:
        self.bytes_sent, self.steps = 0, 0


class _AllreduceState:
    def __init__(self, process_group, stats: CommStats) -> None:
        self.process_group, self.stats = process_group, stats


def allreduce_counting_hook(state: _AllreduceState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP's default behaviour (mean of the fp32 buckets by allreduce), counting ``4 n`` bytes per bucket."""
    buffer = bucket.buffer()
    state.stats.add(buffer.numel() * buffer.element_size(), last_bucket=bucket.is_last())
    return default_hooks.allreduce_hook(state.process_group, bucket)


class _PowerSGDCounting:
    def __init__(self, inner: PowerSGDState, stats: CommStats) -> None:
        self.inner, self.stats = inner, stats


def powersgd_counting_hook(state: _PowerSGDCounting, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """PyTorch's PowerSGD hook; the bytes are read from its own running element count, so they
    follow its rule for which tensors are worth compressing (vectors and thin matrices are not)."""
    inner, buffer = state.inner, bucket.buffer()
    plain = inner.iter < inner.start_powerSGD_iter  # PowerSGD allreduces plainly until start_powerSGD_iter
    before = inner.total_numel_after_compression
    fut = powerSGD_hook(inner, bucket)
    numel = buffer.numel() if plain else inner.total_numel_after_compression - before
    state.stats.add(numel * buffer.element_size(), last_bucket=bucket.is_last())
    if buffer.device.type == "cpu":
        # PowerSGD issues its P and Q allreduces from gloo's callback threads; the next bucket's hook,
        # on the autograd thread, could then interleave its own collectives in a different order on
        # each rank (gloo aborts: "collective mismatch"). Finishing each bucket first keeps the order.
        fut.wait()
    return fut


def register_compression(ddp: DistributedDataParallel, method: str | None, stats: CommStats, *, seed: int = 0,
                         powersgd_rank: int = 1, powersgd_start_iter: int = 10,
                         terngrad_clip: float | None = 2.5) -> object:
    """Register the gradient-averaging hook ``method`` on ``ddp``, counting bytes into ``stats``.

    Args:
        ddp: a freshly built DistributedDataParallel (no step taken yet).
        method: ``None`` (fp32 allreduce, DDP's default), ``"terngrad"`` or ``"powersgd"``.
        stats: receives the bytes each step sends.
        seed: seeds TernGrad's Bernoulli draws and PowerSGD's random projections.
        powersgd_rank: PowerSGD's matrix approximation rank.
        powersgd_start_iter: plain allreduce steps before PowerSGD (>= 2).
        terngrad_clip: TernGrad's clipping in standard deviations, or ``None``.

    Returns:
        The hook's state object (PowerSGD's keeps its error feedback and warm-start factors).

    Raises:
        ConfigError: an unknown method.
    """
    method = getattr(method, "value", method)
    group = ddp.process_group
    if method is None:
        state: object = _AllreduceState(group, stats)
        ddp.register_comm_hook(state, allreduce_counting_hook)
    elif method == "terngrad":
        state = TernGradState(group, clip=terngrad_clip, seed=seed, stats=stats)
        ddp.register_comm_hook(state, terngrad_hook)
    elif method == "powersgd":
        inner = PowerSGDState(process_group=group, matrix_approximation_rank=powersgd_rank,
                              start_powerSGD_iter=powersgd_start_iter, random_seed=seed)
        state = _PowerSGDCounting(inner, stats)
        ddp.register_comm_hook(state, powersgd_counting_hook)
    else:
        raise ConfigError(f"grad_compression must be one of {', '.join(COMPRESSIONS)} or None; got {method!r}")
    return state
