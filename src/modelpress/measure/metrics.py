"""Accuracy, parameters, bytes, FLOPs and latency: the single source of every figure modelpress prints."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from modelpress.core.device import module_device
from modelpress.core.errors import ShapeError


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on inputs ``x`` ``(N, *input_shape)`` -> ``(N, C)`` float32,
    on ``x``'s device whichever device the model runs on (each chunk goes to the model's)."""
    was_training = model.training
    model.eval()
    where = module_device(model)
    try:
        outputs = [model(x[i : i + batch_size].to(where)).to(x.device) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


@dataclass(frozen=True)
class Accuracy:
    """Classification result on ``n`` examples: ``errors`` of them wrong, mean ``loss`` (nats)."""

    accuracy: float
    errors: int
    n: int
    loss: float


def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> Accuracy:
    """Top-1 accuracy, error count and mean cross-entropy of ``model`` on ``(x, y)``.

    Raises:
        ShapeError: the model predicts fewer classes than the labels contain, or ``x``/``y`` differ in length.
    """
    if x.shape[0] != y.shape[0]:
        raise ShapeError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    logits = predict_logits(model, x, batch_size)
    check_class_count(logits.shape[-1], int(y.max()) + 1 if y.numel() else 0, "the model")
    loss = torch.nn.functional.cross_entropy(logits, y).item() if y.numel() else float("nan")
    errors = int((logits.argmax(dim=1) != y).sum())
    n = int(y.shape[0])
    return Accuracy(accuracy=(n - errors) / n if n else float("nan"), errors=errors, n=n, loss=loss)


def check_class_count(predicted: int, needed: int, who: str) -> None:
    """Raise ShapeError when ``who`` predicts ``predicted`` classes but labels go up to ``needed``."""
    if predicted < needed:
        raise ShapeError(f"{who} predicts {predicted} classes but the data have labels up to {needed - 1}")


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights and biases), not counting buffers such as BatchNorm statistics."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Number of parameters that are not exactly zero (what pruning leaves)."""
    return sum(int((p != 0).sum()) for p in model.parameters())


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Size of a file on disk in bytes."""
    return Path(path).stat().st_size


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one example (a multiply-add counts 2), by ``torch.utils.flop_counter``.

    Only matrix multiplications and convolutions are counted, which dominate every model in the zoo.
    Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) whose fused CPU kernel the counter cannot see
    inside (``nn.LSTM`` on torch 2.13; ``nn.GRU`` decomposes into counted matmuls) get their gate
    matmuls counted by :func:`recurrent_flops` instead, so LSTMs and CNNs compare on one scale.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    unseen: list[int] = []
    handles = [h for m in model.modules() if isinstance(m, nn.RNNBase) for h in _count_unseen_recurrent(m, counter, unseen)]
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(counter.get_total_flops()) + sum(unseen)


def recurrent_flops(rnn: nn.RNNBase, steps: int) -> int:
    """Matmul FLOPs of ``rnn`` over ``steps`` (time steps x sequences): per step, layer and direction
    ``2 G H (in + H_r)`` for the input and recurrent gate matmuls (``G`` = 4 LSTM, 3 GRU, 1 RNN gates;
    ``H_r`` = ``proj_size`` or ``H``), plus ``2 H P`` for an LSTM projection of size ``P``."""
    gates = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1)
    proj = getattr(rnn, "proj_size", 0)
    out = proj or rnn.hidden_size
    directions = 2 if rnn.bidirectional else 1
    total = 0
    for layer in range(rnn.num_layers):
        width = rnn.input_size if layer == 0 else out * directions
        total += directions * (2 * gates * rnn.hidden_size * (width + out) + 2 * rnn.hidden_size * proj)
    return total * steps


def _count_unseen_recurrent(rnn: nn.RNNBase, counter: FlopCounterMode, unseen: list[int]) -> list:
    """Hooks that add :func:`recurrent_flops` to ``unseen`` when the counter saw nothing during ``rnn``'s call."""
    before: list[int] = []

    def pre(module, args):
        before.append(counter.get_total_flops())

    def post(module, args, output):
        x = args[0]
        steps = x.data.shape[0] if isinstance(x, nn.utils.rnn.PackedSequence) else x.numel() // rnn.input_size
        if counter.get_total_flops() == before.pop():
            unseen.append(recurrent_flops(rnn, steps))

    return [rnn.register_forward_pre_hook(pre), rnn.register_forward_hook(post)]


@dataclass(frozen=True)
class Latency:
    """Median wall-clock time of one forward pass at ``batch_size``, over ``repeats`` timed runs."""

    median_ms: float
    batch_size: int
    repeats: int
    threads: int


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    *,
    warmup: int = 5,
    repeats: int = 30,
    max_seconds: float = 5.0,
) -> Latency:
    """Median forward latency on CPU in milliseconds, after ``warmup`` untimed runs.

    Runs stop early once ``max_seconds`` of timed work is spent (at least 3 runs), so a slow model
    cannot stall a report. The thread count in use is recorded since timings depend on it.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    times: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            budget_end = time.perf_counter() + max_seconds
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - start) * 1000.0)
                if len(times) >= 3 and time.perf_counter() > budget_end:
                    break
    finally:
        model.train(was_training)
    return Latency(statistics.median(times), batch_size, len(times), torch.get_num_threads())


def measure_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    path: str | os.PathLike[str] | None = None,
    latency: bool = True,
) -> dict:
    """Every headline figure of one model on one labelled set, as a flat JSON-ready dict.

    Keys: ``accuracy``, ``errors``, ``n``, ``loss``, ``params``, ``nonzero_params``, ``bytes`` (size of
    ``path`` on disk, or of the float32 parameters when no file is given), ``flops`` (per example),
    ``latency_ms_b1``, ``latency_ms_b256`` (median ms per batch), ``threads``.
    """
    acc = evaluate_accuracy(model, x, y)
    input_shape = tuple(x.shape[1:])
    params = count_params(model)
    result = {
        "accuracy": acc.accuracy,
        "errors": acc.errors,
        "n": acc.n,
        "loss": acc.loss,
        "params": params,
        "nonzero_params": count_nonzero_params(model),
        "bytes": file_bytes(path) if path is not None else 4 * params,
        "bytes_source": "file" if path is not None else "float32 parameters",
        "flops": count_flops(model, input_shape),
    }
    if latency:
        result["latency_ms_b1"] = measure_latency(model, input_shape, 1).median_ms
        result["latency_ms_b256"] = measure_latency(model, input_shape, 256, warmup=2, repeats=10).median_ms
    result["threads"] = torch.get_num_threads()
    return result
