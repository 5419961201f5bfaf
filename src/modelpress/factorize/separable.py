"""Compact design: standard convolutions -> depthwise-separable blocks, then distil from the original.

Howard et al. 2017 ("MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications"): a kxk convolution ``(Cout, Cin, k, k)`` costs ``k^2 Cin Cout Ho Wo`` multiply-adds; a
depthwise kxk (one filter per input channel) -> BatchNorm -> ReLU -> pointwise 1x1 block costs
``(k^2 Cin + Cin Cout) Ho Wo`` (the seeds' ``h w D_in + 1 1 D_in D_out``), about ``1/Cout + 1/k^2`` of it.

Initialisation. Without the BatchNorm and ReLU the block is the kernel ``K[o, i] ~ P[o, i] d_i``
(``d_i`` the ``kxk`` depthwise filter of channel ``i``), whose best Frobenius fit is, channel by
channel, the rank-1 SVD of the slice ``K[:, i]`` ``(Cout, k*k)``: ``d_i = s^1/2 v_1``, ``P[:, i] =
s^1/2 u_1``. With ``example_input`` the BatchNorm is calibrated so that the ReLU passes everything on
those data: its running statistics are the depthwise outputs' mean ``m`` and variance ``v``, its scale
``sqrt(v + eps)`` and its shift ``m + delta`` (``delta >= -min`` of each channel), so it computes
``z + delta``; the pointwise bias subtracts ``P delta`` again. On the calibration data the block then
equals the rank-1 approximation exactly (eval mode), a warm start that distillation refines. Without
data BatchNorm starts as the identity and the ReLU clips the negative half: distillation must do more.
The pointwise layer always has a bias (the conv's, or zeros), since that is where the shift is undone.
A rank-1 filter per input channel is a crude fit (relative kernel error 0.8-0.9 on a trained
``vgg_mini:16``, which sits at chance accuracy before training): the block is a starting point for
distillation, not a drop-in approximation like :func:`~modelpress.factorize.tucker2_conv`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.factorize.core import io_shapes
from modelpress.factorize.tucker import check_standard_conv
from modelpress.measure.metrics import count_flops, count_params
from modelpress.models.surgery import record_surgery, replace_module

KIND = "separable"
_MARGIN = 0.1  # extra shift, in standard deviations, so unseen inputs also stay on the linear side of the ReLU


def separable_modules(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise kxk (Cin, no bias) -> BatchNorm2d(Cin) -> ReLU -> pointwise 1x1 (Cin -> Cout, with a bias).

    Fresh weights (PyTorch's default init), used as such by replay.

    Raises:
        ConfigError: ``conv`` is not a Conv2d with groups == 1.
    """
    check_standard_conv(conv, "the depthwise-separable conversion")
    cin = conv.in_channels
    factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
    seq = nn.Sequential(
        nn.Conv2d(cin, cin, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=cin,
                  bias=False, padding_mode=conv.padding_mode, **factory),  # (B, Cin, H, W) -> (B, Cin, Ho, Wo)
        nn.BatchNorm2d(cin, **factory),
        nn.ReLU(inplace=True),
        # always a bias (the conv's, or zeros): it is where the calibrated ReLU shift is undone
        nn.Conv2d(cin, conv.out_channels, 1, **factory),  # -> (B, Cout, Ho, Wo)
    )
    seq.factorized_kind = KIND
    return seq


def rank1_split(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best depthwise-times-pointwise fit of a kernel, channel by channel (rank-1 SVD of each ``K[:, i]``).

    Args:
        kernel: ``(Cout, Cin, kh, kw)``.

    Returns:
        ``(depthwise, pointwise)``: ``(Cin, 1, kh, kw)`` and ``(Cout, Cin, 1, 1)``, float64.
    """
    k = kernel.detach().double()
    cout, cin, kh, kw = k.shape
    u, s, vh = torch.linalg.svd(k.transpose(0, 1).reshape(cin, cout, kh * kw), full_matrices=False)  # batched over Cin
    root = s[:, :1].sqrt()  # (Cin, 1)
    depthwise = (root * vh[:, 0, :]).reshape(cin, 1, kh, kw)
    pointwise = (u[:, :, 0] * root).T.reshape(cout, cin, 1, 1)
    return depthwise, pointwise


def separable_weight(seq: nn.Sequential) -> torch.Tensor:
    """The ``(Cout, Cin, kh, kw)`` kernel of the block's linear part (BatchNorm and ReLU left out)."""
    depthwise = seq[0].weight.detach().double()[:, 0]  # (Cin, kh, kw)
    pointwise = seq[3].weight.detach().double()[:, :, 0, 0]  # (Cout, Cin)
    return pointwise[:, :, None, None] * depthwise[None]


@torch.no_grad()
def separable_conv(conv: nn.Conv2d, calibration: torch.Tensor | None = None) -> nn.Sequential:
    """A depthwise-separable block initialised from ``conv`` (see the module notes).

    Args:
        conv: ``nn.Conv2d(Cin, Cout, (kh, kw))`` with ``groups == 1``.
        calibration: inputs that ``conv`` sees, ``(N, Cin, H, W)``, to calibrate BatchNorm; optional.

    Returns:
        ``nn.Sequential(depthwise, BatchNorm2d, ReLU, pointwise)`` mapping ``(B, Cin, H, W) -> (B, Cout, Ho, Wo)``.
    """
    seq = separable_modules(conv)
    depthwise, pointwise = rank1_split(conv.weight)
    seq[0].weight.copy_(depthwise)
    seq[3].weight.copy_(pointwise)
    seq[3].bias.copy_(conv.bias if conv.bias is not None else torch.zeros_like(seq[3].bias))
    if calibration is not None and calibration.shape[0] > 0:
        z = seq[0](calibration.to(seq[0].weight))  # (N, Cin, Ho, Wo)
        mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)  # (Cin,)
        delta = (-z.amin((0, 2, 3))).clamp_min(0) + _MARGIN * var.sqrt()
        bn = seq[1]
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.weight.copy_((var + bn.eps).sqrt())  # undoes the normalisation: BN(z) = z + delta
        bn.bias.copy_(mean + delta)
        seq[3].bias.sub_(seq[3].weight[:, :, 0, 0] @ delta)  # (Cout,): undo the shift after the ReLU
    return seq


class SeparableReport:
    """What :func:`to_depthwise_separable_` did: ``rows`` per converted layer (``layer``, ``shape``,
    ``params_before/after``, ``flops_before/after``, ``rel_error`` of the linear part) and whole-model totals."""

    def __init__(self, rows: list[dict], params_before: int, params_after: int, flops_before: int, flops_after: int):
        self.rows, self.params_before, self.params_after = rows, params_before, params_after
        self.flops_before, self.flops_after = flops_before, flops_after

    @property
    def layers(self) -> list[str]:
        return [r["layer"] for r in self.rows]

    def to_json(self) -> dict:
        return {"method": KIND, "params_before": self.params_before, "params_after": self.params_after,
                "flops_before": self.flops_before, "flops_after": self.flops_after, "rows": self.rows}


def _select(model: nn.Module, layers, keep_first: bool) -> list[str]:
    modules = dict(model.named_modules())
    if layers is not None:
        for name in layers:
            if name not in modules:
                raise ConfigError(f"the model has no layer {name!r}")
            if not isinstance(modules[name], nn.Conv2d) or modules[name].groups != 1 or max(modules[name].kernel_size) == 1:
                raise ConfigError(f"layer {name!r} ({modules[name]!r}) cannot become depthwise-separable: "
                                  "it needs nn.Conv2d with groups 1 and a kernel > 1")
        return list(layers)
    inside = [n + "." for n, m in modules.items() if getattr(m, "factorized_kind", None)]
    names = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1
             and not any(n.startswith(p) for p in inside)]
    return names[1:] if keep_first else names


def to_depthwise_separable_(model: nn.Module, layers=None, example_input: torch.Tensor | None = None,
                            *, keep_first: bool = True) -> SeparableReport:
    """Replace standard convolutions of ``model`` by depthwise-separable blocks, in place (Howard et al. 2017).

    Args:
        model: any module; a zoo model keeps its spec in step (surgery ``"separable"``), so it saves and loads.
        layers: module names to convert; default every Conv2d with groups 1 and a kernel > 1.
        example_input: ``(N, *input_shape)``: calibrates each block's BatchNorm (see the module notes)
            and gives the FLOP counts; without it FLOPs use ``model.modelpress_spec.input_shape`` if any.
        keep_first: with ``layers`` unset, leave the first such convolution whole, as MobileNets do:
            with few input channels it is cheap, and one filter per input channel would lose too much.

    Returns:
        :class:`SeparableReport`; FLOP figures are None when no input shape is known.

    Raises:
        ConfigError: a named layer is missing or not a standard convolution, or nothing to convert.
    """
    names = _select(model, layers, keep_first)
    if not names:
        raise ConfigError("the model has no standard convolution (groups 1, kernel > 1) to convert")
    spec = getattr(model, "modelpress_spec", None)
    input_shape = tuple(example_input.shape[1:]) if example_input is not None else getattr(spec, "input_shape", None)
    probe = example_input if example_input is not None else torch.zeros(1, *input_shape) if input_shape else None
    shapes = io_shapes(model, names, probe) if probe is not None else {}
    inputs = _layer_inputs(model, names, example_input) if example_input is not None else {}
    params_before = count_params(model)
    flops_before = count_flops(model, input_shape) if input_shape else None
    rows = []
    for name in names:
        conv = model.get_submodule(name)
        seq = separable_conv(conv, inputs.get(name))
        flops = (count_flops(conv, shapes[name][0]), count_flops(seq, shapes[name][0])) if name in shapes else (None, None)
        w = conv.weight.detach().double()
        rows.append({"layer": name, "shape": list(w.shape), "params_before": count_params(conv), "params_after": count_params(seq),
                     "flops_before": flops[0], "flops_after": flops[1],
                     "rel_error": float((w - separable_weight(seq)).norm() / w.norm().clamp_min(1e-300))})
        replace_module(model, name, seq)
        record_surgery(model, KIND, layer=name)
    flops_after = count_flops(model, input_shape) if input_shape else None
    return SeparableReport(rows, params_before, count_params(model), flops_before, flops_after)


@torch.no_grad()
def _layer_inputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each named layer receives when the (unchanged) model runs on ``x`` in eval mode."""
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, a[0].detach().clone()))
               for n in names]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def separable_student(teacher: nn.Module, layers=None, example_input: torch.Tensor | None = None,
                      *, keep_first: bool = True) -> nn.Module:
    """A deep copy of ``teacher`` with its convolutions made depthwise-separable; the teacher is untouched.

    Distil it from the original next, e.g. ``modelpress.distill.distill(student, teacher, data,
    DistillConfig(...))``. The conversion report is kept as ``student.separable_report``.
    """
    student = copy.deepcopy(teacher)
    student.separable_report = to_depthwise_separable_(student, layers, example_input, keep_first=keep_first)
    return student


def replay_separable(model: nn.Module, layer: str) -> None:
    """Surgery replay: give ``model``'s Conv2d ``layer`` the depthwise-separable shape (placeholder weights)."""
    replace_module(model, layer, separable_modules(model.get_submodule(layer)))
