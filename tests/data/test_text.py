"""The fortunes loader: parsing, filters, seeded stratified splits that nest across loads, clear errors."""

from __future__ import annotations

import pytest

from modelpress.core.errors import ConfigError, DataNotFoundError
from modelpress.data.text import fortune_categories, load_fortunes, read_fortune_file


def write_fortunes(root, per_category: dict[str, int]):
    """Fake fortune files: ``n`` distinct entries per category, '%'-separated, plus files the loader must skip."""
    root.mkdir(parents=True, exist_ok=True)
    for category, n in per_category.items():
        entries = [f"{category} saying number {i} is wise" for i in range(n)]
        (root / category).write_text("\n%\n".join(entries) + "\n%\n")
        (root / f"{category}.dat").write_bytes(b"\x00\x01binary index")
    (root / "off").mkdir(exist_ok=True)
    (root / "off" / "rude").write_text("never read\n%\n")
    return root


def test_read_fortune_file_cleans_entries(tmp_path):
    path = tmp_path / "cat"
    path.write_bytes(b"first  line\n  wrapped\n%\n\n%\nB\x08Bold and _\x08u\n%\nlatin \xe9\n")
    assert read_fortune_file(path) == ["first line wrapped", "Bold and u", "latin \ufffd"]


def test_categories_skip_index_files_and_folders(tmp_path):
    root = write_fortunes(tmp_path / "f", {"b": 3, "a": 3})
    assert fortune_categories(root) == ["a", "b"]


def test_splits_are_stratified_disjoint_and_labelled_in_order(tmp_path):
    root = write_fortunes(tmp_path / "f", {"art": 50, "cookie": 30})
    s = load_fortunes(["cookie", "art"], root=root, seed=3, val_size=0.1, test_size=0.2, min_chars=1)
    assert s.categories == ("cookie", "art")
    for which, share in (("test", 0.2), ("val", 0.1)):
        texts, y = s.split(which)
        assert int((y == 0).sum()) == round(30 * share) and int((y == 1).sum()) == round(50 * share)
        assert all(t.startswith(s.categories[int(label)]) for t, label in zip(texts, y))
    sets = [set(s.train_texts), set(s.val_texts), set(s.test_texts)]
    assert sum(map(len, sets)) == 80 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    again = load_fortunes(["cookie", "art"], root=root, seed=3, min_chars=1)
    other = load_fortunes(["cookie", "art"], root=root, seed=4, min_chars=1)
    assert again.test_texts == s.test_texts and other.test_texts != s.test_texts


def test_subsets_and_caps_nest_inside_the_full_split(tmp_path):
    """A text held out in one load is never a training text of another load with the same seed."""
    root = write_fortunes(tmp_path / "f", {"a": 80, "b": 60, "c": 40})
    full = load_fortunes(None, root=root, seed=0, min_chars=1)
    part = load_fortunes(["c", "a"], root=root, seed=0, min_chars=1, max_per_category=20)
    for which in ("train", "val", "test"):
        assert set(part.split(which)[0]) <= set(full.split(which)[0])
    assert len(part.test_texts) == 8 and part.majority_accuracy() == pytest.approx(0.5)


def test_texts_in_two_categories_and_length_filters_are_dropped(tmp_path):
    root = write_fortunes(tmp_path / "f", {"a": 10, "b": 10})
    (root / "c").write_text("shared text here\n%\nshort\n%\n" + "long " * 100 + "\n%\nonly in c, kept\n%\n")
    (root / "a").write_text((root / "a").read_text() + "shared text here\n%\n")
    s = load_fortunes(["c"], root=root, min_chars=10, max_chars=100, val_size=0.0, test_size=0.0)
    assert s.train_texts == ("only in c, kept",)


def test_clear_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install fortunes"):
        load_fortunes(root=tmp_path / "absent")
    root = write_fortunes(tmp_path / "f", {"a": 10})
    with pytest.raises(ConfigError, match="unknown fortune categories"):
        load_fortunes(["a", "nope"], root=root)
    with pytest.raises(ConfigError, match="val_size"):
        load_fortunes(root=root, val_size=1.5)
    with pytest.raises(ConfigError, match="below 1"):
        load_fortunes(root=root, val_size=0.5, test_size=0.5)
    with pytest.raises(ConfigError, match="no texts"):
        load_fortunes(root=root, min_chars=1000, max_chars=2000)
    with pytest.raises(ConfigError, match="max_per_category"):
        load_fortunes(root=root, max_per_category=0)
