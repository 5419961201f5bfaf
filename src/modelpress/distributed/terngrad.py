"""TernGrad: stochastic ternary gradients for data-parallel training, as a DDP communication hook.

Wen, Xu, Yan, Wu, Wang, Chen & Li (2017), "TernGrad: Ternary Gradients to Reduce Communication in
Distributed Deep Learning". Each layer's gradient ``g`` is sent as a scale and one of {-1, 0, +1} per
element::

    s = max|g|,   g~ = s * sign(g) * b,   b ~ Bernoulli(|g| / s)   (element-wise, independent)

so ``E[g~] = g`` (unbiased). The paper's gradient clipping first limits ``g`` to ``c`` standard
deviations (c = 2.5), which lowers ``s`` and the variance at the price of a small bias.

The codes travel packed four to a byte (2 bits each), so a bucket of ``n`` fp32 gradients costs
``ceil(n / 4)`` bytes plus 4 bytes per layer instead of ``4 n``: about 1/16. Every rank all-gathers
every rank's packed bytes and averages the decoded gradients; the pure functions here (ternarize,
pack, unpack, dequantize) are tested without a process group.
"""

# no `from __future__ import annotations`: DDP checks the hooks' annotations as real types
from typing import Sequence

import torch
import torch.distributed as dist

from modelpress.core.errors import ShapeError

_SHIFTS = (0, 2, 4, 6)  # four 2-bit codes per byte


def ternarize(g: torch.Tensor, sizes: Sequence[int], clip: float | None = 2.5,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastically ternarize a flat gradient, one scale per layer segment.

    Args:
        g: flat gradient ``(n,)``, the layers' gradients one after the other.
        sizes: element counts of the layers, summing to ``n``.
        clip: clip each layer to ``[-clip * sigma, clip * sigma]`` before ternarizing, as Wen et al. do
            (sigma: the layer's root-mean-square gradient, its standard deviation under their
            zero-mean model); ``None`` keeps it unbiased.
        generator: random source of the Bernoulli draws (on ``g``'s device).

    Returns:
        ``(scales, codes)``: float32 ``(L,)`` per-layer ``s = max|g|`` (after clipping) and int8
        ``(n,)`` codes in {-1, 0, 1}; ``dequantize(scales, codes, sizes)`` has expectation ``g``
        (of the clipped ``g`` when ``clip`` is set).

    Raises:
        ShapeError: ``sizes`` do not add up to ``g``'s length.
    """
    if g.dim() != 1 or sum(sizes) != g.numel():
        raise ShapeError(f"ternarize needs a flat gradient whose layer sizes add up to its length; "
                         f"got shape {tuple(g.shape)} and sizes summing to {sum(sizes)}")
    g = g.float()
    scales, parts = [], []
    for seg in g.split(list(sizes)):  # (n_l,) each
        if clip is not None and seg.numel() > 1:
            # sigma about zero, as the paper's zero-mean Gaussian model has it: a layer whose gradient is
            # all one value (standard deviation 0) must not be clipped away
            bound = clip * seg.square().mean().sqrt()
            seg = seg.clamp(-bound, bound)
        s = seg.abs().max() if seg.numel() else seg.new_zeros(())
        scales.append(s)
        parts.append(seg.abs() / s if s > 0 else torch.zeros_like(seg))  # (n_l,) probability of a nonzero code
    prob = torch.cat(parts) if parts else g.new_zeros(0)  # (n,)
    keep = torch.rand(prob.shape, generator=generator, device=g.device, dtype=prob.dtype) < prob  # (n,) b
    # sign() of a clipped g equals sign() of g, so the codes need no second pass over the clipped copy
    codes = (torch.sign(g) * keep).to(torch.int8)  # (n,) in {-1, 0, 1}
    return torch.stack(scales) if scales else g.new_zeros(0), codes


def dequantize(scales: torch.Tensor, codes: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``g~ = s_l * code``: the flat float32 gradient ``(n,)`` that ``(scales, codes)`` stand for."""
    counts = torch.tensor(list(sizes), device=codes.device)
    return scales.float().repeat_interleave(counts) * codes.float()  # (n,)


def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Pack int8 codes in {-1, 0, 1} ``(n,)`` into uint8 ``(ceil(n / 4),)``, 2 bits each (0, +1 -> 1, -1 -> 2)."""
    u = torch.where(codes < 0, 2, codes.to(torch.int16)).to(torch.uint8)  # (n,) in {0, 1, 2}
    pad = (-u.numel()) % 4
    if pad:
        u = torch.cat([u, u.new_zeros(pad)])
    u = u.view(-1, 4)  # (ceil(n/4), 4)
    return u[:, 0] | (u[:, 1] << 2) | (u[:, 2] << 4) | (u[:, 3] << 6)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: uint8 ``(ceil(n / 4),)`` -> int8 codes ``(n,)`` in {-1, 0, 1}."""
    if packed.numel() * 4 < n:
        raise ShapeError(f"{packed.numel()} packed bytes hold at most {packed.numel() * 4} codes; asked for {n}")
    shifts = torch.tensor(_SHIFTS, dtype=torch.uint8, device=packed.device)
    u = ((packed.unsqueeze(1) >> shifts) & 3).reshape(-1)[:n]  # (n,) in {0, 1, 2}
    return torch.where(u == 2, -1, u.to(torch.int16)).to(torch.int8)


def encoded_bytes(sizes: Sequence[int]) -> int:
    """Bytes one rank sends for a bucket of these layers: 4 per scale plus the packed codes."""
    return 4 * len(sizes) + (sum(sizes) + 3) // 4


class TernGradState:
    """What the hook keeps between calls.

    Args:
        process_group: the group to average over (``None``: the default group).
        clip: Wen et al.'s clipping in standard deviations, or ``None``.
        seed: seeds the Bernoulli draws; each rank offsets it by its rank so draws are independent.
        stats: a :class:`~modelpress.distributed.hooks.CommStats` counting the bytes sent, or ``None``.
    """

    def __init__(self, process_group=None, clip: float | None = 2.5, seed: int = 0, stats=None) -> None:
        self.process_group = process_group
        self.clip = clip
        self.seed = seed
        self.stats = stats
        self.generator: torch.Generator | None = None


def terngrad_hook(state: TernGradState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average the ranks' ternarized gradients of one bucket.

    Each rank sends ``[scales as bytes | packed codes]`` (uint8, :func:`encoded_bytes`) by all-gather
    and decodes everyone's; the mean of the ``W`` decoded gradients replaces the bucket.

    Example:
        >>> ddp.register_comm_hook(TernGradState(clip=2.5), terngrad_hook)
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world = dist.get_world_size(group)
    flat = bucket.buffer()  # (n,) the bucket's gradients, layer after layer
    sizes = [t.numel() for t in bucket.gradients()]
    if sum(sizes) != flat.numel():  # a layout with gaps: treat the bucket as one layer
        sizes = [flat.numel()]
    if state.generator is None or state.generator.device != flat.device:
        state.generator = torch.Generator(device=flat.device).manual_seed(state.seed * 1_000_003 + dist.get_rank(group))
    scales, codes = ternarize(flat, sizes, state.clip, state.generator)
    payload = torch.cat([scales.float().contiguous().view(torch.uint8), pack_ternary(codes)])  # (4L + ceil(n/4),)
    if state.stats is not None:
        state.stats.add(payload.numel(), last_bucket=bucket.is_last())
    gathered = [torch.empty_like(payload) for _ in range(world)]
    fut = dist.all_gather(gathered, payload, group=group, async_op=True).get_future()
    n_scale_bytes = 4 * len(sizes)

    def average(_fut) -> torch.Tensor:
        total = torch.zeros(flat.numel(), dtype=torch.float32, device=flat.device)  # (n,)
        for buf in gathered:
            rank_scales = buf[:n_scale_bytes].view(torch.float32)  # (L,)
            total += dequantize(rank_scales, unpack_ternary(buf[n_scale_bytes:], flat.numel()), sizes)
        return (total / world).to(flat.dtype)

    return fut.then(average)
