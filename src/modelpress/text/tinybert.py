"""TinyBERT: layer-wise distillation of a Transformer encoder in two stages (Jiao et al. 2020, "TinyBERT:
Distilling BERT for Natural Language Understanding").

1. General distillation on unlabelled text: the student's embedding layer, hidden states and attention
   maps are fitted to the teacher's (:mod:`modelpress.text.transformer_losses`) through learned
   projections from the student's width to the teacher's; student layer ``m`` learns from teacher layer
   ``g(m)`` of the uniform mapping.
2. Task-specific distillation on the task's texts: first the same intermediate losses, then the
   prediction layer: soft cross-entropy of the student's logits against the teacher's at temperature T
   (the seeds: "20 epochs with errors of intermediate layers and then 30 epochs using errors from the
   prediction layer").

Every stage is a call of :func:`modelpress.train.train` with an objective (checkpoints, resume and
divergence checks come from there); the projections live in that objective, so they are checkpointed
with the student and carried from stage to stage.

Attention: TinyBERT fits the *unnormalised* scores ``Q K^T / sqrt(d)`` ("faster convergence and better
performance" than the softmax, Sec. 3.1), the default here. They are recomputed from forward hooks on the
query/key projections, so training keeps the fast fused (SDPA) attention kernels; ``transformers``'
``output_attentions`` would force the slow eager path and only gives probabilities (``attention="probs"``
computes those from the same hooks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Sequence

import torch
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError
from modelpress.data.text import TextSplits
from modelpress.data.tokens import model_inputs, text_loader
from modelpress.distill.features import FeatureTap
from modelpress.distill.losses import soft_target_loss
from modelpress.text.transformer import TextClassifier, attention_modules
from modelpress.text.transformer_losses import (
    attention_loss,
    attention_probabilities,
    attention_scores,
    masked_mse,
    uniform_layer_map,
)
from modelpress.train import TrainConfig, TrainResult, train

__all__ = ["AttentionTarget", "Stage", "TinyBERTConfig", "TinyBERTObjective", "TinyBERTProjections",
           "general_distillation", "task_distillation"]


class AttentionTarget(str, Enum):
    SCORES = "scores"  # TinyBERT: Q K^T / sqrt(d) before the softmax
    PROBS = "probs"  # the attention weights after the softmax


class Stage(str, Enum):
    INTERMEDIATE = "intermediate"  # embedding + hidden + attention losses
    PREDICTION = "prediction"  # soft cross-entropy on the logits


def _adamw(epochs: int, lr: float) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=32, optimizer="adamw", lr=lr, weight_decay=0.01, grad_clip=1.0)


@dataclass(frozen=True)
class TinyBERTConfig:
    """How to distil: loss weights, attention target, temperature, layer mapping and the three trainings.

    Args:
        attention: ``scores`` (TinyBERT) or ``probs``; see the module docstring.
        embedding_weight, hidden_weight, attention_weight: weights of the intermediate losses (>= 0; an
            attention weight of 0 also allows encoders whose query/key modules are not found).
        temperature: T of the prediction-layer soft cross-entropy.
        max_len: tokens kept per text.
        layer_map: teacher layer (1-based) for each student layer; ``None`` is the uniform ``g(m) = m N / M``.
        general: training of stage 1 (``None`` skips it).
        task_intermediate, task_prediction: the two parts of stage 2 (``None`` skips that part).
        seed: seeds batch order (it replaces each stage's own ``seed``).
    """

    attention: AttentionTarget = AttentionTarget.SCORES
    embedding_weight: float = 1.0
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    temperature: float = 1.0
    max_len: int = 64
    layer_map: tuple[int, ...] | None = None
    general: TrainConfig | None = field(default_factory=lambda: _adamw(3, 5e-4))
    task_intermediate: TrainConfig | None = field(default_factory=lambda: _adamw(2, 2e-4))
    task_prediction: TrainConfig | None = field(default_factory=lambda: _adamw(3, 2e-4))
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention", coerce_enum(AttentionTarget, self.attention, "attention"))
        for name in ("embedding_weight", "hidden_weight", "attention_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.embedding_weight + self.hidden_weight + self.attention_weight <= 0:
            raise ConfigError("at least one of embedding_weight, hidden_weight, attention_weight must be positive")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be positive; got {self.temperature}")
        if self.max_len < 2:
            raise ConfigError(f"max_len must be at least 2 tokens; got {self.max_len}")
        if self.layer_map is not None:
            object.__setattr__(self, "layer_map", tuple(int(g) for g in self.layer_map))
        for name in ("general", "task_intermediate", "task_prediction"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, TrainConfig):
                raise ConfigError(f"{name} must be a TrainConfig or None; got {type(value).__name__}")

    def mapping(self, student_layers: int, teacher_layers: int) -> list[int]:
        """The layer mapping for these depths, checked: one teacher layer in 1..N per student layer."""
        if self.layer_map is None:
            return uniform_layer_map(student_layers, teacher_layers)
        if len(self.layer_map) != student_layers or not all(1 <= g <= teacher_layers for g in self.layer_map):
            raise ConfigError(f"layer_map must give one teacher layer in 1..{teacher_layers} for each of the "
                              f"{student_layers} student layers; got {list(self.layer_map)}")
        return list(self.layer_map)

    def stage_config(self, which: str) -> TrainConfig | None:
        """The stage's TrainConfig with this config's seed."""
        value = getattr(self, which)
        return None if value is None else replace(value, seed=self.seed)


class TinyBERTProjections(nn.Module):
    """The learned maps ``W_e`` (embedding layer) and ``W_h`` (one per student layer) from the student's
    width ``ds`` to the teacher's ``dt``. Square ones start as the identity, so a student initialised from
    teacher layers starts with the loss of its copied weights rather than of a random projection."""

    def __init__(self, student_width: int, teacher_width: int, student_layers: int) -> None:
        super().__init__()
        self.embedding = nn.Linear(student_width, teacher_width)
        self.hidden = nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in range(student_layers))
        if student_width == teacher_width:
            with torch.no_grad():
                for layer in (self.embedding, *self.hidden):
                    layer.weight.copy_(torch.eye(teacher_width))
                    layer.bias.zero_()

    @property
    def last(self) -> nn.Linear:
        """The projection of the last layer: maps the student's sentence embedding into the teacher's space."""
        return self.hidden[-1]


class TinyBERTObjective(nn.Module):
    """The loss of one stage, ``(student_classifier, tokens, y, idx) -> scalar``, for :func:`train`.

    Args:
        teacher: the teacher :class:`TextClassifier` (its head is used only in the prediction stage); it is
            put in eval mode and its parameters are frozen (``requires_grad=False``).
        student: the student :class:`TextClassifier` (to find its attention modules).
        projections: trained with the student in the intermediate stage (registered, so checkpointed).
        config: loss weights, attention target, temperature, layer mapping.
        stage: ``intermediate`` or ``prediction``.

    After each call ``last`` holds the unweighted component losses (floats) for logs and tests.
    """

    def __init__(self, teacher: TextClassifier, student: TextClassifier, projections: TinyBERTProjections,
                 config: TinyBERTConfig, stage: Stage | str) -> None:
        super().__init__()
        object.__setattr__(self, "teacher", teacher.eval())  # not registered: never trained or checkpointed
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.projections = projections
        self.config = config
        self.stage = coerce_enum(Stage, stage, "stage")
        t_layers, s_layers = int(teacher.encoder.config.num_hidden_layers), int(student.encoder.config.num_hidden_layers)
        self.mapping = config.mapping(s_layers, t_layers)
        if len(projections.hidden) != s_layers:
            raise ConfigError(f"projections are for {len(projections.hidden)} student layers; the student has {s_layers}")
        self.t_heads = int(teacher.encoder.config.num_attention_heads)
        self.s_heads = int(student.encoder.config.num_attention_heads)
        self.t_attention = self.s_attention = None
        if self.stage is Stage.INTERMEDIATE and config.attention_weight > 0:
            self.t_attention = [attention_modules(teacher.encoder)[g - 1] for g in self.mapping]
            self.s_attention = attention_modules(student.encoder)
        self.last: dict[str, float] = {}

    def forward(self, model: TextClassifier, x: dict, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        if self.stage is Stage.PREDICTION:
            with torch.no_grad():
                teacher_logits = self.teacher(x)  # (B, C)
            loss = soft_target_loss(model(x), teacher_logits, self.config.temperature)
            self.last = {"prediction": loss.item()}
            return loss
        return self._intermediate(model, x)

    def _attention_maps(self, tap: FeatureTap, names: Sequence[tuple[str, str]], heads: int, mask) -> list:
        maps = [attention_scores(tap.outputs[q], tap.outputs[k], heads) for q, k in names]  # (B, h, L, L) each
        if self.config.attention is AttentionTarget.PROBS:
            maps = [attention_probabilities(s, mask) for s in maps]
        return maps

    def _intermediate(self, model: TextClassifier, x: dict) -> torch.Tensor:
        cfg, mask, inputs = self.config, x["attention_mask"], model_inputs(x)
        t_names = [n for pair in (self.t_attention or []) for n in pair]
        s_names = [n for pair in (self.s_attention or []) for n in pair]
        with torch.no_grad(), FeatureTap(self.teacher.encoder, t_names, detach=True, clone=False) as t_tap:
            t_states = self.teacher.encoder(**inputs, output_hidden_states=True).hidden_states  # N+1 x (B, L, dt)
        with FeatureTap(model.encoder, s_names, clone=False) as s_tap:
            s_states = model.encoder(**inputs, output_hidden_states=True).hidden_states  # M+1 x (B, L, ds)
        proj = self.projections
        # per-layer losses are averaged over the mapped layers (TinyBERT sums them): the weights then mean
        # the same for a 2-layer and a 6-layer student
        emb = masked_mse(proj.embedding(s_states[0]), t_states[0], mask)
        hidden = torch.stack([masked_mse(proj.hidden[m](s_states[m + 1]), t_states[g], mask)
                              for m, g in enumerate(self.mapping)]).mean()
        loss = cfg.embedding_weight * emb + cfg.hidden_weight * hidden
        self.last = {"embedding": emb.item(), "hidden": hidden.item()}
        if self.t_attention:
            t_maps = self._attention_maps(t_tap, self.t_attention, self.t_heads, mask)
            s_maps = self._attention_maps(s_tap, self.s_attention, self.s_heads, mask)
            att = torch.stack([attention_loss(s, t, mask) for s, t in zip(s_maps, t_maps)]).mean()
            loss = loss + cfg.attention_weight * att
            self.last["attention"] = att.item()
        return loss


def _ckpt(prefix, name: str):
    return None if prefix is None else f"{prefix}.{name}.ckpt"


def general_distillation(student: TextClassifier, teacher: TextClassifier, texts: Sequence[str],
                         config: TinyBERTConfig, projections: TinyBERTProjections, *, checkpoint_prefix=None,
                         resume: bool = False, progress: bool | None = None) -> TrainResult | None:
    """Stage 1: fit the student's embeddings, hidden states and attention to the teacher's on unlabelled ``texts``.

    Trains ``student.encoder`` and ``projections`` in place; the head is untouched. Checkpoints go to
    ``{checkpoint_prefix}.general.ckpt`` (resumable). Returns ``None`` when ``config.general`` is ``None``.
    """
    train_config = config.stage_config("general")
    if train_config is None:
        return None
    loader = text_loader(teacher_tokenizer(teacher), texts, batch_size=train_config.batch_size,
                         max_len=config.max_len, shuffle=True, seed=config.seed)
    objective = TinyBERTObjective(teacher, student, projections, config, Stage.INTERMEDIATE)
    return train(student, loader, train_config, objective=objective, checkpoint_path=_ckpt(checkpoint_prefix, "general"),
                 resume=resume, progress=progress, description="general distillation")


def task_distillation(student: TextClassifier, teacher: TextClassifier, splits: TextSplits, config: TinyBERTConfig,
                      projections: TinyBERTProjections, *, checkpoint_prefix=None, resume: bool = False,
                      progress: bool | None = None) -> dict[str, TrainResult]:
    """Stage 2 on the task's training texts: intermediate losses, then the prediction layer.

    The prediction part keeps the epoch of best validation accuracy (validation split of ``splits``).
    Returns the :class:`TrainResult` of each part that ran, by name.
    """
    tokenizer = teacher_tokenizer(teacher)
    results = {}
    for name, stage in (("task_intermediate", Stage.INTERMEDIATE), ("task_prediction", Stage.PREDICTION)):
        train_config = config.stage_config(name)
        if train_config is None:
            continue
        loader = text_loader(tokenizer, splits.train_texts, splits.y_train, batch_size=train_config.batch_size,
                             max_len=config.max_len, shuffle=True, seed=config.seed)
        val = None
        if stage is Stage.PREDICTION and len(splits.val_texts):
            val = text_loader(tokenizer, splits.val_texts, splits.y_val, batch_size=64, max_len=config.max_len)
        objective = TinyBERTObjective(teacher, student, projections, config, stage)
        results[name] = train(student, loader, train_config, objective=objective, val_loader=val,
                              checkpoint_path=_ckpt(checkpoint_prefix, name), resume=resume, progress=progress,
                              description=name.replace("_", " "))
    return results


def teacher_tokenizer(model: TextClassifier):
    """The tokenizer a classifier carries (see :meth:`TextClassifier.from_encoder`); teacher and student share it."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError("the teacher classifier carries no tokenizer; build it with TextClassifier.from_encoder")
    return tokenizer
