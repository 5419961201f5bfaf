"""``factorize_``: low-rank factorization of a whole model, with ranks chosen by energy, FLOP budget or hand.

One config picks the method (SVD of Linear layers, Tucker-2 or CP of standard Conv2d layers), which
layers, and how ranks are chosen; :func:`factorize_` swaps the layers in place, records each change
(``modelpress.models.surgery``) so the model saves and loads, and reports parameters, FLOPs and the
relative reconstruction error ``||W - W_r||_F / ||W||_F`` per layer. Fine-tune afterwards with
``modelpress.train.train`` (or distil from the original): the factorized layers are ordinary modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import check_declared, opt
from modelpress.factorize import cp, svd, tucker
from modelpress.measure.metrics import count_flops, count_params
from modelpress.models.surgery import record_surgery, replace_module
from modelpress.train.config import TrainConfig


class Method(str, Enum):
    SVD = "svd"  # Linear -> Linear(in, r) -> Linear(r, out)
    TUCKER = "tucker"  # Conv2d kxk -> 1x1 -> kxk -> 1x1
    CP = "cp"  # Conv2d kxk -> 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1


class _DefaultEnergy(float):
    """The default energy, told apart from an energy the caller gave (see :class:`FactorizeConfig`)."""


_DEFAULT_ENERGY = _DefaultEnergy(0.9)


@dataclass(frozen=True)
class FactorizeConfig:
    """How to factorize a model.

    Exactly one rank rule applies: ``ranks`` (by hand), ``flop_budget``, or ``energy``. ``energy`` has a
    default, so giving ``ranks`` or ``flop_budget`` alone switches it off; giving it explicitly as well
    is an error.

    Args:
        method: ``svd`` (nn.Linear), ``tucker`` or ``cp`` (nn.Conv2d with groups == 1 and a kernel > 1).
        energy: per layer, keep the smallest ranks whose singular values hold this fraction of
            ``sum s_i^2`` (:func:`~modelpress.factorize.svd.energy_rank`; Tucker: on both channel
            unfoldings; CP: ``R = max(R_in, R_out)``, since the CP rank is at least every mode rank).
        flop_budget: fraction in (0, 1] of the whole model's FLOPs to keep. One energy shared by all
            selected layers is found by bisection: the largest whose ranks bring the model to
            ``<= flop_budget * original`` FLOPs. Uniform energy keeps every layer's spectral fidelity
            equal rather than spending the budget optimally.
        ranks: layer name -> rank (svd, cp: int; tucker: ``(R_in, R_out)`` or an int for both). Only
            these layers are factorized.
        layers: module names to consider (default: every eligible layer).
        ignore: module names never touched.
        skip_if_larger: leave a layer alone (reported as skipped) when its factorized form is not
            strictly smaller in both parameters and FLOPs: it could only be slower.
        hooi_iters: HOOI sweeps after the HOSVD (tucker).
        als_iters: maximum ALS sweeps (cp).
    """

    method: Method = opt(Method.SVD, "choice", choices=Method, tunable=True,
                         help="svd: Linear layers into two; tucker: Tucker-2 convolutions (1x1, kxk, 1x1); "
                              "cp: CP convolutions")
    energy: float | None = opt(_DEFAULT_ENERGY, lo=0, hi=1, lo_open=True, optional=True, tunable=True,
                               help="keep this fraction of squared singular values")
    flop_budget: float | None = opt(None, lo=0, hi=1, lo_open=True, optional=True, tunable=True,
                                    help="instead, keep at most this fraction of the FLOPs")
    ranks: dict | None = None  # set from Python (layer name -> rank), not a flag or recipe field
    layers: tuple[str, ...] | None = opt(None, "texts", optional=True, expose=False)
    ignore: tuple[str, ...] = opt((), "texts", expose=False)
    skip_if_larger: bool = opt(True, "bool", expose=False)
    hooi_iters: int = opt(2, "integer", lo=0, expose=False)
    als_iters: int = opt(100, "integer", lo=1, expose=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", coerce_enum(Method, self.method, "method"))
        energy = self.energy
        if isinstance(energy, _DefaultEnergy) and (self.flop_budget is not None or self.ranks is not None):
            energy = None
        given = [name for name, v in (("energy", energy), ("flop_budget", self.flop_budget), ("ranks", self.ranks)) if v is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of energy, flop_budget, ranks; got {given or 'none'}")
        # the default stays the sentinel object, so dataclasses.replace(config, flop_budget=...) still works
        object.__setattr__(self, "energy", energy if energy is None or isinstance(energy, _DefaultEnergy) else float(energy))
        for name in ("energy", "flop_budget"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1]; got {value!r}")
        if self.ranks is not None:
            object.__setattr__(self, "ranks", {str(k): self._rank(k, v) for k, v in dict(self.ranks).items()})
        for name in ("layers", "ignore"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    raise ConfigError(f"{name} must be a sequence of module names, not the string {value!r}")
                object.__setattr__(self, name, tuple(str(v) for v in value))
        for name in ("hooi_iters", "als_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "hooi_iters" else 1):
                raise ConfigError(f"{name} must be an integer >= {0 if name == 'hooi_iters' else 1}; got {value!r}")
        check_declared(self)

    def _rank(self, layer: str, value):
        def ok(r) -> bool:
            return isinstance(r, int) and not isinstance(r, bool) and r >= 1

        if self.method is Method.TUCKER:
            pair = (value, value) if ok(value) else tuple(value) if isinstance(value, (tuple, list)) else ()
            if len(pair) == 2 and all(ok(r) for r in pair):
                return tuple(pair)
            raise ConfigError(f"ranks[{layer!r}] must be an integer >= 1 or a pair (R_in, R_out) for tucker; got {value!r}")
        if not ok(value):
            raise ConfigError(f"ranks[{layer!r}] must be an integer >= 1 for {self.method.value}; got {value!r}")
        return value


@dataclass(frozen=True)
class ShrinkConfig:
    """Fine-tuning after a model was made smaller (channels removed, layers factorized, separable blocks):
    the one declaration ``modelpress shrink`` and the recipe ``factorize`` stage derive their flags from.

    Args:
        finetune_epochs: SGD epochs after the change (0: none).
        lr: their learning rate (cosine schedule, as :class:`TrainConfig`).
        grad_clip: global gradient-norm clip; CP factors diverge without it.
        batch_size: examples per step.
        seed: seeds shuffling (shared with the data split).
    """

    finetune_epochs: int = opt(3, "integer", lo=0, tunable=True, help="fine-tuning epochs (0: none)")
    lr: float = opt(0.01, lo=0, lo_open=True, tunable=True, help="fine-tuning learning rate")
    grad_clip: float | None = opt(1.0, lo=0, lo_open=True, optional=True,
                                  help="clip the gradient norm while fine-tuning (CP factors diverge without it)")
    batch_size: int = opt(128, "integer", lo=1, help="examples per fine-tuning step")
    seed: int = opt(0, "integer", lo=0, shared=True, help="seeds shuffling")

    def __post_init__(self) -> None:
        check_declared(self)

    def train_config(self) -> TrainConfig | None:
        """The fine-tuning run as the training loop's config; ``None`` when ``finetune_epochs`` is 0."""
        if not self.finetune_epochs:
            return None
        return TrainConfig(epochs=self.finetune_epochs, lr=self.lr, batch_size=self.batch_size,
                           grad_clip=self.grad_clip, seed=self.seed)


@dataclass
class FactorizeReport:
    """What :func:`factorize_` did. ``rows``: per selected layer ``layer``, ``kind``, ``shape`` (weight),
    ``rank``, ``params_before/after``, ``flops_before/after`` (per example), ``rel_error``
    (``||W - W_r||_F / ||W||_F``, None when skipped) and ``status`` (``factorized`` / ``skipped: ...``).
    Totals are of the whole model (``measure.count_params`` / ``count_flops``)."""

    method: str
    rows: list[dict]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    energy: float | None = None  # the energy used (found by bisection under a flop_budget)

    @property
    def factorized(self) -> list[str]:
        return [r["layer"] for r in self.rows if r["status"] == "factorized"]

    @property
    def skipped(self) -> list[str]:
        return [r["layer"] for r in self.rows if r["status"] != "factorized"]

    @property
    def flops_fraction(self) -> float:
        return self.flops_after / max(self.flops_before, 1)

    @property
    def params_fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    def to_json(self) -> dict:
        return {"method": self.method, "energy": self.energy, "params_before": self.params_before,
                "params_after": self.params_after, "flops_before": self.flops_before,
                "flops_after": self.flops_after, "rows": self.rows}


def eligible(module: nn.Module, method: Method) -> bool:
    """Whether ``method`` applies to ``module``: Linear for svd; Conv2d, groups 1, kernel > 1 otherwise."""
    if method is Method.SVD:
        return isinstance(module, nn.Linear)
    return isinstance(module, nn.Conv2d) and module.groups == 1 and max(module.kernel_size) > 1


def select_layers(model: nn.Module, config: FactorizeConfig) -> list[str]:
    """Names of the layers ``config`` factorizes, in module order; parts of blocks already factorized are never picked.

    Raises:
        ConfigError: ``layers``/``ranks`` name a missing or unsupported layer.
    """
    modules = dict(model.named_modules())
    inside = [n + "." for n, m in modules.items() if getattr(m, "factorized_kind", None)]
    wanted = list(config.ranks) if config.ranks is not None else config.layers
    for name in wanted or ():
        if name not in modules:
            raise ConfigError(f"the model has no layer {name!r}")
        if not eligible(modules[name], config.method):
            raise ConfigError(f"layer {name!r} ({modules[name]!r}) is not supported by method {config.method.value}: "
                              f"{'it needs nn.Linear' if config.method is Method.SVD else 'it needs nn.Conv2d with groups 1 and a kernel > 1'}")
        if config.layers is not None and name not in config.layers:
            raise ConfigError(f"ranks names layer {name!r}, which is not in layers {list(config.layers)}")
    names = [n for n, m in modules.items() if eligible(m, config.method) and not any(n.startswith(p) for p in inside)]
    return [n for n in names if (wanted is None or n in wanted) and n not in config.ignore]


def io_shapes(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, tuple]:
    """``name -> (input shape, output shape)`` of one example through each named module (a forward pass, eval mode)."""
    shapes: dict[str, tuple] = {}
    modules = dict(model.named_modules())

    def hook(name):
        return lambda m, args, out: shapes.__setitem__(name, (tuple(args[0].shape[1:]), tuple(out.shape[1:])))

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ShapeError(f"layers {missing} were not reached by a forward pass of the example input")
    return shapes


# ---- per-method pieces: spectra -> energy ranks, cost, decomposition, composed weight, surgery args

def _energy_ranks(method: Method, spectra: tuple, energy: float):
    if method is Method.SVD:
        return svd.energy_rank(spectra[0], energy)
    r_in, r_out = (svd.energy_rank(s, energy) for s in spectra)
    return (r_in, r_out) if method is Method.TUCKER else max(r_in, r_out)


def _spectra(method: Method, module: nn.Module) -> tuple:
    return (svd.linear_spectrum(module),) if method is Method.SVD else tucker.mode_spectra(module.weight)


def _cost(method: Method, module: nn.Module, rank, shapes: tuple) -> tuple[int, int]:
    if method is Method.SVD:
        return svd.svd_cost(module, rank, shapes[0])
    return (tucker.tucker2_cost if method is Method.TUCKER else cp.cp_cost)(module, rank, *shapes)


def _decompose(method: Method, module: nn.Module, rank, config: FactorizeConfig) -> tuple[nn.Sequential, torch.Tensor]:
    if method is Method.SVD:
        seq = svd.svd_linear(module, rank)
        return seq, svd.svd_weight(seq)
    if method is Method.TUCKER:
        seq = tucker.tucker2_conv(module, rank, iters=config.hooi_iters)
        return seq, tucker.tucker2_weight(seq)
    seq = cp.cp_conv(module, rank, iters=config.als_iters)
    return seq, cp.cp_weight(seq)


def _check_explicit_rank(method: Method, name: str, module: nn.Module, rank) -> None:
    try:
        {Method.SVD: svd.svd_modules, Method.TUCKER: tucker.tucker2_modules, Method.CP: cp.cp_modules}[method](module, rank)
    except ConfigError as err:
        raise ConfigError(f"ranks[{name!r}]: {err}") from None


def _choose_energy(config, layers, spectra, costs_before, shapes, flops_before) -> float:
    """Largest shared energy whose ranks keep the model within ``flop_budget`` (bisection; FLOPs rise with energy)."""
    def model_flops(energy: float) -> int:
        total = flops_before
        for name, module in layers.items():
            flops = _cost(config.method, module, _energy_ranks(config.method, spectra[name], energy), shapes[name])[1]
            before = costs_before[name][1]
            total += (min(flops, before) if config.skip_if_larger else flops) - before
        return total

    target = config.flop_budget * flops_before
    lo, hi = 1e-9, 1.0
    if model_flops(hi) <= target:
        return hi
    if model_flops(lo) > target:
        raise ConfigError(f"flop_budget {config.flop_budget} cannot be met by {config.method.value}: rank 1 in every "
                          f"selected layer still keeps {model_flops(lo) / flops_before:.3f} of the FLOPs")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model_flops(mid) <= target else (lo, mid)
    return lo


def factorize_(model: nn.Module, config: FactorizeConfig, example_input: torch.Tensor) -> FactorizeReport:
    """Factorize the selected layers of ``model`` in place and record each change for save/load.

    Args:
        model: any module; one built by ``modelpress.models.build_model`` also keeps its spec in step.
        config: method, layers and the rank rule.
        example_input: ``(B, *input_shape)``; one example is run to find each layer's input/output shape
            (needed for FLOPs).

    Returns:
        :class:`FactorizeReport` with per-layer and whole-model parameters and FLOPs.

    Raises:
        ConfigError: no eligible layer, a layer/rank that does not fit, or an unreachable ``flop_budget``.
        ShapeError: the example input does not reach a selected layer.
    """
    names = select_layers(model, config)
    if not names:
        raise ConfigError(f"the model has no layer that method {config.method.value} applies to (after layers/ignore)")
    layers = {n: model.get_submodule(n) for n in names}
    input_shape = tuple(example_input.shape[1:])
    params_before, flops_before = count_params(model), count_flops(model, input_shape)
    shapes = io_shapes(model, names, example_input)
    costs_before = {n: (count_params(m), count_flops(m, shapes[n][0])) for n, m in layers.items()}
    energy = None if config.energy is None else float(config.energy)
    if config.ranks is not None:
        ranks = dict(config.ranks)
        for name, rank in ranks.items():
            _check_explicit_rank(config.method, name, layers[name], rank)
    else:
        spectra = {n: _spectra(config.method, m) for n, m in layers.items()}
        if config.flop_budget is not None:
            energy = _choose_energy(config, layers, spectra, costs_before, shapes, flops_before)
        ranks = {n: _energy_ranks(config.method, spectra[n], energy) for n in names}
    rows = [_factorize_layer(model, config, name, layers[name], ranks[name], shapes[name], costs_before[name]) for name in ranks]
    return FactorizeReport(config.method.value, rows, params_before, count_params(model), flops_before,
                           count_flops(model, input_shape), energy)


def _factorize_layer(model, config, name, module, rank, shapes, before) -> dict:
    params, flops = _cost(config.method, module, rank, shapes)
    row = {"layer": name, "kind": config.method.value, "shape": list(module.weight.shape),
           "rank": list(rank) if isinstance(rank, tuple) else rank, "params_before": before[0], "flops_before": before[1]}
    if config.skip_if_larger and (params >= before[0] or flops >= before[1]):
        return row | {"params_after": before[0], "flops_after": before[1], "rel_error": None,
                      "status": f"skipped: factorized form is not smaller ({params} params, {flops} FLOPs)"}
    weight = module.weight.detach().double()
    seq, approx = _decompose(config.method, module, rank, config)
    replace_module(model, name, seq)
    key = "ranks" if config.method is Method.TUCKER else "rank"
    record_surgery(model, config.method.value, layer=name, **{key: row["rank"]})
    rel_error = float((weight - approx).norm() / weight.norm().clamp_min(1e-300))
    return row | {"params_after": count_params(seq), "flops_after": count_flops(seq, shapes[0]),
                  "rel_error": rel_error, "status": "factorized"}


__all__ = ["FactorizeConfig", "FactorizeReport", "Method", "eligible", "factorize_", "io_shapes", "select_layers"]
