"""Save a distilled text student as an ordinary Hugging Face folder, plus its task head and projection.

The folder is what ``save_pretrained`` writes (config, safetensors weights, tokenizer), so any tool that
loads Hugging Face encoders from a path loads the student, including :func:`load_encoder`. Beside it,
``modelpress_text.safetensors`` holds the classification head and the projection to the teacher's
space, and ``modelpress_text.json`` the category names and the run's facts. The folder is written
under a temporary name and renamed into place, so a crash never leaves half a model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from torch import nn

from modelpress.core.errors import ModelFileError
from modelpress.text.transformer import Encoder, TextClassifier, load_encoder

__all__ = ["LoadedStudent", "load_student", "save_student"]

HEADS_FILE = "modelpress_text.safetensors"
META_FILE = "modelpress_text.json"


def save_student(folder: str | os.PathLike[str], student: TextClassifier, *, categories: list[str],
                 projection: nn.Linear | None = None, extra: dict | None = None) -> Path:
    """Write ``student`` (encoder, tokenizer, head, optional projection) to ``folder``, atomically.

    Args:
        folder: the output folder; an existing one is replaced only once the new one is complete.
        student: a :class:`TextClassifier` carrying its tokenizer.
        categories: the class names, in label order.
        projection: the learned map from the student's width to the teacher's (its last-layer ``W_h``).
        extra: JSON-ready facts to record (teacher, config, results).

    Returns:
        The folder's path.
    """
    from safetensors.torch import save_file

    target = Path(folder)
    if len(categories) != student.head.out_features:
        raise ModelFileError(f"{len(categories)} category names for a head of {student.head.out_features} classes")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        student.encoder.save_pretrained(tmp)
        if student.tokenizer is not None:
            student.tokenizer.save_pretrained(tmp)
        tensors = {"head.weight": student.head.weight, "head.bias": student.head.bias}
        if projection is not None:
            tensors |= {"projection.weight": projection.weight, "projection.bias": projection.bias}
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / HEADS_FILE))
        meta = {"format": "modelpress-text-student", "version": 1, "categories": list(categories),
                "normalize": student.normalize, "extra": extra or {}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class LoadedStudent:
    """What :func:`load_student` returns: the classifier, its encoder, projection, categories and facts."""

    def __init__(self, classifier: TextClassifier, encoder: Encoder, projection: nn.Linear | None, meta: dict) -> None:
        self.classifier, self.encoder, self.projection, self.meta = classifier, encoder, projection, meta

    @property
    def categories(self) -> list[str]:
        return list(self.meta["categories"])


def load_student(folder: str | os.PathLike[str]) -> LoadedStudent:
    """Read a folder written by :func:`save_student`; nothing is unpickled (safetensors and JSON).

    Raises:
        ModelFileError: the folder is not a modelpress text student, or its files are damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    if not (path / META_FILE).is_file() or not (path / HEADS_FILE).is_file():
        raise ModelFileError(f"{path} is not a modelpress text student (no {META_FILE} / {HEADS_FILE}); "
                             "a plain Hugging Face encoder folder loads with load_encoder")
    try:
        meta = json.loads((path / META_FILE).read_text())
        tensors = load_file(str(path / HEADS_FILE))
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelFileError(f"cannot read the head files of {path}: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("categories"), list) or "normalize" not in meta:
        raise ModelFileError(f"{path / META_FILE} is damaged: it needs a 'categories' list and 'normalize'")
    encoder = load_encoder(path)
    classifier = TextClassifier.from_encoder(encoder, len(meta["categories"]), normalize=bool(meta["normalize"]))
    projection = None
    try:
        classifier.head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
        if "projection.weight" in tensors:
            weight = tensors["projection.weight"]
            projection = nn.Linear(weight.shape[1], weight.shape[0])
            projection.load_state_dict({"weight": weight, "bias": tensors["projection.bias"]})
    except (KeyError, RuntimeError, IndexError) as err:
        raise ModelFileError(f"the head or projection in {path / HEADS_FILE} does not fit the encoder: {err}") from None
    return LoadedStudent(classifier.eval(), encoder, projection, meta)

