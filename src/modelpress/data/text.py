"""Short texts in named categories: Debian's ``fortunes`` package, read from its installed path.

Each category is one file of ``%``-separated entries (``/usr/share/games/fortunes/computers``, ...).
It serves twice in transformer distillation: as unlabelled text for general distillation and as a
labelled task (which category does a fortune come from?) for task-specific distillation.

Splits are stratified and *nested*: each category's texts are ordered by a permutation seeded by
``(seed, category name)`` alone, and the test, validation and training parts are consecutive slices
of that order. So loading a subset of categories, or capping each category with
``max_per_category``, gives test texts that are a subset of the full corpus's test texts, and a text
held out in one load is never trained on in another load with the same seed.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from modelpress.core.errors import ConfigError, DataError, DataNotFoundError
from modelpress.data.splitting import check_limit, check_seed

__all__ = ["FORTUNES_DIR", "TextSplits", "fortune_categories", "load_fortunes", "read_fortune_file"]

#: Where Debian/Ubuntu's ``fortunes`` package installs its category files (``MODELPRESS_FORTUNES_DIR`` overrides it).
FORTUNES_DIR = Path("/usr/share/games/fortunes")

_OVERSTRIKE = re.compile(r".\x08")  # old terminals' bold/underline: "_\bX" prints X underlined
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class TextSplits:
    """Train / validation / test texts of a text classification set.

    Texts are plain ``str``; labels are int64 tensors ``(N,)`` indexing ``categories``.
    ``info`` records the source folder, the filters and the split sizes.
    """

    categories: tuple[str, ...]
    train_texts: tuple[str, ...]
    y_train: torch.Tensor
    val_texts: tuple[str, ...]
    y_val: torch.Tensor
    test_texts: tuple[str, ...]
    y_test: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def split(self, which: str) -> tuple[tuple[str, ...], torch.Tensor]:
        """``(texts, labels)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in ("train", "val", "test"):
            raise ConfigError(f"split must be 'train', 'val' or 'test'; got {which!r}")
        return getattr(self, f"{which}_texts"), getattr(self, f"y_{which}")

    def majority_accuracy(self, which: str = "test") -> float:
        """Accuracy of always predicting the most common training category on split ``which``."""
        _, y = self.split(which)
        if not len(y):
            return float("nan")
        majority = int(torch.bincount(self.y_train, minlength=self.num_classes).argmax())
        return float((y == majority).float().mean())


def _root(root: str | os.PathLike[str] | None) -> Path:
    folder = Path(root if root is not None else os.environ.get("MODELPRESS_FORTUNES_DIR", FORTUNES_DIR))
    if not folder.is_dir():
        raise DataNotFoundError(
            f"fortunes folder {folder} does not exist; install Debian's fortunes package (apt-get install "
            "fortunes), or point root= (CLI: --fortunes-dir) or MODELPRESS_FORTUNES_DIR at a folder of fortune files"
        )
    return folder


def fortune_categories(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the category files in ``root`` (default :data:`FORTUNES_DIR`), sorted.

    Index files (``.dat``), UTF-8 copies (``.u8``), hidden files and sub-folders (``off/``, the
    offensive set) are skipped.

    Raises:
        DataNotFoundError: the folder is missing.
        DataError: it holds no category files.
    """
    folder = _root(root)
    names = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and "." not in p.name and not p.name.startswith("."))
    if not names:
        raise DataError(f"{folder} holds no fortune files (plain files without an extension)")
    return names


def read_fortune_file(path: str | os.PathLike[str]) -> list[str]:
    """The entries of one fortune file, cleaned: overstrikes removed, whitespace runs made one space.

    Entries are separated by lines holding only ``%``; empty entries are dropped. Bytes that are not
    UTF-8 (a few files are Latin-1) are replaced, never fatal.
    """
    raw = Path(path).read_bytes().decode("utf-8", errors="replace")
    entries = re.split(r"^%\s*$", raw, flags=re.MULTILINE)
    cleaned = (_SPACE.sub(" ", _OVERSTRIKE.sub("", entry)).strip() for entry in entries)
    return [text for text in cleaned if text]


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{name} must be a fraction in [0, 1); got {value!r}")
    return float(value)


def _category_order(n: int, seed: int, category: str) -> np.ndarray:
    """The seeded order of one category's texts; it depends on nothing but ``(seed, category)``."""
    return np.random.default_rng([seed, zlib.crc32(category.encode())]).permutation(n)


def _slices(n: int, val_size: float, test_size: float, cap: int | None) -> tuple[int, int, int]:
    """Test, validation and training counts of a category of ``n`` texts, the first ``cap`` of its order kept."""
    kept = n if cap is None else min(n, cap)
    n_test, n_val = int(round(kept * test_size)), int(round(kept * val_size))
    return n_test, n_val, kept - n_test - n_val


def _texts_in_several_categories(folder: Path, categories: Sequence[str]) -> set[str]:
    """Texts found in more than one category file of ``folder``: they are dropped everywhere, so a
    category's texts (and hence its split) do not depend on which other categories are loaded."""
    owner: dict[str, str] = {}
    shared: set[str] = set()
    for category in categories:
        for text in read_fortune_file(folder / category):
            if owner.setdefault(text, category) != category:
                shared.add(text)
    return shared


def _check_sizes(val_size: float, test_size: float, max_per_category: int | None, min_chars: int,
                 max_chars: int) -> tuple[float, float, int | None]:
    """The split fractions and the cap, checked.

    Raises:
        ConfigError: a fraction outside [0, 1), fractions leaving no training texts, a bad cap or
            character range.
    """
    val_size, test_size = _check_fraction("val_size", val_size), _check_fraction("test_size", test_size)
    if val_size + test_size >= 1:
        raise ConfigError(f"val_size + test_size must be below 1 to leave training texts; got {val_size + test_size}")
    max_per_category = check_limit("max_per_category", max_per_category)
    if not 0 <= min_chars <= max_chars:
        raise ConfigError(f"need 0 <= min_chars <= max_chars; got {min_chars}, {max_chars}")
    return val_size, test_size, max_per_category


def _chosen_categories(categories: Sequence[str] | None, known: list[str], folder: Path) -> list[str]:
    """The requested categories (``None``: every one in ``folder``), repeats dropped, order kept.

    Raises:
        ConfigError: a category not in ``folder``, or none at all.
    """
    if categories is None:
        categories = known
    categories = list(dict.fromkeys(categories))
    unknown = [c for c in categories if c not in known]
    if unknown:
        raise ConfigError(f"unknown fortune categories {unknown}; {folder} has: {', '.join(known)}")
    if not categories:
        raise ConfigError("categories must name at least one fortune file")
    return categories


def _category_pieces(n: int, seed: int, category: str, val_size: float, test_size: float,
                     max_per_category: int | None) -> dict[str, np.ndarray]:
    """Indices of one category's ``n`` texts for test, val and train, nested as the module docstring says."""
    order = _category_order(n, seed, category)
    n_test, n_val, n_train = _slices(n, val_size, test_size, max_per_category)
    n_test_full = int(round(n * test_size))
    # test and validation come first in the order; capped training texts come after the *uncapped*
    # held-out slices too, so a capped load never trains on what an uncapped load holds out
    start_train = n_test_full + int(round(n * val_size))
    return {"test": order[:n_test], "val": order[n_test_full:n_test_full + n_val],
            "train": order[start_train:start_train + n_train]}


def load_fortunes(
    categories: Sequence[str] | None = None,
    *,
    root: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_size: float = 0.1,
    test_size: float = 0.2,
    min_chars: int = 20,
    max_chars: int = 400,
    max_per_category: int | None = None,
) -> TextSplits:
    """Load fortunes as a category-classification set with seeded, stratified, nested splits.

    Args:
        categories: file names to use (labels follow this order); ``None`` uses every category file.
        root: folder of fortune files (default :data:`FORTUNES_DIR`); tests point it at a temp folder.
        seed: seeds the per-category order (see the module docstring for why splits nest).
        val_size, test_size: fractions of each category's (capped) texts, in [0, 1).
        min_chars, max_chars: keep texts of this many characters (after cleaning); long fortunes
            (poems, ASCII art) would be truncated by the tokenizer anyway.
        max_per_category: keep at most this many texts of each category (first of its seeded order),
            which balances the classes; ``None`` keeps all.

    Returns:
        A :class:`TextSplits`. A text found in several category files of ``root`` is dropped (it
        would carry two labels); one repeated within a category is kept once.

    Raises:
        DataNotFoundError: ``root`` (or the installed folder) is missing.
        ConfigError: an unknown category, bad sizes or filters; a requested category left empty.
    """
    seed = check_seed(seed)
    val_size, test_size, max_per_category = _check_sizes(val_size, test_size, max_per_category, min_chars, max_chars)
    folder = _root(root)
    known = fortune_categories(folder)
    categories = _chosen_categories(categories, known, folder)
    ambiguous = _texts_in_several_categories(folder, known)
    parts: dict[str, list[tuple[str, int]]] = {"train": [], "val": [], "test": []}
    counts = {}
    for label, category in enumerate(categories):
        texts = [t for t in dict.fromkeys(read_fortune_file(folder / category))
                 if min_chars <= len(t) <= max_chars and t not in ambiguous]
        if not texts:
            raise ConfigError(f"fortune category {category!r} has no texts of {min_chars}-{max_chars} characters")
        pieces = _category_pieces(len(texts), seed, category, val_size, test_size, max_per_category)
        for which, index in pieces.items():
            parts[which].extend((texts[i], label) for i in index)
        counts[category] = {which: len(index) for which, index in pieces.items()}

    def pack(which: str) -> tuple[tuple[str, ...], torch.Tensor]:
        rows = parts[which]
        return tuple(t for t, _ in rows), torch.tensor([y for _, y in rows], dtype=torch.int64)

    (tr, y_tr), (va, y_va), (te, y_te) = pack("train"), pack("val"), pack("test")
    info = {"name": "fortunes", "root": str(folder), "seed": seed, "min_chars": min_chars, "max_chars": max_chars,
            "max_per_category": max_per_category, "per_category": counts}
    return TextSplits(tuple(categories), tr, y_tr, va, y_va, te, y_te, info)
