"""Teachers: where the targets of distillation come from.

A teacher maps a batch ``(x (B, *input_shape), idx (B,) or None)`` to logits ``(B, C)``. Three kinds:
one module, a weighted ensemble, and outputs computed once and stored (optionally truncated to the
classes that carry most of the probability mass, as Geras et al. did for 9000 speech classes).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from modelpress.core.errors import ConfigError, ModelFileError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.measure.metrics import predict_logits
from modelpress.models.ensemble import mixture_log_probs, normalized_weights


class Teacher:
    """Base class: ``teacher(x, idx) -> logits (B, C)``, always without gradient."""

    num_classes: int

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class ModuleTeacher(Teacher):
    """A single trained ``nn.Module``, run in eval mode (no dropout) at temperature 1."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.module(x)


class EnsembleTeacher(Teacher):
    """Weighted ensemble: ``p(y|x) = sum_m w_m p_m(y|x)`` with weights normalised to sum to 1.

    With two members and weights ``(gamma, 1 - gamma)`` this is the seeds' LSTM/CNN blending.
    The logits returned are ``log p``, so soft targets at any temperature derive from the
    mixture. ``combine="logits"`` instead averages raw logits (useful for Ba & Caruana regression).

    Args:
        members: trained modules with the same number of outputs.
        weights: non-negative, not all zero; default uniform.
        combine: ``"probs"`` (mixture of probabilities) or ``"logits"`` (weighted mean of logits).
    """

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float] | None = None, combine: str = "probs") -> None:
        if not members:
            raise ConfigError("an ensemble teacher needs at least one member")
        if combine not in ("probs", "logits"):
            raise ConfigError(f"combine must be 'probs' or 'logits'; got {combine!r}")
        self.members = [m.eval() for m in members]
        self.weights = normalized_weights(weights, len(members))  # (M,)
        self.combine = combine

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        outputs = [m(x) for m in self.members]
        sizes = {o.shape[-1] for o in outputs}
        if len(sizes) != 1:
            raise ShapeError(f"ensemble members disagree on the number of classes: {sorted(sizes)}")
        stacked = torch.stack(outputs)  # (M, B, C)
        if self.combine == "logits":
            return (self.weights.view(-1, 1, 1) * stacked).sum(0)
        return mixture_log_probs(stacked, self.weights)  # (B, C), the same maths as EnsembleModel


STORE_FORMAT = "modelpress-teacher-store"
STORE_VERSION = 1


@dataclass
class TeacherStore:
    """Teacher logits for every example of a data split, kept compactly.

    Row ``i`` keeps the logits of classes ``class_ids[offsets[i]:offsets[i+1]]`` (CSR layout),
    which are the fewest top classes covering ``mass`` of its probability, capped at ``max_classes``.
    ``lse[i]`` is the row's log-sum-exp over all classes, so the dropped classes can be given the
    exact leftover probability, spread evenly. With ``mass=1`` nothing is dropped and logits are exact.

    Shapes: ``offsets (N+1,) int64``, ``class_ids (nnz,) int16``, ``logits (nnz,) float16/32``,
    ``lse (N,) float32``.
    """

    offsets: torch.Tensor
    class_ids: torch.Tensor
    logits: torch.Tensor
    lse: torch.Tensor
    num_classes: int
    mass: float
    max_classes: int

    def __len__(self) -> int:
        return self.lse.shape[0]

    def dense_logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` for example indices ``idx (B,)``; dropped classes share the leftover mass."""
        idx = idx.long()
        starts, ends = self.offsets[idx], self.offsets[idx + 1]  # (B,)
        counts = ends - starts
        rows = torch.repeat_interleave(torch.arange(idx.shape[0], device=idx.device), counts)  # (nnz_b,)
        # position of each kept entry in the CSR arrays: starts[b] + j for j < counts[b], vectorised
        first_out = torch.cumsum(counts, 0) - counts  # where row b begins in the gathered output
        flat = torch.repeat_interleave(starts - first_out, counts) + torch.arange(int(counts.sum()), device=idx.device)
        kept_logits = self.logits[flat].float()
        lse = self.lse[idx]  # (B,)
        kept_mass = torch.zeros(idx.shape[0], device=idx.device).index_add_(0, rows, torch.exp(kept_logits - lse[rows]))
        dropped = (self.num_classes - counts).clamp(min=1)
        leftover = (1.0 - kept_mass).clamp(min=1e-12) / dropped  # (B,) probability per dropped class
        out = (torch.log(leftover) + lse).unsqueeze(1).repeat(1, self.num_classes)  # (B, C)
        out[rows, self.class_ids[flat].long()] = kept_logits
        return out

    def kept_mass(self) -> torch.Tensor:
        """Probability mass kept per row ``(N,)``."""
        rows = torch.repeat_interleave(torch.arange(len(self)), self.offsets[1:] - self.offsets[:-1])
        return torch.zeros(len(self)).index_add_(0, rows, torch.exp(self.logits.float() - self.lse[rows]))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.offsets, self.class_ids, self.logits, self.lse))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store as a safetensors file, atomically."""
        meta = {"format": STORE_FORMAT, "format_version": str(STORE_VERSION),
                "info": json.dumps({"num_classes": self.num_classes, "mass": self.mass, "max_classes": self.max_classes})}
        tensors = {"offsets": self.offsets, "class_ids": self.class_ids, "logits": self.logits, "lse": self.lse}
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TeacherStore":
        """Read a store written by :meth:`save`; raises ModelFileError on a missing or damaged file."""
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"teacher store {path} does not exist")
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
            info = json.loads(meta["info"])
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise ModelFileError(f"{path} is not a readable teacher store: {err}") from None
        if meta.get("format") != STORE_FORMAT or int(meta.get("format_version", 0)) > STORE_VERSION:
            raise ModelFileError(f"{path} is not a teacher store of version <= {STORE_VERSION}")
        return cls(tensors["offsets"], tensors["class_ids"], tensors["logits"], tensors["lse"],
                   int(info["num_classes"]), float(info["mass"]), int(info["max_classes"]))


def build_teacher_store(logits: torch.Tensor, *, mass: float = 1.0, max_classes: int | None = None, half: bool = False) -> TeacherStore:
    """Compress full teacher logits ``(N, C)`` into a :class:`TeacherStore`.

    Args:
        logits: teacher logits for every example, ``(N, C)``.
        mass: keep per row the fewest top classes whose probabilities sum to at least ``mass``
            (the seeds keep 0.99).
        max_classes: but never more than this many (the seeds cap at 90); default all.
        half: store the kept logits as float16 (halves the size; ~1e-3 relative error).
    """
    if not 0 < mass <= 1:
        raise ConfigError(f"mass must be in (0, 1]; got {mass}")
    n, c = logits.shape
    max_classes = c if max_classes is None else int(max_classes)
    if not 1 <= max_classes:
        raise ConfigError(f"max_classes must be at least 1; got {max_classes}")
    logits = logits.float()
    lse = torch.logsumexp(logits, dim=1)  # (N,)
    sorted_logits, order = logits.sort(dim=1, descending=True)  # (N, C)
    cum = torch.exp(sorted_logits - lse[:, None]).cumsum(dim=1)  # (N, C)
    # k_i = 1 + number of top classes whose cumulative mass is still below `mass`
    keep = ((cum < mass).sum(dim=1) + 1).clamp(max=min(max_classes, c))  # (N,)
    if mass >= 1.0:
        keep = torch.full((n,), min(max_classes, c), dtype=torch.long)
    mask = torch.arange(c)[None, :] < keep[:, None]  # (N, C)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = keep.cumsum(0)
    id_dtype = torch.uint8 if c <= 256 else torch.int16 if c <= 32767 else torch.int32
    return TeacherStore(
        offsets=offsets,
        class_ids=order[mask].to(id_dtype),
        logits=sorted_logits[mask].to(torch.float16 if half else torch.float32),
        lse=lse,
        num_classes=c,
        mass=float(mass),
        max_classes=max_classes,
    )


def precompute_teacher(teacher: Teacher | nn.Module, x: torch.Tensor, *, batch_size: int = 1024, **store_options) -> TeacherStore:
    """Run ``teacher`` once over inputs ``x (N, *input_shape)`` and store its outputs.

    ``store_options`` go to :func:`build_teacher_store` (``mass``, ``max_classes``, ``half``).
    """
    if isinstance(teacher, nn.Module):
        logits = predict_logits(teacher, x, batch_size)
    else:
        with torch.no_grad():
            logits = torch.cat([teacher(x[i : i + batch_size], None) for i in range(0, x.shape[0], batch_size)])
    return build_teacher_store(logits, **store_options)


class StoredTeacher(Teacher):
    """A teacher that looks its outputs up by example index instead of running a model."""

    def __init__(self, store: TeacherStore) -> None:
        self.store = store
        self.num_classes = store.num_classes

    def __call__(self, x: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        if idx is None:
            raise ConfigError("a stored teacher needs example indices: train from modelpress DataSplits loaders, "
                              "or a DataLoader that yields (x, y, index)")
        if int(idx.max()) >= len(self.store):
            raise ShapeError(f"example index {int(idx.max())} is outside the stored teacher outputs ({len(self.store)} rows): "
                             "the store was computed for another data split")
        return self.store.dense_logits(idx)


def as_teacher(teacher: Teacher | nn.Module | Sequence[nn.Module] | TeacherStore) -> Teacher:
    """Accept a module, a list of modules (uniform ensemble), a store or a Teacher."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return ModuleTeacher(teacher)
    if isinstance(teacher, TeacherStore):
        return StoredTeacher(teacher)
    if isinstance(teacher, (list, tuple)):
        return EnsembleTeacher(teacher)
    raise ConfigError(f"cannot use a {type(teacher).__name__} as a teacher; give an nn.Module, a list of them, or a TeacherStore")
