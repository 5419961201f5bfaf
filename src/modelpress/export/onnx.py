"""ONNX export of every compressed form ONNX can express, checked by running the file in ONNX Runtime.

A model is exported as the plain network it computes: unstructured-pruning masks are folded into
zeros (``prune.make_permanent_``), shared and binary/ternary weights into ordinary weights
(``quantize.finalize_``, ``finalize_binary_``) and QAT fake quantization is removed, all on a deep
copy so the caller's model keeps training. Structural changes (factorized, resized, replaced
layers) need nothing: they are ordinary modules already.

Why the TorchScript exporter (``dynamo=False``) is the default: on torch 2.13 it exports all seven zoo
architectures at the asked opset (17) in 0.03-0.2 s and folds eval-mode BatchNorm into the preceding
convolution, while the ``torch.export``-based exporter takes 1-4 s per model, has no opset-17
implementations (it exports opset 18 and down-converts, which failed on some zoo models, leaving
them at 18, with pages of log) and needs onnxscript.
``exporter="dynamo"`` stays available for models the TorchScript tracer mishandles.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError, ModelpressError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.measure.onnx_latency import onnx_session
from modelpress.prune.magnitude import is_pruned, make_permanent_
from modelpress.quantize.binary import finalize_binary_, is_binarized
from modelpress.quantize.sharing import finalize_, is_shared

INPUT_NAME, OUTPUT_NAME = "input", "logits"
CHECK_BATCHES = (1, 7)  # 7: an odd batch that no exported shape could have baked in


class ExportError(ModelpressError, RuntimeError):
    """The model could not be written as ONNX (an operator or layer ONNX cannot express)."""


class ExportCheckError(ExportError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the stated tolerance."""


class Exporter(str, Enum):
    TORCHSCRIPT = "torchscript"
    DYNAMO = "dynamo"


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely ONNX Runtime reproduces PyTorch (``opset``: as written in the file).

    ``max_abs_diff`` is ``max |ort - torch|`` over all checked logits; ``max_rel_diff`` is
    ``max |ort - torch| / |torch|`` over the logits with ``|torch| > atol`` (smaller ones make any
    ratio meaningless). The check passes when every logit satisfies ``|ort - torch| <= atol + rtol |torch|``
    (``numpy.allclose``). Both are ``None`` when ``checked`` is False.
    """

    path: str
    bytes: int
    opset: int
    input_shape: tuple[int, ...]
    dynamic_batch: bool
    exporter: str
    folded: tuple[str, ...]
    checked: bool
    check_batches: tuple[int, ...]
    max_abs_diff: float | None
    max_rel_diff: float | None
    atol: float
    rtol: float


def deployable_copy(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """A deep copy of ``model`` in eval mode with every reparametrization folded into plain weights.

    Returns:
        ``(copy, folded)`` where ``folded`` names what was folded: ``"pruning masks"``,
        ``"weight sharing"``, ``"binary/ternary weights"``, ``"qat fake quantization"``.
    """
    # A reparametrized layer's `weight` (pruned, shared, binary, QAT) is a plain attribute recomputed by
    # a hook, often a non-leaf tensor that deepcopy refuses; seeding the memo with detached copies
    # lets deepcopy go through and leaves the caller's model untouched.
    memo = {id(m.weight): m.weight.detach().clone() for m in model.modules()
            if "weight" not in m._parameters and isinstance(getattr(m, "weight", None), torch.Tensor)}
    clone = copy.deepcopy(model, memo)
    folded = []
    if any(is_pruned(m) for m in clone.modules()):
        make_permanent_(clone)
        folded.append("pruning masks")
    if any(is_shared(m) for m in clone.modules()):
        finalize_(clone)
        folded.append("weight sharing")
    if any(is_binarized(m) for m in clone.modules()):
        finalize_binary_(clone)
        folded.append("binary/ternary weights")
    from modelpress.quantize.qat import is_qat_prepared, strip_qat_  # qat imports this module

    if is_qat_prepared(clone):
        strip_qat_(clone)
        folded.append("qat fake quantization")
    return clone.eval(), tuple(folded)


def resolve_input_shape(model: nn.Module, input_shape=None) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints, defaulting to ``model.modelpress_spec.input_shape``.

    Raises:
        ConfigError: neither is available, or the shape is not positive integers.
    """
    if input_shape is None:
        spec = getattr(model, "modelpress_spec", None)
        if spec is None:
            raise ConfigError("input_shape is required for a model without modelpress_spec (e.g. (1, 28, 28)); got None")
        input_shape = spec.input_shape
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ConfigError(f"input_shape must be a tuple of positive integers; got {input_shape!r}") from None
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"input_shape must be a tuple of positive integers; got {input_shape!r}")
    return shape


def _validate(opset, atol, rtol, exporter) -> Exporter:
    if not (isinstance(opset, int) and 13 <= opset <= 21):
        raise ConfigError(f"opset must be an integer in [13, 21]; got {opset!r}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ConfigError(f"{name} must be a number >= 0; got {value!r}")
    return coerce_enum(Exporter, exporter, "exporter")


def _write_onnx(model: nn.Module, target: Path, shape: tuple[int, ...], opset: int, dynamic_batch: bool,
                exporter: Exporter) -> int:
    """Export to ``target``; returns the file's ONNX opset (the dynamo exporter may write a newer one)."""
    import onnx

    example = (torch.zeros(1, *shape),)
    kwargs: dict = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if exporter is Exporter.TORCHSCRIPT:
        kwargs |= {"dynamo": False, "do_constant_folding": True}
        if dynamic_batch:
            kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    else:
        kwargs |= {"dynamo": True, "external_data": False}  # one self-contained file
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch")},)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
            torch.onnx.export(model, example, str(target), **kwargs)
    except Exception as err:  # the exporters raise many types; all mean "ONNX cannot express this"
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]  # some messages append a whole graph
        raise ExportError(f"cannot export {type(model).__name__} to ONNX with the {exporter.value} exporter "
                          f"(a layer or operator ONNX opset {opset} cannot express?): {first_line}") from None
    written = onnx.load(str(target), load_external_data=False)
    return next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), opset)


def compare_outputs(onnx_path: str | os.PathLike[str], model: nn.Module, shape: tuple[int, ...],
                    batches: tuple[int, ...] = CHECK_BATCHES, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Run ONNX Runtime and PyTorch on the same seeded random inputs ``(b, *shape)`` for each ``b``.

    Returns:
        ``(ort_logits, torch_logits)``, the batches concatenated: each ``(sum(batches), C)``.

    Raises:
        ExportCheckError: ONNX Runtime cannot run the file, or its outputs have another shape.
    """
    session = onnx_session(onnx_path, threads=1)  # one thread: a check must not fight a running job
    generator = torch.Generator().manual_seed(seed)
    ours, theirs = [], []
    for batch in batches:
        x = torch.randn(batch, *shape, generator=generator)
        with torch.no_grad():
            theirs.append(model(x).numpy())
        try:
            ours.append(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        except Exception as err:
            raise ExportCheckError(f"ONNX Runtime cannot run the exported file at batch {batch}: {err}") from None
    ort_out, torch_out = np.concatenate(ours), np.concatenate(theirs)
    if ort_out.shape != torch_out.shape:
        raise ExportCheckError(f"ONNX Runtime gives outputs of shape {ort_out.shape}, PyTorch {torch_out.shape}")
    return ort_out, torch_out


def _check(target: Path, model: nn.Module, shape, batches, atol: float, rtol: float) -> tuple[float, float]:
    ort_out, torch_out = compare_outputs(target, model, shape, batches)
    diff, scale = np.abs(ort_out - torch_out), np.abs(torch_out)
    max_abs = float(diff.max())
    big = scale > atol
    max_rel = float((diff[big] / scale[big]).max()) if big.any() else 0.0
    if not np.allclose(ort_out, torch_out, atol=atol, rtol=rtol):
        raise ExportCheckError(
            f"ONNX Runtime's logits differ from PyTorch's by up to {max_abs:.3g} (relative {max_rel:.3g}) at batches "
            f"{batches}, more than atol={atol} + rtol={rtol} x |logit|; nothing was written")
    return max_abs, max_rel


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: tuple[int, ...] | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    exporter: str | Exporter = Exporter.TORCHSCRIPT,
) -> ExportReport:
    """Write ``model`` as one self-contained ONNX file, atomically, and check it in ONNX Runtime.

    Args:
        model: any ``nn.Module`` mapping ``(B, *input_shape)`` to logits; pruned, weight-shared or
            QAT-prepared layers are folded on a copy first (see :func:`deployable_copy`).
        path: the ``.onnx`` file to write.
        input_shape: one example's shape; defaults to ``model.modelpress_spec.input_shape``.
        opset: ONNX operator set version.
        dynamic_batch: let the batch dimension vary (named ``batch``); else the file takes batch 1 only.
        check: run the file in ONNX Runtime on seeded random inputs at batch 1 and 7 (batch 1 only
            when not ``dynamic_batch``) and compare with the folded PyTorch model.
        atol, rtol: the check passes when ``|ort - torch| <= atol + rtol |torch|`` for every logit.
            The defaults hold for float32 graphs (observed differences are ~1e-7).
        exporter: ``torchscript`` (default, see the module docstring) or ``dynamo``.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: a bad argument (the message names it). ShapeError: the model rejects
        ``input_shape``. ExportError: ONNX cannot express a layer. ExportCheckError: the check failed;
        in every failure case ``path`` is left as it was (no partial file).
    """
    kind = _validate(opset, atol, rtol, exporter)
    shape = resolve_input_shape(model, input_shape)
    plain, folded = deployable_copy(model)
    try:
        with torch.no_grad():
            plain(torch.zeros(1, *shape))
    except RuntimeError as err:
        raise ShapeError(f"the model cannot take inputs of shape {shape}: {err}") from None
    batches = CHECK_BATCHES if dynamic_batch else (1,)
    max_abs = max_rel = None
    with atomic_write(path) as tmp:
        written_opset = _write_onnx(plain, tmp, shape, opset, dynamic_batch, kind)
        if check:  # inside the atomic block: a failed check leaves no file behind
            max_abs, max_rel = _check(tmp, plain, shape, batches, float(atol), float(rtol))
    return ExportReport(str(path), Path(path).stat().st_size, written_opset, shape, dynamic_batch, kind.value, folded,
                        check, batches if check else (), max_abs, max_rel, float(atol), float(rtol))


class OnnxModel(nn.Module):
    """An ONNX file run by ONNX Runtime behind an ``nn.Module`` face: ``forward`` takes and returns
    torch tensors, so :func:`modelpress.measure.evaluate_accuracy` and ``predict_logits`` work on it.

    It has no parameters; ``train()``/``eval()`` change nothing.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads (``None``: ``torch.get_num_threads()``).

    Raises:
        ModelFileError: the file is missing, corrupt or not runnable.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None) -> None:
        super().__init__()
        self.path = str(path)
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def input_shape(self) -> tuple:
        """The file's input shape without the batch: ints, or names for symbolic dimensions."""
        return tuple(self.session.get_inputs()[0].shape[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *input_shape)`` float -> logits ``(B, C)`` float32 (a new CPU tensor)."""
        feed = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        try:
            out = self.session.run(None, feed)[0]
        except Exception as err:
            raise ShapeError(f"{self.path} cannot run on inputs of shape {tuple(x.shape)}: {err}") from None
        return torch.from_numpy(np.ascontiguousarray(out))

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def load_onnx(path: str | os.PathLike[str], threads: int | None = None) -> OnnxModel:
    """Open an ONNX file for inference: see :class:`OnnxModel`."""
    return OnnxModel(path, threads)
