"""Ensembles of specialists (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network", Section 5).

A generalist covers every class. Each specialist covers a subset of classes that the generalist
confuses, plus one *dustbin* class for everything else (5.1). The subsets come from k-means on the
columns of the covariance matrix of the generalist's predictions (5.2). At test time the specialists
whose subset meets the generalist's ``top_k`` classes are *active*, and the output is the full
distribution ``q`` minimising ``KL(p^g, q) + sum_{m in A_k} KL(p^m, q)`` (5.3).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, DataError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.core.options import check_declared, nested, opt
from modelpress.data.base import DataSplits
from modelpress.distill.losses import mixed_distillation_loss
from modelpress.distill.specialist_math import (
    combine_distributions,
    dustbin_logit_correction,
    enriched_indices,
    remap_labels,
    specialist_log_targets,
)
from modelpress.measure.metrics import predict_logits
from modelpress.train import TrainConfig, train


def confusable_clusters(probs: torch.Tensor, n_clusters: int, *, seed: int = 0, min_size: int = 2) -> list[list[int]]:
    """Group classes the generalist confuses (Hinton et al. 2015, Sec. 5.2).

    ``S = cov(p)`` is the ``(C, C)`` covariance of the predicted distributions; column ``S[:, j]``
    describes how class j's probability moves with every other class's, so classes that are often
    predicted together get similar columns. k-means (scikit-learn, ``n_init=10``, ``random_state=seed``)
    clusters those C columns.

    Args:
        probs: the generalist's predicted probabilities ``(N, C)``, ``N >= 2``.
        n_clusters: k of k-means, in ``[1, C]``.
        seed: seeds k-means; the same seed gives the same clusters.
        min_size: clusters with fewer classes are dropped (a singleton makes no useful specialist: the
            generalist already separates it from everything else).

    Returns:
        The kept clusters, each a sorted list of class ids, ordered by their smallest class.

    Raises:
        ShapeError: ``probs`` is not ``(N, C)`` with ``N >= 2``.
        ConfigError: ``n_clusters`` not in ``[1, C]`` or ``min_size < 1``.
    """
    if probs.dim() != 2 or probs.shape[0] < 2:
        raise ShapeError(f"probs must be (N, C) predicted distributions with N >= 2; got shape {tuple(probs.shape)}")
    c = probs.shape[1]
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or not 1 <= n_clusters <= c:
        raise ConfigError(f"n_clusters must be an integer in [1, {c}] (the number of classes); got {n_clusters!r}")
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1; got {min_size}")
    from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

    cov = torch.cov(probs.double().T)  # (C, C); symmetric, so rows are the columns
    labels = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit_predict(cov.numpy())
    clusters = [sorted(int(j) for j in range(c) if labels[j] == k) for k in range(n_clusters)]
    return sorted((cl for cl in clusters if len(cl) >= min_size), key=lambda cl: cl[0])


@dataclass(frozen=True)
class SpecialistConfig:
    """How to build and combine specialists (Hinton et al. 2015, Sec. 5).

    Args:
        n_specialists: k-means clusters asked for; singleton clusters make no specialist.
        temperature: T of the generalist's soft targets for the specialists.
        alpha: weight of the soft-target term ``T^2 KL`` on the specialist's ``C_m + 1`` outputs;
            ``1 - alpha`` weights cross-entropy on the remapped hard labels.
        special_fraction: fraction of a specialist's training set from its special classes (Hinton: 1/2).
        top_k: the generalist's n most probable classes that decide which specialists are active.
        combine_steps: gradient-descent steps on q's logits at inference.
        combine_lr: their step size. The objective is averaged over its ``1 + |A_k|`` KL terms, so its
            curvature in the logits is at most 1/2 and any step below 4 decreases it.
        init_from_generalist: copy the generalist's weights into a specialist whose architecture matches
            except for the output layer (Hinton et al. do this).
        correct_dustbin: add the prior correction of :func:`dustbin_logit_correction` at inference.
        train: training settings of every specialist.
    """

    n_specialists: int = opt(3, "integer", lo=1, flag="specialists", tunable=True,
                             help="k-means clusters of confusable classes, one specialist each")
    temperature: float = opt(2.0, lo=0, lo_open=True, tunable=True, help="T of the generalist's soft targets")
    alpha: float = opt(0.5, lo=0, hi=1, tunable=True, help="weight of the soft-target term")
    special_fraction: float = opt(0.5, lo=0, hi=1, lo_open=True, hi_open=True,
                                  help="fraction of a specialist's training set from its own classes")
    top_k: int = opt(2, "integer", lo=1, help="the generalist's most probable classes that wake specialists")
    combine_steps: int = opt(50, "integer", lo=0, expose=False)
    combine_lr: float = opt(0.5, lo=0, lo_open=True, expose=False)
    init_from_generalist: bool = opt(True, "bool", expose=False)
    correct_dustbin: bool = opt(True, "bool", expose=False)
    train: TrainConfig = nested(TrainConfig)

    def __post_init__(self) -> None:
        for name in ("n_specialists", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.combine_steps, bool) or not isinstance(self.combine_steps, int) or self.combine_steps < 0:
            raise ConfigError(f"combine_steps must be an integer >= 0; got {self.combine_steps!r}")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive; got {self.temperature!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1]; got {self.alpha!r}")
        if not 0.0 < self.special_fraction < 1.0:
            raise ConfigError(f"special_fraction must be in (0, 1); got {self.special_fraction!r}")
        if not self.combine_lr > 0:
            raise ConfigError(f"combine_lr must be positive; got {self.combine_lr!r}")
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig; got {type(self.train).__name__}")
        check_declared(self)


class SpecialistEnsemble(nn.Module):
    """A generalist and its specialists, combined as in Hinton et al. 2015, Sec. 5.3.

    ``forward(x)`` runs a small optimisation (:func:`combine_distributions`) for every example with an
    active specialist, and returns log-probabilities ``(B, C)`` detached from the models' parameters:
    this module is for inference, not for training.

    Args:
        generalist: logits ``(B, C)``.
        specialists: each gives logits ``(B, C_m + 1)``: its special classes in order, then the dustbin.
        class_sets: special classes of each specialist (ids in ``[0, C)``).
        top_k: the generalist's n most probable classes that activate specialists.
        combine_steps, combine_lr: gradient descent on q's logits.
        dustbin_offsets: added to each specialist's dustbin logit (see :func:`dustbin_logit_correction`).
    """

    def __init__(self, generalist: nn.Module, specialists: Sequence[nn.Module], class_sets: Sequence[Sequence[int]],
                 top_k: int = 2, combine_steps: int = 50, combine_lr: float = 0.5, *,
                 dustbin_offsets: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(specialists) != len(class_sets):
            raise ConfigError(f"{len(specialists)} specialists but {len(class_sets)} class sets")
        for cs in class_sets:
            if not cs or len(set(cs)) != len(cs) or min(cs) < 0:
                raise ConfigError(f"a class set must be non-empty distinct class ids >= 0; got {list(cs)}")
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1; got {top_k}")
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.class_sets = [[int(c) for c in cs] for cs in class_sets]
        self.top_k, self.combine_steps, self.combine_lr = top_k, combine_steps, combine_lr
        offsets = [0.0] * len(specialists) if dustbin_offsets is None else [float(o) for o in dustbin_offsets]
        if len(offsets) != len(specialists):
            raise ConfigError(f"{len(specialists)} specialists but {len(offsets)} dustbin offsets")
        self.register_buffer("dustbin_offsets", torch.tensor(offsets, dtype=torch.float32))

    def _active(self, gen_logits: torch.Tensor) -> torch.Tensor:
        b, c = gen_logits.shape
        if any(max(cs) >= c or len(cs) >= c for cs in self.class_sets):
            raise ShapeError(f"each specialist's classes must be among the generalist's {c} outputs and leave "
                             "at least one for its dustbin")
        top = gen_logits.topk(min(self.top_k, c), dim=1).indices  # (B, k)
        in_top = torch.zeros(b, c, dtype=torch.bool, device=gen_logits.device).scatter_(1, top, True)
        member = torch.zeros(len(self.class_sets), c, dtype=torch.bool, device=gen_logits.device)  # (M, C)
        for m, cs in enumerate(self.class_sets):
            member[m, cs] = True
        return (in_top.float() @ member.float().T) > 0  # (B, M)

    def active_specialists(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, M)`` bool: specialist m is active for example b when its classes meet the generalist's top k."""
        return self._active(self.generalist(x))

    def specialist_log_probs(self, m: int, x: torch.Tensor) -> torch.Tensor:
        """Specialist m's dustbin-corrected log-probabilities ``(B, C_m + 1)``."""
        logits = self.specialists[m](x)  # (B, C_m + 1)
        if logits.shape[1] != len(self.class_sets[m]) + 1:
            raise ShapeError(f"specialist {m} gives {logits.shape[1]} outputs; its {len(self.class_sets[m])} "
                             "special classes plus the dustbin need one more than that")
        shift = torch.zeros(logits.shape[1], device=logits.device)
        shift[-1] = self.dustbin_offsets[m]
        return F.log_softmax(logits + shift, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gen_logits = self.generalist(x)  # (B, C)
        active = self._active(gen_logits)  # (B, M)
        if not bool(active.any()):
            return F.log_softmax(gen_logits.detach(), dim=1)
        # every specialist runs on the whole batch; inactive rows are masked inside the objective
        spec = [self.specialist_log_probs(m, x) for m in range(len(self.specialists))]
        log_q, _ = combine_distributions(gen_logits, spec, self.class_sets, active,
                                         steps=self.combine_steps, lr=self.combine_lr)
        return log_q


def _last_linear_name(model: nn.Module) -> str | None:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


@torch.no_grad()
def init_from_generalist_(specialist: nn.Module, generalist: nn.Module, special: Sequence[int]) -> bool:
    """Copy the generalist into a specialist of the same architecture but a ``C_m + 1``-way output layer.

    All parameters and buffers but the last ``nn.Linear`` are copied; its rows for the special classes
    come from the generalist's rows of those classes; the dustbin row keeps its initialisation.

    Returns:
        Whether it copied: ``False`` (specialist untouched) when the state dicts differ in more than the
        output layer's row count.
    """
    head = _last_linear_name(generalist)
    g_state, s_state = generalist.state_dict(), specialist.state_dict()
    if head is None or head != _last_linear_name(specialist) or set(g_state) != set(s_state):
        return False
    head_keys = {f"{head}.weight", f"{head}.bias"}
    if any(g_state[k].shape != s_state[k].shape for k in g_state if k not in head_keys):
        return False
    if g_state[f"{head}.weight"].shape[1] != s_state[f"{head}.weight"].shape[1]:
        return False
    idx = torch.as_tensor(list(special), dtype=torch.long)
    new_state = {k: (v if k not in head_keys else s_state[k].clone()) for k, v in g_state.items()}
    for key in head_keys & set(g_state):
        new_state[key][: len(idx)] = g_state[key][idx]
    specialist.load_state_dict(new_state)
    return True


def _specialist_splits(data: DataSplits, special: list[int], fraction: float, seed: int) -> tuple[DataSplits, torch.Tensor, float]:
    """The enriched, remapped data of one specialist, its train indices and its dustbin correction."""
    c = data.num_classes
    train_idx = enriched_indices(data.y_train, special, fraction, seed=seed)
    try:  # validate on the distribution it trains on, so the best epoch is the best fit to it
        val_idx = enriched_indices(data.y_val, special, fraction, seed=seed + 1)
    except DataError:  # a small val split may lack the special classes: use all of it
        val_idx = torch.arange(len(data.y_val))
    y_tr, y_va = remap_labels(data.y_train[train_idx], special, c), remap_labels(data.y_val[val_idx], special, c)
    empty_x = data.x_train[:0]
    splits = replace(data, name=f"{data.name}-specialist", x_train=data.x_train[train_idx], y_train=y_tr,
                     x_val=data.x_val[val_idx], y_val=y_va, x_test=empty_x, y_test=y_tr[:0], num_classes=len(special) + 1)
    true_dustbin = float((remap_labels(data.y_train, special, c) == len(special)).float().mean())
    return splits, train_idx, dustbin_logit_correction(true_dustbin, float((y_tr == len(special)).float().mean()))


def _check_clusters(clusters: Sequence[Sequence[int]], c: int) -> list[list[int]]:
    for cl in clusters:
        if not cl or len(set(cl)) != len(cl) or min(cl) < 0 or max(cl) >= c or len(cl) >= c:
            raise ConfigError(f"clusters must be distinct class ids in [0, {c}) leaving at least one class for the "
                              f"dustbin; got {list(cl)}")
    return [sorted(int(j) for j in cl) for cl in clusters]


def train_specialists(
    generalist: nn.Module,
    make_specialist: Callable[[int], nn.Module],
    data: DataSplits,
    config: SpecialistConfig = SpecialistConfig(),
    *,
    clusters: Sequence[Sequence[int]] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> SpecialistEnsemble:
    """Train one specialist per cluster of confusable classes (Hinton et al. 2015, Sec. 5.1-5.3).

    Each specialist trains with :func:`~modelpress.train.train` on :func:`enriched_indices` of the train
    split, with the loss ``alpha T^2 KL(p^g_T || q_T) + (1 - alpha) CE(q, y_m)`` where ``p^g_T`` is the
    generalist's distribution grouped by :func:`specialist_log_targets` and ``y_m`` the remapped labels.

    Args:
        generalist: trained model, logits ``(B, C)``; not changed.
        make_specialist: ``k -> nn.Module`` with k outputs (special classes then dustbin); called with the
            global RNG seeded by ``config.train.seed + m`` (restored afterwards).
        data: the splits; the generalist's probabilities on the train split choose the clusters.
        config: see :class:`SpecialistConfig`.
        clusters: class subsets to use instead of :func:`confusable_clusters`.
        checkpoint_dir: ``specialist{m}.ckpt`` per specialist, plus ``clusters.json``.
        resume: continue from those; a finished specialist is loaded, not retrained.

    Returns:
        The :class:`SpecialistEnsemble` in eval mode; ``.train_results`` holds each specialist's
        :class:`~modelpress.train.TrainResult`.

    Raises:
        ShapeError: the generalist or a specialist has the wrong number of outputs.
        ConfigError: bad clusters, or a checkpoint directory made with other clusters.
        DataError: a cluster without training examples inside or outside it.
    """
    if not isinstance(data, DataSplits):
        raise ConfigError(f"train_specialists needs DataSplits; got {type(data).__name__}")
    gen_logits = predict_logits(generalist, data.x_train)  # (N, C)
    if gen_logits.shape[1] != data.num_classes:
        raise ShapeError(f"the generalist predicts {gen_logits.shape[1]} classes but the data have {data.num_classes}")
    if clusters is None:
        clusters = confusable_clusters(F.softmax(gen_logits, 1), config.n_specialists, seed=config.train.seed)
    clusters = _check_clusters(clusters, data.num_classes)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    if folder is not None:
        _record_clusters(folder / "clusters.json", clusters, resume)
    specialists, offsets, results = [], [], []
    for m, special in enumerate(clusters):
        splits, train_idx, offset = _specialist_splits(data, special, config.special_fraction, config.train.seed + 1000 * m)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed + m)
            specialist = make_specialist(len(special) + 1)
        out = predict_logits(specialist, data.x_train[:2]).shape[1]
        if out != len(special) + 1:
            raise ShapeError(f"make_specialist({len(special) + 1}) returned a model with {out} outputs")
        if config.init_from_generalist:
            init_from_generalist_(specialist, generalist, special)
        # reuse the Hinton loss: T * log p has softmax(. / T) = p, so it stands in for teacher logits
        log_targets = specialist_log_targets(gen_logits[train_idx], special, config.temperature)  # (n_m, C_m + 1)
        objective = _SpecialistObjective(config.temperature * log_targets, config)
        ckpt = None if folder is None else folder / f"specialist{m}.ckpt"
        results.append(train(specialist, splits, config.train, objective=objective, checkpoint_path=ckpt,
                             resume=resume, progress=progress, description=f"specialist {m + 1}/{len(clusters)}"))
        specialists.append(specialist)
        offsets.append(offset if config.correct_dustbin else 0.0)
    ensemble = SpecialistEnsemble(generalist, specialists, clusters, config.top_k, config.combine_steps,
                                  config.combine_lr, dustbin_offsets=offsets)
    ensemble.train_results = results  # list[TrainResult], one per specialist
    return ensemble.eval()


class _SpecialistObjective:
    """``(model, x, y, idx) -> loss`` with the generalist's grouped soft targets looked up by ``idx``."""

    def __init__(self, teacher_logits: torch.Tensor, config: SpecialistConfig) -> None:
        self.teacher_logits, self.config = teacher_logits, config

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return mixed_distillation_loss(model(x), self.teacher_logits[idx], y, alpha=self.config.alpha,
                                       temperature=self.config.temperature)


def _record_clusters(path: Path, clusters: list[list[int]], resume: bool) -> None:
    """Keep the clusters beside the checkpoints, so a resume with other clusters fails loudly."""
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        if saved != clusters:
            raise ConfigError(f"{path} holds clusters {saved} but this run has {clusters}; "
                              "resume with the same clusters or use another checkpoint_dir")
        return
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(clusters))


MANIFEST_FORMAT = "modelpress-specialists"


def write_specialists_manifest(path: str | os.PathLike[str], generalist: str, files: Sequence[dict], *, top_k: int,
                               generalist_accuracy: float | None, combined_accuracy: float | None) -> dict:
    """Write the JSON file that lists a generalist's specialists (``modelpress distill --method specialists``).

    Args:
        path: where the manifest goes (written atomically).
        generalist: the generalist's model file.
        files: ``{"file": ..., "classes": [...]}`` per specialist, in order.
        top_k, generalist_accuracy, combined_accuracy: recorded as they are.

    Returns:
        The manifest written.
    """
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "generalist": generalist, "specialists": list(files),
                "top_k": top_k, "generalist_test_accuracy": generalist_accuracy,
                "combined_test_accuracy": combined_accuracy}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest
