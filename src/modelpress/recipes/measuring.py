"""The figures recorded after every stage, all from :mod:`modelpress.measure`."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from modelpress.data.base import DataSplits
from modelpress.measure import (count_flops, count_nonzero_params, count_params, evaluate_accuracy, file_bytes,
                                measure_latency)
from modelpress.prune import effective_weight, prunable_layers
from modelpress.recipes.context import StageOutput

# a layer with more distinct non-zero values than this holds ordinary float32 weights
MAX_SHARED = 256


def layer_stats(model: nn.Module) -> list[dict]:
    """Per prunable layer (Linear, Conv): ``layer``, ``weights``, ``nonzero``, ``sparsity`` (fraction of
    zeros), ``distinct`` (distinct non-zero values) and ``bits``: the bits an index into the distinct values
    needs, ``ceil(log2 distinct)``, when the values are shared (at most 256 of them, each used 4 times or
    more on average), else 32 (ordinary float32)."""
    rows = []
    for name, module in prunable_layers(model).items():
        w = effective_weight(module)
        nonzero = w[w != 0]
        distinct = int(torch.unique(nonzero).numel())
        shared = distinct <= MAX_SHARED and distinct <= nonzero.numel() // 4  # values repeat: weight sharing
        bits = max(1, math.ceil(math.log2(max(distinct, 1)))) if shared else 32
        rows.append({"layer": name, "weights": int(w.numel()), "nonzero": int(nonzero.numel()),
                     "sparsity": 1 - nonzero.numel() / max(w.numel(), 1), "distinct": distinct, "bits": bits})
    return rows


def measure_stage(out: StageOutput, splits: DataSplits, *, latency: bool = True) -> dict:
    """Accuracy (test and validation), parameters, bytes of the stage's file, FLOPs, latency and per-layer stats.

    Accuracy and latency are of ``out.model`` (an ONNX Runtime session for ONNX files); parameters,
    FLOPs and layers of ``out.counted`` when given (the PyTorch model an ONNX file was made from).

    Returns:
        A JSON-ready dict: ``accuracy``, ``errors``, ``n``, ``loss`` (test split), ``val_accuracy``,
        ``val_loss`` (None without a validation split), ``params``, ``nonzero_params``, ``bytes``, ``flops``
        (per example, a multiply-add counts 2), ``latency_ms_b1`` / ``latency_ms_b256`` (median ms per batch,
        when ``latency``), ``threads``, ``file``, ``layers`` (see :func:`layer_stats`).
    """
    if not isinstance(out.model, nn.Module):
        return measure_estimator(out, splits, latency=latency)
    counted = out.counted if out.counted is not None else out.model
    shape = splits.input_shape
    test = evaluate_accuracy(out.model, splits.x_test, splits.y_test)
    val = evaluate_accuracy(out.model, splits.x_val, splits.y_val) if len(splits.y_val) else None
    metrics = {"accuracy": test.accuracy, "errors": test.errors, "n": test.n, "loss": test.loss,
               "val_accuracy": val.accuracy if val else None, "val_loss": val.loss if val else None,
               "params": count_params(counted), "nonzero_params": count_nonzero_params(counted),
               "bytes": file_bytes(out.path), "file": out.path.name, "flops": count_flops(counted, shape)}
    if latency:
        metrics["latency_ms_b1"] = measure_latency(out.model, shape, 1).median_ms
        metrics["latency_ms_b256"] = measure_latency(out.model, shape, 256, warmup=2, repeats=10).median_ms
    metrics["threads"] = torch.get_num_threads()
    metrics["layers"] = [] if out.counted is not None else layer_stats(counted)
    return metrics


def measure_estimator(out: StageOutput, splits: DataSplits, *, latency: bool = True) -> dict:
    """The figures of :func:`measure_stage` for a scikit-learn classifier (a tree): ``params`` and
    ``nonzero_params`` count its nodes, ``flops`` and ``loss`` are None, latency is of ``predict`` on
    flat rows (medians, :func:`modelpress.measure.estimators.time_predictors`)."""
    from modelpress.measure.estimators import count_tree_nodes, time_predictors
    from modelpress.recipes.stages_trees import flat_rows

    x_test, y_test = flat_rows(splits.x_test), splits.y_test.numpy()
    errors = int((out.model.predict(x_test) != y_test).sum())
    val = None
    if len(splits.y_val):
        val = float((out.model.predict(flat_rows(splits.x_val)) == splits.y_val.numpy()).mean())
    nodes = count_tree_nodes(out.model)
    metrics = {"accuracy": 1 - errors / len(y_test), "errors": errors, "n": len(y_test), "loss": None,
               "val_accuracy": val, "val_loss": None, "params": nodes, "nonzero_params": nodes, "nodes": nodes,
               "bytes": file_bytes(out.path), "file": out.path.name, "flops": None}
    if latency:
        batch = x_test[np.random.default_rng(0).integers(len(x_test), size=256)]
        metrics["latency_ms_b1"] = time_predictors({"m": out.model.predict}, x_test[:1])["m"]
        metrics["latency_ms_b256"] = time_predictors({"m": out.model.predict}, batch)["m"]
    metrics["threads"] = torch.get_num_threads()
    metrics["layers"] = []
    return metrics
