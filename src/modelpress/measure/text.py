"""Figures for text encoders: agreement of sentence embeddings, and latency of a forward pass on token batches.

:func:`modelpress.measure.measure_latency` feeds a random float tensor of a given shape, which an encoder
cannot take; :func:`time_call` times any zero-argument callable the same way (warm-up, median of repeats,
a time budget, the thread count recorded).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from modelpress.core.errors import ShapeError
from modelpress.measure.metrics import Latency

__all__ = ["embedding_agreement", "pairwise_cosine_spearman", "time_call"]


def _check_rows(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ShapeError(f"need two (N, D) embedding matrices of the same N; got {tuple(a.shape)} and {tuple(b.shape)}")


def pairwise_cosine_spearman(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """Spearman rank correlation between the two models' cosine similarities of every pair of texts.

    This needs no common space: it asks whether the student ranks pairs of texts as (dis)similar in the
    same order as the teacher, the way sentence-embedding benchmarks (STS) score a model.

    Args:
        teacher: ``(N, Dt)`` embeddings, N >= 3.
        student: ``(N, Ds)`` embeddings of the same texts (any width).

    Returns:
        Spearman's rho over the ``N (N - 1) / 2`` pairs, in [-1, 1].
    """
    _check_rows(teacher, student)
    if teacher.shape[0] < 3:
        raise ShapeError(f"need at least 3 texts for pairwise similarities; got {teacher.shape[0]}")
    from scipy.stats import spearmanr

    def sims(e: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(e.double(), dim=-1)
        upper = torch.triu_indices(e.shape[0], e.shape[0], offset=1)
        return (e @ e.T)[upper[0], upper[1]]  # (N (N - 1) / 2,)

    return float(spearmanr(sims(teacher).numpy(), sims(student).numpy()).statistic)


def embedding_agreement(teacher: torch.Tensor, student: torch.Tensor, student_in_teacher_space: torch.Tensor | None = None) -> dict:
    """How well a student's sentence embeddings agree with its teacher's on the same texts.

    Args:
        teacher: ``(N, Dt)``.
        student: ``(N, Ds)``, the student's own embeddings.
        student_in_teacher_space: ``(N, Dt)``, the student's embeddings mapped to the teacher's width (its
            learned projection); ``student`` itself is used when the widths agree and this is ``None``.

    Returns:
        ``{"cosine_mean": mean cosine of each text's two embeddings (None without a common space),
        "cosine_min": the worst text, "spearman": pairwise_cosine_spearman}``.
    """
    _check_rows(teacher, student)
    common = student_in_teacher_space
    if common is None and student.shape[1] == teacher.shape[1]:
        common = student
    result = {"cosine_mean": None, "cosine_min": None, "spearman": pairwise_cosine_spearman(teacher, student)}
    if common is not None:
        _check_rows(teacher, common)
        cos = torch.nn.functional.cosine_similarity(teacher.double(), common.double(), dim=-1)  # (N,)
        result["cosine_mean"], result["cosine_min"] = float(cos.mean()), float(cos.min())
    return result


def time_call(fn: Callable[[], object], *, batch_size: int, warmup: int = 3, repeats: int = 20,
              max_seconds: float = 5.0) -> Latency:
    """Median wall-clock milliseconds of ``fn()`` under ``torch.inference_mode``, after ``warmup`` calls.

    Timed runs stop once ``max_seconds`` are spent (at least 3 runs). ``batch_size`` is only recorded.
    """
    times: list[float] = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        budget_end = time.perf_counter() + max_seconds
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000.0)
            if len(times) >= 3 and time.perf_counter() > budget_end:
                break
    return Latency(statistics.median(times), batch_size, len(times), torch.get_num_threads())
