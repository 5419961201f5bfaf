"""Binary and ternary weights, trained from a full-precision model with a straight-through estimator.

Each selected layer is reparametrized like :mod:`modelpress.quantize.sharing`: its ``weight`` Parameter
becomes ``weight_latent`` (the same Parameter object, so an optimizer built earlier keeps it), and a
forward pre-hook sets ``weight = Q(weight_latent)`` before every forward. ``Q`` is exact in the forward
pass (``weight`` holds only ``{-a, +a}`` or ``{-W_n, 0, +W_p}``); in the backward pass the gradient goes
straight through to the latent weight (Bengio et al. 2013), zeroed where ``|w| > clip`` (Hubara et al.
2016, "Binarized Neural Networks": ``g_w = g_q * 1{|w| <= clip}``). So ``modelpress.train.train``
trains these layers like any other; :class:`ClipLatent` clips the latent weights after every step and
:func:`finalize_binary_` folds them into ordinary layers, which ``encode.save_compressed`` stores at
about 1 bit (binary) or at most 2 bits (ternary) per weight.

Binarization stores bits, it does not make a float32 CPU forward faster: speed would need bit-packed
kernels (XNOR + popcount), which PyTorch's CPU backend does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared, opt
from modelpress.prune.magnitude import LayerFilter, is_pruned
from modelpress.quantize.sharing import is_shared

QUANTIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


class BinaryMode(str, Enum):
    SIGN = "sign"  # deterministic: sign(w)
    STOCHASTIC = "stochastic"  # +1 with probability hard_sigmoid(w / clip) while training; sign(w) in eval


class BinaryScale(str, Enum):
    NONE = "none"  # BinaryConnect: weights are exactly +-1
    MEAN = "mean"  # BWN / XNOR-Net: +-alpha, alpha = mean |W|


class TernaryThreshold(str, Enum):
    FIXED = "fixed"  # TWN: delta = 0.7 mean|W|, alpha computed from W
    LEARNED = "learned"  # TTQ: delta = t max|W|, scales W_p and W_n trained


def _check_selection(config) -> None:
    """Validation shared by both configs: layer names, clip."""
    for name in ("layers", "ignore"):
        value = getattr(config, name)
        if value is None and name == "layers":
            continue
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of module names (strings); got {value!r}")
        object.__setattr__(config, name, tuple(value))
    if not (isinstance(config.clip, (int, float)) and 0 < config.clip < float("inf")):
        raise ConfigError(f"clip must be a positive finite number; got {config.clip!r}")


@dataclass(frozen=True)
class BinaryConfig:
    """Binary weights ``{-a, +a}``.

    Args:
        mode: ``sign`` or ``stochastic`` (Courbariaux et al. 2015, "BinaryConnect": ``w_b = +1`` with
            ``p = clip((w / clip + 1) / 2, 0, 1)``, else ``-1``; eval and the finalized model use ``sign``).
        scale: ``none`` (BinaryConnect, ``a = 1``) or ``mean`` (Rastegari et al. 2016, "XNOR-Net", BWN:
            ``a = mean |W|``, the L2-optimal scale of ``sign(W)``).
        per_channel: with ``mean``, one ``a`` per output channel (row of a Linear, filter of a Conv)
            instead of one per layer; costs one float32 per channel in the file.
        layers: module names to binarize (``None``: every Linear and Conv layer).
        ignore: module names left in full precision.
        keep_first_last: also keep the first convolution and the last Linear (the logits) in full
            precision, as XNOR-Net and most papers do: they hold few weights and cost most accuracy.
        clip: latent weights are clipped to ``[-clip, clip]`` after each step (BinaryConnect) and get no
            gradient outside it. Absolute: the ``stochastic`` mode needs latent weights spread over it.
    """

    mode: BinaryMode = opt(BinaryMode.SIGN, "choice", choices=BinaryMode, tunable=True,
                           help="deterministic sign, or BinaryConnect's stochastic binarization while training")
    scale: BinaryScale = opt(BinaryScale.MEAN, "choice", choices=BinaryScale, tunable=True,
                             help="none (BinaryConnect) or mean |W| (XNOR-Net's BWN)")
    per_channel: bool = opt(False, "bool", help="with scale mean: one scale per output channel")
    layers: tuple[str, ...] | None = opt(None, "texts", optional=True, help="module names to binarize (default all)")
    ignore: tuple[str, ...] = opt((), "texts", help="module names left in full precision")
    keep_first_last: bool = opt(True, "bool", help="keep the first convolution and the logits layer in full precision")
    clip: float = opt(1.0, lo=0, lo_open=True, tunable=True, help="latent weights are clipped to [-clip, clip]")

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", coerce_enum(BinaryMode, self.mode, "mode"))
        object.__setattr__(self, "scale", coerce_enum(BinaryScale, self.scale, "scale"))
        if self.per_channel and self.scale is BinaryScale.NONE:
            raise ConfigError("per_channel needs scale='mean' (there is no scale to share per channel with scale='none')")
        _check_selection(self)
        check_declared(self)


@dataclass(frozen=True)
class TernaryConfig:
    """Ternary weights ``{-W_n, 0, +W_p}``, one pair of scales per layer.

    Args:
        threshold: ``fixed`` (Li et al. 2016, "Ternary Weight Networks": ``delta = delta_factor * mean|W|``,
            ``W_p = W_n = alpha = mean of |W| over |W| > delta``) or ``learned`` (Zhu et al. 2017, "Trained
            Ternary Quantization": ``delta = t * max|W|``, ``W_p`` and ``W_n`` are trained Parameters).
            Their gradients are sums over all the layer's weights: train them with Adam (lr ~1e-3), as a
            plain SGD step at the latent weights' learning rate overshoots.
        delta_factor: TWN's threshold factor (the paper: 0.7, from a Gaussian/uniform approximation).
        t: TTQ's threshold ratio (the paper: 0.05).
        layers, ignore, keep_first_last, clip: as in :class:`BinaryConfig`.
    """

    threshold: TernaryThreshold = opt(TernaryThreshold.FIXED, "choice", choices=TernaryThreshold, tunable=True,
                                      help="fixed (TWN: delta_factor x mean|W|) or learned scales (TTQ)")
    delta_factor: float = opt(0.7, lo=0, hi=2, lo_open=True, hi_open=True, tunable=True,
                              help="TWN's threshold factor")
    t: float = opt(0.05, lo=0, hi=1, lo_open=True, hi_open=True, tunable=True, help="TTQ's threshold ratio")
    layers: tuple[str, ...] | None = opt(None, "texts", optional=True, help="module names to ternarize (default all)")
    ignore: tuple[str, ...] = opt((), "texts", help="module names left in full precision")
    keep_first_last: bool = opt(True, "bool", help="keep the first convolution and the logits layer in full precision")
    clip: float = opt(1.0, lo=0, lo_open=True, tunable=True, help="latent weights are clipped to [-clip, clip]")

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", coerce_enum(TernaryThreshold, self.threshold, "threshold"))
        if not 0 < self.delta_factor < 2:
            raise ConfigError(f"delta_factor must be in (0, 2); got {self.delta_factor!r}")
        if not 0 < self.t < 1:
            raise ConfigError(f"t must be in (0, 1); got {self.t!r}")
        _check_selection(self)
        check_declared(self)


def straight_through(latent: torch.Tensor, quantized: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """``quantized`` in the forward pass; ``gain * grad`` to ``latent`` in the backward pass.

    ``p - p.detach()`` is exactly 0 for finite values, so the forward output is ``quantized`` bit for bit
    (``+ 0.0`` also turns a ``-0.0`` into ``+0.0``); its gradient with respect to ``latent`` is ``gain``.
    """
    passed = latent * gain
    return quantized + (passed - passed.detach())


def mean_abs(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """BWN's scale ``alpha = ||W||_1 / n``: a scalar, or ``(out, 1, ...)`` per output channel."""
    if not per_channel:
        return w.abs().mean()
    return w.abs().reshape(w.shape[0], -1).mean(1).reshape(-1, *[1] * (w.dim() - 1))


def binary_weight(latent: torch.Tensor, config: BinaryConfig, *, training: bool = False) -> torch.Tensor:
    """``alpha * sign(w)`` with values in ``{-alpha, +alpha}`` (sign(0) = +1), same shape as ``latent``.

    ``alpha`` is treated as a constant in the backward pass (the STE of Hubara et al.; XNOR-Net's extra
    ``1/n`` term through ``alpha`` is dropped), so the latent gradient is ``g * 1{|w| <= clip}``.
    """
    w = latent.detach()
    if config.mode is BinaryMode.STOCHASTIC and training:
        p_plus = ((w / config.clip + 1) / 2).clamp(0, 1)  # BinaryConnect's hard sigmoid
        signs = torch.where(torch.rand_like(w) < p_plus, 1.0, -1.0)
    else:
        signs = torch.where(w >= 0, 1.0, -1.0)
    alpha = mean_abs(w, config.per_channel) if config.scale is BinaryScale.MEAN else torch.ones((), dtype=w.dtype)
    return straight_through(latent, alpha * signs, (w.abs() <= config.clip).to(w.dtype))


def twn_threshold(w: torch.Tensor, delta_factor: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN's ``delta = delta_factor * mean|W|`` and ``alpha = mean{|W_i| : |W_i| > delta}`` (scalars)."""
    w = w.detach().abs()
    delta = delta_factor * w.mean()
    above = w > delta
    alpha = w[above].mean() if above.any() else torch.zeros((), dtype=w.dtype)
    return delta, alpha


def ternary_weight(latent: torch.Tensor, config: TernaryConfig, wp: torch.Tensor | None = None,
                   wn: torch.Tensor | None = None) -> torch.Tensor:
    """Values ``W_p`` where ``w > delta``, ``-W_n`` where ``w < -delta``, 0 elsewhere.

    Fixed (TWN): ``W_p = W_n = alpha`` from :func:`twn_threshold`, constant in the backward pass.
    Learned (TTQ, Zhu et al. 2017, Eqs. 7-8): autograd gives ``dL/dW_p = sum_{i in I_p} g_i`` and
    ``dL/dW_n = -sum_{i in I_n} g_i`` (the paper drops the sign of ``-W_n``), and the latent gradient
    is scaled by ``W_p`` on ``I_p``, 1 on the zeros and ``W_n`` on ``I_n``.
    """
    w = latent.detach()
    learned = config.threshold is TernaryThreshold.LEARNED
    if learned:
        delta = config.t * w.abs().max()
    else:
        delta, alpha = twn_threshold(w, config.delta_factor)
        wp = wn = alpha
    pos, neg = (w > delta).to(w.dtype), (w < -delta).to(w.dtype)
    gain = pos * wp.detach() + neg * wn.detach() + (1 - pos - neg) if learned else torch.ones_like(w)
    quantized = wp * pos - wn * neg  # exactly W_p, -W_n or 0
    return straight_through(latent, quantized, gain * (w.abs() <= config.clip).to(w.dtype))


def is_binarized(module: nn.Module) -> bool:
    """Whether ``module`` carries a binary or ternary reparametrization."""
    return hasattr(module, "weight_latent")


def quantized_weight(module: nn.Module, *, training: bool = False) -> torch.Tensor:
    """The binary/ternary weight of a reparametrized layer, computed now from its latent weight."""
    config = module._binary_config
    if isinstance(config, BinaryConfig):
        return binary_weight(module.weight_latent, config, training=training)
    if config.threshold is TernaryThreshold.LEARNED:
        return ternary_weight(module.weight_latent, config, module.weight_wp, module.weight_wn)
    return ternary_weight(module.weight_latent, config)


def _refresh_weight(module: nn.Module, inputs) -> None:
    module.weight = quantized_weight(module, training=module.training)


def select_layers(model: nn.Module, config: BinaryConfig | TernaryConfig,
                  filter_fn: LayerFilter | None = None) -> tuple[dict[str, nn.Module], list[str]]:
    """The layers ``config`` selects, and the Linear/Conv layers it leaves in full precision.

    Raises:
        ConfigError: a name in ``layers``/``ignore`` that is not a module, or names a layer that is not
            Linear/Conv, or a selected layer that is already pruned, weight-shared or binarized.
    """
    modules = dict(model.named_modules())
    candidates = {n: m for n, m in modules.items() if isinstance(m, QUANTIZABLE)}
    for name in (*(config.layers or ()), *config.ignore):
        if name not in modules:
            raise ConfigError(f"no module named {name!r}; Linear/Conv layers: {sorted(candidates)}")
        if name not in candidates:
            raise ConfigError(f"layer {name!r} is a {type(modules[name]).__name__}; only Linear and Conv layers "
                              "can be binarized or ternarized")
    wanted = set(candidates if config.layers is None else config.layers) - set(config.ignore)
    if config.keep_first_last:
        convs = [n for n, m in candidates.items() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        linears = [n for n, m in candidates.items() if isinstance(m, nn.Linear)]
        wanted -= {*convs[:1], *linears[-1:]}
    selected = {n: m for n, m in candidates.items() if n in wanted and (filter_fn is None or filter_fn(m, n))}
    for name, module in selected.items():
        if is_pruned(module) or is_shared(module) or is_binarized(module):
            raise ConfigError(f"layer {name} is already pruned, weight-shared or binarized; make that permanent "
                              "first (make_permanent_, finalize_, finalize_binary_)")
    return selected, [n for n in candidates if n not in selected]


def _reparametrize_(module: nn.Module, config: BinaryConfig | TernaryConfig) -> None:
    latent = module._parameters.pop("weight")  # the same Parameter object: optimizers keep tracking it
    module.register_parameter("weight_latent", latent)
    if isinstance(config, TernaryConfig) and config.threshold is TernaryThreshold.LEARNED:
        w = latent.detach()
        delta = config.t * w.abs().max()
        # start from the mean magnitude of each side, so the first forward approximates the latent weights
        wp, wn = w[w > delta].mean(), (-w[w < -delta]).mean()
        module.register_parameter("weight_wp", nn.Parameter(torch.nan_to_num(wp).reshape(())))
        module.register_parameter("weight_wn", nn.Parameter(torch.nan_to_num(wn).reshape(())))
    module._binary_config = config
    with torch.no_grad():
        module.weight = quantized_weight(module)
    module._binary_hook = module.register_forward_pre_hook(_refresh_weight)


@dataclass
class BinaryReport:
    """Per-layer rows ``{"layer", "weights", "values", "zero_fraction", "mse"}`` (``values``: distinct
    values of the quantized weight; ``mse``: against the latent weights) and the layers kept in full precision."""

    rows: list[dict]
    full_precision: list[str]

    @property
    def quantized_weights(self) -> int:
        return sum(r["weights"] for r in self.rows)


@torch.no_grad()
def binary_report(model: nn.Module, full_precision: list[str] | None = None) -> BinaryReport:
    """A :class:`BinaryReport` of the model's reparametrized layers as they are now."""
    rows = []
    for name, module in model.named_modules():
        if is_binarized(module):
            q, w = quantized_weight(module), module.weight_latent
            rows.append({"layer": name, "weights": q.numel(), "values": int(q.unique().numel()),
                         "zero_fraction": float((q == 0).float().mean()), "mse": float(((q - w) ** 2).mean())})
    return BinaryReport(rows, list(full_precision or []))


def _apply_(model: nn.Module, config, filter_fn: LayerFilter | None) -> BinaryReport:
    selected, kept = select_layers(model, config, filter_fn)
    for module in selected.values():
        _reparametrize_(module, config)
    return binary_report(model, kept)


def binarize_(model: nn.Module, config: BinaryConfig = BinaryConfig(), *,
              filter_fn: LayerFilter | None = None) -> BinaryReport:
    """Give each selected layer binary weights ``{-a, +a}`` computed from a latent weight, in place.

    Train afterwards with ``modelpress.train.train(..., callbacks=[ClipLatent()])``; then
    :func:`finalize_binary_`.

    Example:
        >>> report = binarize_(model, BinaryConfig(scale="mean"))
        >>> train(model, data, TrainConfig(epochs=3), callbacks=[ClipLatent()])
        >>> finalize_binary_(model)
    """
    if not isinstance(config, BinaryConfig):
        raise ConfigError(f"binarize_ needs a BinaryConfig; got {type(config).__name__}")
    return _apply_(model, config, filter_fn)


def ternarize_(model: nn.Module, config: TernaryConfig = TernaryConfig(), *,
               filter_fn: LayerFilter | None = None) -> BinaryReport:
    """Give each selected layer ternary weights ``{-W_n, 0, +W_p}`` (TWN or TTQ, see
    :class:`TernaryConfig`), in place; train and finalize as with :func:`binarize_`."""
    if not isinstance(config, TernaryConfig):
        raise ConfigError(f"ternarize_ needs a TernaryConfig; got {type(config).__name__}")
    return _apply_(model, config, filter_fn)


@torch.no_grad()
def clip_latent_(model: nn.Module) -> None:
    """Clip every latent weight to ``[-clip, clip]`` (BinaryConnect, after each parameter update)."""
    for module in model.modules():
        if is_binarized(module):
            module.weight_latent.clamp_(-module._binary_config.clip, module._binary_config.clip)


class ClipLatent:
    """A :func:`modelpress.train.train` callback: :func:`clip_latent_` after every optimizer step."""

    def on_batch_end(self, step: int, model: nn.Module) -> None:
        clip_latent_(model)


@torch.no_grad()
def finalize_binary_(model: nn.Module) -> nn.Module:
    """Replace every binary/ternary layer by an ordinary ``weight`` Parameter holding its quantized
    values (``sign`` for the stochastic mode), so it has 2 or 3 distinct values and saves like any layer."""
    for module in model.modules():
        if is_binarized(module):
            weight = quantized_weight(module).detach().clone()
            module._binary_hook.remove()
            del module._binary_hook, module._binary_config, module.weight
            for key in [k for k in module._parameters if k.startswith("weight_")]:
                del module._parameters[key]
            module.register_parameter("weight", nn.Parameter(weight))
    return model
