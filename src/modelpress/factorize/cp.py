"""CP decomposition of a convolution into 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1.

Lebedev et al. 2015 ("Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition"):
the 4-way kernel ``K`` ``(Cout, Cin, kh, kw)`` is approximated by a sum of ``R`` rank-one tensors (the
seeds' ``A = sum_i lambda_i a_i^(1) x ... x a_i^(d)``),

    K[o, i, h, w] ~ sum_r lambda_r A[o, r] B[i, r] C[h, r] D[w, r],

so the convolution becomes ``1x1 (Cin -> R, weight B^T)`` -> ``depthwise kh x 1 (R, weight C^T,
vertical stride/padding/dilation)`` -> ``depthwise 1 x kw (R, weight D^T, horizontal ones)`` ->
``1x1 (R -> Cout, weight lambda A, the original bias)``. Jaderberg et al. 2014 ("Speeding up
Convolutional Neural Networks with Low Rank Expansions") use the same idea of separable filters: a
vertical kx1 pass then a horizontal 1xk pass, with shared intermediate channels; the CP form is the
extreme where every intermediate channel is its own vertical-then-horizontal rank-one filter.

The decomposition is computed by alternating least squares (Carroll & Chang 1970; Harshman 1970):
each factor in turn is the exact least-squares solution with the others fixed,
``F_n = X_(n) (kr_{m != n} F_m) (hadamard_{m != n} F_m^T F_m)^+``, so the error never increases
(up to the tiny ridge added for stability). Pure torch; no tensorly.

Fine-tuning a CP block is touchy, as Lebedev et al. report: the two depthwise layers hold a few
weights that every output depends on, so their gradients are large. A trained ``lenet5`` with CP
blocks diverged at ``lr=0.01`` (SGD) but fine-tuned well with ``grad_clip=1.0`` (``TrainConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.factorize.tucker import check_standard_conv
from modelpress.models.surgery import replace_module

KIND = "cp"


@dataclass
class CPResult:
    """A CP decomposition: ``weights`` ``(R,)`` and one ``(n_k, R)`` factor per mode; ``history`` holds
    the relative error ``||X - X_hat||_F / ||X||_F`` after every ALS sweep."""

    weights: torch.Tensor
    factors: list[torch.Tensor]
    history: list[float]


def _unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)  # (n_mode, prod of the other modes, C order)


def _khatri_rao(factors: list[torch.Tensor]) -> torch.Tensor:
    """Column-wise Kronecker product, the last factor's index running fastest (matches ``_unfold``)."""
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None, :] * f[None, :, :]).reshape(-1, out.shape[1])  # (n_a * n_b, R)
    return out


def cp_reconstruct(weights: torch.Tensor, factors: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor ``sum_r w_r f_1[:, r] x ... x f_N[:, r]``."""
    shape = [f.shape[0] for f in factors]
    return (_khatri_rao(factors) @ weights).reshape(shape)


def _init_factors(x: torch.Tensor, rank: int, generator: torch.Generator) -> list[torch.Tensor]:
    """SVD start: leading left singular vectors of each unfolding, random columns where ``rank`` exceeds them."""
    factors = []
    for mode in range(x.dim()):
        u = torch.linalg.svd(_unfold(x, mode), full_matrices=False)[0][:, :rank]
        extra = rank - u.shape[1]
        if extra > 0:
            u = torch.cat([u, torch.randn(x.shape[mode], extra, generator=generator, dtype=x.dtype)], dim=1)
        factors.append(u)
    return factors


def cp_als(x: torch.Tensor, rank: int, iters: int = 100, *, tol: float = 1e-7, ridge: float = 1e-10,
           seed: int = 0) -> CPResult:
    """Rank-``rank`` CP decomposition of any N-way tensor by alternating least squares.

    Args:
        x: the tensor, e.g. a kernel ``(Cout, Cin, kh, kw)``; computed in float64.
        rank: number of rank-one terms R >= 1.
        iters: maximum ALS sweeps.
        tol: stop when a sweep improves the relative error by less than this.
        ridge: added to the Gram matrix (relative to its trace) so degenerate factors stay solvable.
        seed: seeds the random columns of the start (used only where ``rank`` exceeds a mode's size).

    Returns:
        :class:`CPResult` with unit-norm factor columns and the column scales in ``weights``.

    Raises:
        ConfigError: ``rank`` < 1 or ``iters`` < 1.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be an integer >= 1; got {rank!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"iters must be an integer >= 1; got {iters!r}")
    x = x.detach().double()
    norm = float(x.norm()) or 1.0
    factors = _init_factors(x, rank, torch.Generator().manual_seed(seed))
    weights = torch.ones(rank, dtype=x.dtype)
    history: list[float] = []
    for _ in range(iters):
        for mode in range(x.dim()):
            others = [f for m, f in enumerate(factors) if m != mode]
            gram = torch.ones(rank, rank, dtype=x.dtype)
            for f in others:
                gram = gram * (f.T @ f)  # (R, R): hadamard of the other modes' Gram matrices
            gram = gram + ridge * gram.diagonal().sum() * torch.eye(rank, dtype=x.dtype)
            mttkrp = _unfold(x, mode) @ _khatri_rao(others)  # (n_mode, R)
            update = torch.linalg.solve(gram, mttkrp.T).T  # (n_mode, R), gram is symmetric
            weights = update.norm(dim=0).clamp_min(1e-300)
            factors[mode] = update / weights
        history.append(float((x - cp_reconstruct(weights, factors)).norm()) / norm)
        if len(history) > 1 and history[-2] - history[-1] < tol:
            break
    return CPResult(weights, factors, history)


def _check_rank(conv: nn.Module, rank: int) -> int:
    check_standard_conv(conv, "CP decomposition")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"CP rank must be an integer >= 1; got {rank!r}")
    return rank


def _axis(value, axis: int, neutral: int):
    """One axis of a (h, w) conv argument, the other set to ``neutral``; 'same'/'valid' pass through."""
    if isinstance(value, str):
        return value
    return (value[0], neutral) if axis == 0 else (neutral, value[1])


def cp_modules(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """The four-layer shape of a rank-``rank`` CP factorization of ``conv``, weights uninitialised (for replay)."""
    rank = _check_rank(conv, rank)
    kh, kw = conv.kernel_size
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}

    def depthwise(axis: int, kernel: tuple[int, int]) -> nn.Conv2d:
        # padding of any mode is separable per axis, so each pass pads only its own axis
        return nn.Conv2d(rank, rank, kernel, _axis(conv.stride, axis, 1), _axis(conv.padding, axis, 0),
                         _axis(conv.dilation, axis, 1), groups=rank, bias=False, padding_mode=conv.padding_mode, **factory)

    seq = nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, 1, bias=False, **factory),  # (B, Cin, H, W) -> (B, R, H, W)
        depthwise(0, (kh, 1)),  # vertical: -> (B, R, Ho, W)
        depthwise(1, (1, kw)),  # horizontal: -> (B, R, Ho, Wo)
        nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, **factory),  # -> (B, Cout, Ho, Wo)
    )
    seq.factorized_kind = KIND
    return seq


@torch.no_grad()
def cp_conv(conv: nn.Conv2d, rank: int, iters: int = 100, *, seed: int = 0) -> nn.Sequential:
    """CP factorization of a convolution (Lebedev et al. 2015), by ALS.

    Args:
        conv: ``nn.Conv2d(Cin, Cout, (kh, kw))`` with ``groups == 1``.
        rank: R >= 1 rank-one terms (the intermediate channel count).
        iters: maximum ALS sweeps.
        seed: seeds the ALS start where it needs random columns.

    Returns:
        ``nn.Sequential`` of four convolutions mapping ``(B, Cin, H, W) -> (B, Cout, Ho, Wo)`` like
        ``conv``; ``.cp_history`` holds the ALS relative errors per sweep.

    Raises:
        ConfigError: not a standard Conv2d, or bad ``rank``/``iters``.
    """
    seq = cp_modules(conv, rank)
    result = cp_als(conv.weight, rank, iters, seed=seed)
    a, b, c, d = result.factors  # (Cout, R), (Cin, R), (kh, R), (kw, R), unit columns
    scale = result.weights ** 0.25  # spread lambda over the four factors: balanced scales fine-tune better
    seq[0].weight.copy_((b * scale).T[:, :, None, None])  # (R, Cin, 1, 1)
    seq[1].weight.copy_((c * scale).T[:, None, :, None])  # (R, 1, kh, 1)
    seq[2].weight.copy_((d * scale).T[:, None, None, :])  # (R, 1, 1, kw)
    seq[3].weight.copy_((a * scale)[:, :, None, None])  # (Cout, R, 1, 1)
    if conv.bias is not None:
        seq[3].bias.copy_(conv.bias)
    seq.cp_history = result.history
    return seq


def cp_weight(seq: nn.Sequential) -> torch.Tensor:
    """The ``(Cout, Cin, kh, kw)`` kernel the four convolutions compose to."""
    b = seq[0].weight.detach().double()[:, :, 0, 0].T  # (Cin, R)
    c = seq[1].weight.detach().double()[:, 0, :, 0].T  # (kh, R)
    d = seq[2].weight.detach().double()[:, 0, 0, :].T  # (kw, R)
    a = seq[3].weight.detach().double()[:, :, 0, 0]  # (Cout, R)
    return cp_reconstruct(torch.ones(a.shape[1], dtype=a.dtype), [a, b, c, d])


def cp_cost(conv: nn.Conv2d, rank: int, input_shape, output_shape) -> tuple[int, int]:
    """Parameters and FLOPs (multiply-add = 2) of the CP block for one example.

    FLOPs ``= 2 R (Cin H W + kh Ho W + kw Ho Wo + Cout Ho Wo)``: the vertical pass runs at the input
    width, the horizontal one at the output width.
    """
    kh, kw = conv.kernel_size
    cin, h, w = input_shape
    cout, ho, wo = output_shape
    params = rank * (cin + kh + kw + cout) + (cout if conv.bias is not None else 0)
    return params, 2 * rank * (cin * h * w + kh * ho * w + kw * ho * wo + cout * ho * wo)


def replay_cp(model: nn.Module, layer: str, rank: int) -> None:
    """Surgery replay: give ``model``'s Conv2d ``layer`` the rank-``rank`` CP shape (placeholder weights)."""
    replace_module(model, layer, cp_modules(model.get_submodule(layer), int(rank)))
