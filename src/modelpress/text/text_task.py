"""The text task around TinyBERT: the teacher's classification head, accuracy, a label-only baseline, the
side-by-side comparison the seeds report (share of the teacher's parameters and time), and
:func:`distill_encoder`, the whole two-stage run that the CLI and the benchmark call.

The teacher's task head is a multinomial logistic regression on the *frozen* teacher's sentence
embeddings (its C chosen on the validation split). TinyBERT fine-tunes BERT first; fitting only a head is
far cheaper on a CPU and honest about what it is: the teacher's intermediate layers stay the pretrained
ones, so stage 2's intermediate part distils the same representation as stage 1, on the task's texts.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.seed import seed_everything
from modelpress.data.text import TextSplits
from modelpress.data.tokens import model_inputs, text_loader
from modelpress.measure import count_params
from modelpress.measure.text import embedding_agreement, time_call
from modelpress.text.tinybert import (
    TinyBERTConfig,
    TinyBERTProjections,
    general_distillation,
    task_distillation,
)
from modelpress.text.transformer import Encoder, TextClassifier, encode_texts, mean_pool
from modelpress.train import TrainConfig, TrainResult, train

__all__ = ["TinyBERTResult", "compare_text_models", "distill_encoder", "fit_linear_head", "text_accuracy",
           "train_with_labels"]


def fit_linear_head(teacher: Encoder, splits: TextSplits, *, max_len: int = 64,
                    c_grid: Sequence[float] = (0.3, 1.0, 3.0, 10.0, 30.0), seed: int = 0) -> tuple[TextClassifier, dict]:
    """Any encoder as a classifier: the frozen encoder and a logistic-regression head on its sentence embeddings.

    This makes the teacher's task head, and lets a student distilled only for embeddings (stage 1) be
    scored on the task the same way.

    Returns:
        ``(classifier, info)``; ``info`` has the chosen ``C`` and each C's validation accuracy.
    """
    from sklearn.linear_model import LogisticRegression

    x_train = encode_texts(teacher, splits.train_texts, max_len=max_len).numpy()  # (N, D)
    x_val = encode_texts(teacher, splits.val_texts, max_len=max_len).numpy()
    y_train, y_val = splits.y_train.numpy(), splits.y_val.numpy()
    scores, fitted = {}, {}
    for c in c_grid:
        model = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_train, y_train)
        fitted[c] = model
        scores[c] = float((model.predict(x_val) == y_val).mean()) if len(y_val) else 0.0
    best = max(c_grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    lr = fitted[best]
    classifier = TextClassifier.from_encoder(teacher, splits.num_classes)
    weight, bias = np.asarray(lr.coef_), np.asarray(lr.intercept_)
    if weight.shape[0] == 1:  # two classes: scikit-learn keeps one logit, class 1 against class 0
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    full_w = np.zeros((splits.num_classes, weight.shape[1]))
    full_b = np.full(splits.num_classes, -1e4)  # a class absent from training is never predicted
    full_w[lr.classes_], full_b[lr.classes_] = weight, bias
    with torch.no_grad():
        classifier.head.weight.copy_(torch.from_numpy(full_w))
        classifier.head.bias.copy_(torch.from_numpy(full_b))
    return classifier.eval(), {"C": best, "val_accuracy_by_C": {str(c): s for c, s in scores.items()}}


@torch.no_grad()
def text_accuracy(classifier: TextClassifier, texts: Sequence[str], labels: torch.Tensor, *, max_len: int = 64) -> float:
    """Top-1 accuracy of ``classifier`` on ``texts`` (eval mode)."""
    was_training = classifier.training
    classifier.eval()
    correct = 0
    try:
        for batch, y, _ in text_loader(classifier.tokenizer, texts, labels, batch_size=64, max_len=max_len):
            correct += int((classifier(batch).argmax(-1) == y).sum())
    finally:
        classifier.train(was_training)
    return correct / max(len(texts), 1)


def train_with_labels(student: TextClassifier, splits: TextSplits, config: TrainConfig, *, max_len: int = 64,
                      checkpoint_path=None, resume: bool = False, progress: bool | None = None) -> TrainResult:
    """The no-distillation baseline: cross-entropy on the task labels only (best validation epoch kept)."""
    loader = text_loader(student.tokenizer, splits.train_texts, splits.y_train, batch_size=config.batch_size,
                         max_len=max_len, shuffle=True, seed=config.seed)
    val = text_loader(student.tokenizer, splits.val_texts, splits.y_val, batch_size=64, max_len=max_len) \
        if len(splits.val_texts) else None
    return train(student, loader, config, val_loader=val, checkpoint_path=checkpoint_path, resume=resume,
                 progress=progress, description="labels only")


def _embed_fn(encoder: nn.Module, batch: dict):
    inputs, mask = model_inputs(batch), batch["attention_mask"]
    return lambda: F.normalize(mean_pool(encoder(**inputs).last_hidden_state, mask), dim=-1)


def _latency(models: dict[str, nn.Module], tokenizer, texts: Sequence[str], batch_sizes: Sequence[int],
             max_len: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median ms per batch of a sentence-embedding forward, each batch padded to ``max_len`` tokens, the
    models timed in alternation for ``rounds`` rounds (load on a shared machine hits all of them alike)."""
    result = {name: {} for name in models}
    for b in batch_sizes:
        batch = next(iter(text_loader(tokenizer, list(texts[:b]), batch_size=b, max_len=max_len, pad_to=max_len)))[0]
        times = {name: [] for name in models}
        for _ in range(rounds):
            for name, encoder in models.items():
                encoder.eval()
                times[name].append(time_call(_embed_fn(encoder, batch), batch_size=b).median_ms)
        for name in models:
            result[name][b] = statistics.median(times[name])
    return result


def compare_text_models(teacher: TextClassifier, students: dict[str, tuple[TextClassifier, nn.Module | None]],
                        splits: TextSplits, heldout_texts: Sequence[str], *, max_len: int = 64, latency: bool = True,
                        batch_sizes: Sequence[int] = (1, 32), rounds: int = 3) -> list[dict]:
    """One row per model: size, embedding agreement with the teacher, task accuracy, latency and shares.

    Args:
        teacher: the teacher classifier (encoder + task head).
        students: name -> (classifier, projection to the teacher's width or None).
        splits: the task; accuracy is on its test split.
        heldout_texts: texts no model trained on, for cosine similarity and Spearman of pairwise similarities.
        latency: time the sentence-embedding forward at ``batch_sizes`` (tokens padded to ``max_len``).

    Returns:
        Rows with ``params`` (encoder), ``params_share``, ``params_non_embedding`` (without the word
        embedding table), ``cosine_mean``, ``spearman``, ``accuracy``, ``ms_b{B}`` and ``time_share_b{B}``.
    """
    t_emb = encode_texts(Encoder(teacher.encoder, teacher.tokenizer, "teacher"), heldout_texts, max_len=max_len)
    models = {"teacher": (teacher, None), **students}
    rows = []
    for name, (clf, projection) in models.items():
        enc = Encoder(clf.encoder, clf.tokenizer, name)
        cfg = clf.encoder.config
        params = count_params(clf.encoder)
        row = {"model": name, "layers": int(cfg.num_hidden_layers), "hidden": int(cfg.hidden_size),
               "heads": int(cfg.num_attention_heads), "params": params,
               "params_non_embedding": params - clf.encoder.get_input_embeddings().weight.numel()}
        if name == "teacher":
            row |= {"cosine_mean": 1.0, "cosine_min": 1.0, "spearman": 1.0}
        else:
            own = encode_texts(enc, heldout_texts, max_len=max_len)
            mapped = encode_texts(enc, heldout_texts, max_len=max_len, projection=projection) if projection else None
            row |= embedding_agreement(t_emb, own, mapped)
        row["accuracy"] = text_accuracy(clf, splits.test_texts, splits.y_test, max_len=max_len)
        rows.append(row)
    for row in rows:
        row["params_share"] = row["params"] / rows[0]["params"]
    if latency:
        times = _latency({n: m[0].encoder for n, m in models.items()}, teacher.tokenizer, heldout_texts,
                         batch_sizes, max_len, rounds)
        for row in rows:
            for b in batch_sizes:
                row[f"ms_b{b}"] = times[row["model"]][b]
                row[f"time_share_b{b}"] = times[row["model"]][b] / times["teacher"][b]
    return rows


@dataclass
class TinyBERTResult:
    """A finished two-stage run: the student, its projections, the teacher classifier and the histories.

    ``general_student`` and ``general_projection`` are copies taken after stage 1: the task stages retrain
    the encoder for the task's logits, which moves its sentence embeddings away from the teacher's, so the
    stage-1 student is the one to use (and measure) as a sentence-embedding model.
    """

    student: TextClassifier
    projections: TinyBERTProjections
    teacher: TextClassifier
    teacher_head: dict
    histories: dict[str, list[dict]] = field(default_factory=dict)
    general_student: TextClassifier | None = None
    general_projection: nn.Linear | None = None


def distill_encoder(teacher: Encoder, student: Encoder, general_texts: Sequence[str], task: TextSplits,
                    config: TinyBERTConfig = TinyBERTConfig(), *, workdir: str | Path | None = None,
                    resume: bool = False, progress: bool | None = None) -> TinyBERTResult:
    """TinyBERT end to end: fit the teacher's task head, general distillation on ``general_texts``, then
    task-specific distillation (intermediate, then prediction layer) on ``task``.

    Args:
        teacher: the pretrained encoder (e.g. ``load_encoder("minilm")``).
        student: from :func:`modelpress.text.transformer.make_student`; trained in place.
        general_texts: unlabelled texts for stage 1 (keep the task's held-out texts out of them).
        task: labelled texts for stage 2 and the teacher's head.
        config: see :class:`TinyBERTConfig`.
        workdir: checkpoints of each stage go here (``tinybert.general.ckpt`` ...); with ``resume=True`` a
            run continues where it stopped (finished stages are read back, not retrained).
    """
    seed_everything(config.seed)
    teacher_clf, head_info = fit_linear_head(teacher, task, max_len=config.max_len, seed=config.seed)
    student_clf = TextClassifier.from_encoder(student, task.num_classes)
    t_width, s_width = teacher.hidden_size, int(student.model.config.hidden_size)
    projections = TinyBERTProjections(s_width, t_width, int(student.model.config.num_hidden_layers))
    prefix = None if workdir is None else Path(workdir) / "tinybert"
    if prefix is not None:
        prefix.parent.mkdir(parents=True, exist_ok=True)
    histories, general_student, general_projection = {}, None, None
    general = general_distillation(student_clf, teacher_clf, general_texts, config, projections,
                                   checkpoint_prefix=prefix, resume=resume, progress=progress)
    if general is not None:
        histories["general"] = general.history
        general_student, general_projection = copy.deepcopy(student_clf).eval(), copy.deepcopy(projections.last)
    for name, result in task_distillation(student_clf, teacher_clf, task, config, projections,
                                          checkpoint_prefix=prefix, resume=resume, progress=progress).items():
        histories[name] = result.history
    return TinyBERTResult(student_clf.eval(), projections, teacher_clf, head_info, histories, general_student,
                          general_projection)
