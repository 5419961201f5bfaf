"""Latency of an ONNX file in ONNX Runtime, measured the way :func:`measure_latency` measures PyTorch.

Same inputs (``torch.randn`` seeded with 0), same warm-up, same median of timed runs and the same
time cap, so a PyTorch figure and an ONNX Runtime figure at the same thread count form a fair ratio.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError


def onnx_session(path: str | os.PathLike[str], threads: int | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU with ``threads`` intra-op threads.

    Args:
        path: an ``.onnx`` file.
        threads: intra-op threads; ``None`` uses ``torch.get_num_threads()`` so that PyTorch and
            ONNX Runtime figures are taken with the same parallelism.

    Raises:
        ModelFileError: the file is missing or is not a valid ONNX model.
        ConfigError: ``threads`` is not a positive integer.
    """
    import onnxruntime as ort  # imported here: only ONNX users pay for it

    threads = torch.get_num_threads() if threads is None else threads
    if not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads must be a positive integer; got {threads!r}")
    if not Path(path).is_file():
        raise ModelFileError(f"ONNX file {path} does not exist")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the zoo's graphs are chains: parallelism is inside operators
    options.log_severity_level = 3  # errors only: ORT's warnings would flood the CLI
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own pybind types (InvalidProtobuf, Fail, ...)
        raise ModelFileError(f"{path} is not a valid ONNX model that ONNX Runtime can run: {err}") from None


def _runs_for(batch_size: int) -> tuple[int, int]:
    """(warm-up, repeats) exactly as ``measure_model`` asks ``measure_latency`` for them."""
    return (5, 30) if batch_size < 256 else (2, 10)


def time_session(session, input_shape: tuple[int, ...], batch_size: int, *, warmup: int, repeats: int,
                 max_seconds: float = 5.0) -> tuple[float, int]:
    """Median ms of ``session.run`` on a seeded random batch ``(batch_size, *input_shape)`` and the runs timed.

    Raises:
        ShapeError: the session does not accept inputs of that shape.
    """
    x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0)).numpy()
    feed = {session.get_inputs()[0].name: x}
    try:
        for _ in range(warmup):
            session.run(None, feed)
    except Exception as err:
        raise ShapeError(f"the ONNX model does not take inputs of shape {tuple(x.shape)}: {err}") from None
    times: list[float] = []
    budget_end = time.perf_counter() + max_seconds
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
        if len(times) >= 3 and time.perf_counter() > budget_end:
            break  # a slow model cannot stall a report
    return statistics.median(times), len(times)


def measure_onnx_latency(
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 256),
    threads: int | None = None,
    repeats: int | None = None,
    *,
    warmup: int | None = None,
    max_seconds: float = 5.0,
) -> dict:
    """Median wall-clock ms per forward pass of an ONNX file in ONNX Runtime, per batch size.

    Args:
        path: the ``.onnx`` file.
        input_shape: one example's shape, e.g. ``(1, 28, 28)``.
        batch_sizes: batches to time.
        threads: intra-op threads (``None``: ``torch.get_num_threads()``).
        repeats, warmup: timed and untimed runs; ``None`` uses what ``measure_model`` uses for
            PyTorch (5 + 30 below batch 256, 2 + 10 from 256 up).
        max_seconds: stop timing a batch size after this much work (at least 3 runs).

    Returns:
        ``{"latency_ms_b1": ..., "latency_ms_b256": ..., "repeats_b1": ..., ..., "threads": n}``:
        the key names of :func:`modelpress.measure.measure_model`.

    Raises:
        ModelFileError: not a runnable ONNX file. ShapeError: wrong ``input_shape``.
    """
    if any(int(b) < 1 for b in batch_sizes):
        raise ConfigError(f"batch_sizes must be positive; got {batch_sizes}")
    session = onnx_session(path, threads)
    result: dict = {}
    for batch in batch_sizes:
        default_warmup, default_repeats = _runs_for(int(batch))
        median, runs = time_session(session, tuple(input_shape), int(batch),
                                    warmup=default_warmup if warmup is None else warmup,
                                    repeats=default_repeats if repeats is None else repeats, max_seconds=max_seconds)
        result[f"latency_ms_b{batch}"] = median
        result[f"repeats_b{batch}"] = runs
    result["threads"] = session.get_session_options().intra_op_num_threads
    return result
