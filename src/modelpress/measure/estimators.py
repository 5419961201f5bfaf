"""Size and prediction latency of any classifier: scikit-learn trees and ensembles, mimic MLPs.

Tabular students compete with the ensembles they replace on three things: error, size and the
time to predict one row (online serving) or many (batch scoring). Sizes are counted the same way
for every kind: tree nodes, network parameters, and the pickled bytes of what prediction needs
(the teacher kept inside a student for reference is not counted). Latencies are medians of
repeats with all candidates interleaved round-robin, so that load on the machine hits them all
alike.
"""

from __future__ import annotations

import pickle
import time
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["count_tree_nodes", "deployable_part", "estimator_size", "time_predictors"]


def deployable_part(model: Any) -> Any:
    """What ``predict`` needs: the inner tree of a born-again tree, the network of a mimic MLP, else the model."""
    for attribute in ("tree_model_", "module_"):
        if hasattr(model, attribute):
            return getattr(model, attribute)
    return model


def count_tree_nodes(model: Any) -> int | None:
    """Decision nodes plus leaves over every tree in ``model``; ``None`` when it holds no trees."""
    model = deployable_part(model)
    if hasattr(model, "tree_"):
        return int(model.tree_.node_count)
    if hasattr(model, "estimators_"):  # forests and classic gradient boosting
        trees = np.asarray(model.estimators_, dtype=object).ravel()
        return int(sum(t.tree_.node_count for t in trees))
    if hasattr(model, "_predictors"):  # HistGradientBoosting: one predictor per stage and class
        return int(sum(len(p.nodes) for stage in model._predictors for p in stage))
    return None


def estimator_size(model: Any) -> dict:
    """``{"nodes", "params", "bytes"}`` of a fitted classifier (``None`` where a count does not apply)."""
    part = deployable_part(model)
    params = None
    if hasattr(part, "parameters"):
        params = int(sum(p.numel() for p in part.parameters()))
    elif hasattr(part, "coefs_"):  # scikit-learn's MLPClassifier
        params = int(sum(w.size for w in part.coefs_) + sum(b.size for b in part.intercepts_))
    try:
        size = len(pickle.dumps(part))
    except (TypeError, pickle.PicklingError, AttributeError):  # e.g. a wrapped ONNX Runtime session
        size = None
    return {"nodes": count_tree_nodes(model), "params": params, "bytes": size}


def time_predictors(predictors: Mapping[str, Callable[[np.ndarray], Any]], x: np.ndarray, *, repeats: int = 15,
                    warmup: int = 2) -> dict[str, float]:
    """Median milliseconds per call of each ``predict(x)``, calls interleaved round-robin.

    Args:
        predictors: name -> function of rows ``(N, F)``.
        x: the rows, one batch (``N = 1`` for single-row serving).
        repeats: timed rounds; each round calls every predictor once.
        warmup: untimed rounds first.
    """
    times: dict[str, list[float]] = {name: [] for name in predictors}
    for round_ in range(warmup + repeats):
        for name, predict in predictors.items():
            start = time.perf_counter()
            predict(x)
            if round_ >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: float(np.median(values)) for name, values in times.items()}


def compare_classifiers(models: Mapping[str, Any], x: np.ndarray, y: np.ndarray, *, latency: bool = True,
                        batch_rows: int = 10_000, seed: int = 0, repeats: int = 15) -> list[dict]:
    """One row per fitted model: test error, size and latency for one row and for ``batch_rows`` rows.

    Args:
        models: name -> fitted classifier with ``predict``.
        x, y: test rows ``(N, F)`` and labels ``(N,)``.
        latency: time ``predict`` side by side (rows drawn from ``x`` with replacement for the batch).
        batch_rows, seed, repeats: the batch size, the seed drawing its rows, timed rounds.

    Returns:
        ``[{"model", "error", "errors", "n", "nodes", "params", "bytes", "ms_1_row", "ms_batch"}]``.
    """
    rows = []
    for name, model in models.items():
        wrong = int(np.sum(model.predict(x) != y))
        rows.append({"model": name, "error": wrong / len(y), "errors": wrong, "n": len(y), **estimator_size(model)})
    if latency:
        batch = x[np.random.default_rng(seed).integers(len(x), size=batch_rows)]
        single = time_predictors({n: m.predict for n, m in models.items()}, x[:1], repeats=repeats)
        many = time_predictors({n: m.predict for n, m in models.items()}, batch, repeats=max(3, repeats // 3))
        for row in rows:
            row["ms_1_row"], row["ms_batch"] = single[row["model"]], many[row["model"]]
    return rows
