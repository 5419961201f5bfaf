"""Tucker-2 decomposition of a convolution into 1x1 -> kxk -> 1x1 convolutions.

Kim et al. 2016 ("Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications"), the seeds' Tucker student: the kernel ``K`` ``(Cout, Cin, kh, kw)`` is decomposed on its
two channel modes only (the spatial modes are too small to compress),

    K[o, i, h, w] ~ sum_{r, s} U_out[o, r] G[r, s, h, w] U_in[i, s],

with ``U_in`` ``(Cin, R_in)`` and ``U_out`` ``(Cout, R_out)`` the leading left singular vectors of the
mode-1 and mode-0 unfoldings (HOSVD, De Lathauwer et al. 2000) and the core
``G = K x_0 U_out^T x_1 U_in^T`` ``(R_out, R_in, kh, kw)``. The convolution then runs as
``1x1 (Cin -> R_in, weight U_in^T)`` -> ``kxk (R_in -> R_out, weight G, the original stride/padding/
dilation)`` -> ``1x1 (R_out -> Cout, weight U_out, the original bias)``. A 1x1 convolution without bias
commutes with (any mode of) padding, so at full ranks the block is exact. Optional HOOI sweeps
(De Lathauwer et al. 2000, "On the Best Rank-1 and Rank-(R1,...,RN) Approximation of Higher-Order
Tensors") refine ``U_in``/``U_out`` alternately and never increase the reconstruction error.
"""

from __future__ import annotations

import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.models.surgery import replace_module

KIND = "tucker"


def check_standard_conv(conv: nn.Module, what: str) -> nn.Conv2d:
    """Refuse anything but a ``groups == 1`` Conv2d, naming the layer type."""
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
        desc = f"Conv2d with groups={conv.groups}" if isinstance(conv, nn.Conv2d) else type(conv).__name__
        raise ConfigError(f"{what} applies to nn.Conv2d layers with groups == 1; got {desc}")
    return conv


def _pair(ranks) -> tuple[int, int]:
    if isinstance(ranks, int) and not isinstance(ranks, bool):
        return ranks, ranks
    if isinstance(ranks, (tuple, list)) and len(ranks) == 2 and all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        return int(ranks[0]), int(ranks[1])
    raise ConfigError(f"Tucker-2 ranks must be (R_in, R_out) integers; got {ranks!r}")


def _check_ranks(conv: nn.Conv2d, ranks) -> tuple[int, int]:
    check_standard_conv(conv, "Tucker-2 decomposition")
    r_in, r_out = _pair(ranks)
    if not (1 <= r_in <= conv.in_channels and 1 <= r_out <= conv.out_channels):
        raise ConfigError(
            f"Tucker-2 ranks (R_in, R_out) must lie in [1, {conv.in_channels}] x [1, {conv.out_channels}] "
            f"for Conv2d({conv.in_channels}, {conv.out_channels}); got {ranks!r}"
        )
    return r_in, r_out


def mode_spectra(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values of the input-channel and output-channel unfoldings of a ``(Cout, Cin, kh, kw)`` kernel.

    Returns:
        ``(s_in, s_out)``, descending float64 vectors of lengths ``min(Cin, Cout*kh*kw)`` and
        ``min(Cout, Cin*kh*kw)``; an energy threshold on each gives ``(R_in, R_out)``.
    """
    k = kernel.detach().double()
    s_out = torch.linalg.svdvals(k.reshape(k.shape[0], -1))  # mode 0: (Cout, Cin*kh*kw)
    s_in = torch.linalg.svdvals(k.transpose(0, 1).reshape(k.shape[1], -1))  # mode 1: (Cin, Cout*kh*kw)
    return s_in, s_out


def leading_vectors(a: torch.Tensor, r: int) -> torch.Tensor:
    """``(n, r)`` orthonormal leading left singular vectors of ``a`` ``(n, m)``.

    Taken from the eigenvectors of ``a a^T`` so that ``r`` may exceed ``m``: the basis is completed
    to a full orthogonal ``(n, n)`` matrix, which is what makes full ranks exact.
    """
    _, vectors = torch.linalg.eigh(a @ a.T)  # ascending eigenvalues
    return vectors.flip(-1)[:, :r]


def tucker2_factors(kernel: torch.Tensor, ranks: tuple[int, int], iters: int = 0):
    """HOSVD (plus ``iters`` HOOI sweeps) of a kernel on its channel modes.

    Args:
        kernel: ``(Cout, Cin, kh, kw)``.
        ranks: ``(R_in, R_out)``.
        iters: HOOI sweeps after the HOSVD start (0 = plain HOSVD).

    Returns:
        ``(u_in, core, u_out)`` in float64: ``(Cin, R_in)``, ``(R_out, R_in, kh, kw)``, ``(Cout, R_out)``.
    """
    k = kernel.detach().double()
    r_in, r_out = ranks
    cout, cin = k.shape[:2]
    u_in = leading_vectors(k.transpose(0, 1).reshape(cin, -1), r_in)  # (Cin, R_in)
    u_out = leading_vectors(k.reshape(cout, -1), r_out)  # (Cout, R_out)
    for _ in range(iters):
        # each step is the exact best U for the other one fixed, so the fit never gets worse
        proj = torch.einsum("oihw,is->oshw", k, u_in)  # (Cout, R_in, kh, kw)
        u_out = leading_vectors(proj.reshape(cout, -1), r_out)
        proj = torch.einsum("oihw,or->rihw", k, u_out)  # (R_out, Cin, kh, kw)
        u_in = leading_vectors(proj.transpose(0, 1).reshape(cin, -1), r_in)
    core = torch.einsum("oihw,or,is->rshw", k, u_out, u_in)  # (R_out, R_in, kh, kw)
    return u_in, core, u_out


def tucker2_modules(conv: nn.Conv2d, ranks) -> nn.Sequential:
    """The 1x1 -> kxk -> 1x1 shape of a Tucker-2 factorization of ``conv``, weights uninitialised (for replay)."""
    r_in, r_out = _check_ranks(conv, ranks)
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    seq = nn.Sequential(
        nn.Conv2d(conv.in_channels, r_in, 1, bias=False, **factory),  # (B, Cin, H, W) -> (B, R_in, H, W)
        nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  bias=False, padding_mode=conv.padding_mode, **factory),  # -> (B, R_out, Ho, Wo)
        nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None, **factory),  # -> (B, Cout, Ho, Wo)
    )
    seq.factorized_kind = KIND
    return seq


@torch.no_grad()
def tucker2_conv(conv: nn.Conv2d, ranks, iters: int = 0) -> nn.Sequential:
    """Tucker-2 factorization of a convolution (Kim et al. 2016).

    Args:
        conv: ``nn.Conv2d(Cin, Cout, (kh, kw))`` with ``groups == 1``.
        ranks: ``(R_in, R_out)`` (an int means both), ``1 <= R_in <= Cin``, ``1 <= R_out <= Cout``;
            ``(Cin, Cout)`` is exact.
        iters: HOOI sweeps after the HOSVD (0 = HOSVD only).

    Returns:
        ``nn.Sequential(Conv2d(Cin, R_in, 1), Conv2d(R_in, R_out, (kh, kw), stride, padding, dilation),
        Conv2d(R_out, Cout, 1))`` mapping ``(B, Cin, H, W) -> (B, Cout, Ho, Wo)`` like ``conv``.

    Raises:
        ConfigError: not a standard Conv2d, or ranks out of range.
    """
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ConfigError(f"iters must be an integer >= 0; got {iters!r}")
    seq = tucker2_modules(conv, ranks)
    u_in, core, u_out = tucker2_factors(conv.weight, _pair(ranks), iters)
    seq[0].weight.copy_(u_in.T[:, :, None, None])  # (R_in, Cin, 1, 1)
    seq[1].weight.copy_(core)  # (R_out, R_in, kh, kw)
    seq[2].weight.copy_(u_out[:, :, None, None])  # (Cout, R_out, 1, 1)
    if conv.bias is not None:
        seq[2].bias.copy_(conv.bias)
    return seq


def tucker2_weight(seq: nn.Sequential) -> torch.Tensor:
    """The ``(Cout, Cin, kh, kw)`` kernel the three convolutions compose to."""
    u_in = seq[0].weight.detach().double()[:, :, 0, 0]  # (R_in, Cin)
    u_out = seq[2].weight.detach().double()[:, :, 0, 0]  # (Cout, R_out)
    return torch.einsum("or,rshw,si->oihw", u_out, seq[1].weight.detach().double(), u_in)


def tucker2_cost(conv: nn.Conv2d, ranks, input_shape, output_shape) -> tuple[int, int]:
    """Parameters and FLOPs (multiply-add = 2) of the Tucker-2 block for one example.

    FLOPs ``= 2 (Cin R_in H W + R_in R_out kh kw Ho Wo + R_out Cout Ho Wo)`` with ``input_shape =
    (Cin, H, W)`` and ``output_shape = (Cout, Ho, Wo)``: the first 1x1 runs before the stride.
    """
    r_in, r_out = _pair(ranks)
    kh, kw = conv.kernel_size
    cin, h, w = input_shape
    cout, ho, wo = output_shape
    params = cin * r_in + r_in * r_out * kh * kw + r_out * cout + (cout if conv.bias is not None else 0)
    flops = 2 * (cin * r_in * h * w + r_in * r_out * kh * kw * ho * wo + r_out * cout * ho * wo)
    return params, flops


def replay_tucker(model: nn.Module, layer: str, ranks) -> None:
    """Surgery replay: give ``model``'s Conv2d ``layer`` the Tucker-2 shape with ``ranks`` (placeholder weights)."""
    replace_module(model, layer, tucker2_modules(model.get_submodule(layer), tuple(ranks)))
