"""Finding and validating MNIST-layout folders (no network, no dependence on this machine's files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modelpress.core.errors import DataError, DataNotFoundError
from modelpress.data.idx import write_idx
from modelpress.data.mnist import (
    MNIST_FILES,
    find_mnist_dir,
    load_mnist_folder,
    mnist_search_path,
    pixel_stats,
)


def make_complete(folder: Path) -> Path:
    """Four empty files: enough for find_mnist_dir, which only checks presence."""
    folder.mkdir(parents=True, exist_ok=True)
    for base in MNIST_FILES.values():
        (folder / f"{base}.gz").touch()
    return folder


def test_search_order(tmp_path, isolated_env, monkeypatch):
    env = tmp_path / "env"
    monkeypatch.setenv("MODELPRESS_DATA", str(env))
    home_cache = Path.home() / ".cache" / "modelpress" / "fashion-mnist"
    user = tmp_path / "user"
    assert mnist_search_path("fashion-mnist", user) == [
        user, user / "fashion-mnist", env / "fashion-mnist", env, home_cache, isolated_env / "fashion-mnist",
    ]
    places = [make_complete(p) for p in mnist_search_path("fashion-mnist", user)]
    # Each place wins while it is complete; remove one file and the search moves on.
    for place in places:
        assert find_mnist_dir("fashion-mnist", user) == place
        (place / "t10k-labels-idx1-ubyte.gz").unlink()


def test_env_folder_itself_and_no_user_path(tmp_path, isolated_env, monkeypatch):
    env = make_complete(tmp_path / "env")
    monkeypatch.setenv("MODELPRESS_DATA", str(env))
    assert find_mnist_dir("mnist") == env


def test_system_folder_found_last(isolated_env):
    make_complete(isolated_env / "fashion-mnist")
    assert find_mnist_dir("fashion-mnist") == isolated_env / "fashion-mnist"


def test_uncompressed_files_count(tmp_path, isolated_env):
    folder = tmp_path / "raw"
    folder.mkdir()
    for base in MNIST_FILES.values():
        (folder / base).touch()
    assert find_mnist_dir("mnist", folder) == folder


def test_not_found_lists_every_place_and_how_to_get_it(tmp_path, isolated_env, monkeypatch):
    env = tmp_path / "env"
    monkeypatch.setenv("MODELPRESS_DATA", str(env))
    user = tmp_path / "user"
    user.mkdir()
    (user / "train-images-idx3-ubyte.gz").touch()  # a partial copy: the message says what is missing
    with pytest.raises(DataNotFoundError) as info:
        find_mnist_dir("fashion-mnist", user)
    message = str(info.value)
    for place in mnist_search_path("fashion-mnist", user):
        assert str(place) in message
    assert "missing train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz]" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "MODELPRESS_DATA" in message
    assert "download_mnist('fashion-mnist')" in message
    assert isinstance(info.value, FileNotFoundError)


def test_load_folder_shapes_types_and_normalisation(tiny_mnist):
    data = load_mnist_folder(tiny_mnist, val_size=50)
    assert data.name == "tiny-set"
    assert data.x_train.shape == (250, 1, 28, 28) and data.x_val.shape == (50, 1, 28, 28)
    assert data.x_test.shape == (100, 1, 28, 28)
    assert data.x_train.dtype == data.x_val.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_val.dtype == data.y_test.dtype == torch.int64
    assert data.class_names == tuple("0123456789") and data.num_classes == 10
    # The statistics are those of the whole training file, so train+val is exactly standardised.
    whole = torch.cat([data.x_train, data.x_val])
    assert abs(float(whole.mean())) < 1e-4 and abs(float(whole.std()) - 1) < 1e-3
    assert abs(float(data.x_train.mean())) < 0.05 and abs(float(data.x_train.std()) - 1) < 0.05


def test_default_val_size_scales_for_small_copies(tiny_mnist):
    data = load_mnist_folder(tiny_mnist)
    assert len(data.y_val) == 25 and len(data.y_train) == 275  # 300 / 12


def test_pixel_stats_exact():
    images = np.array([[[0, 255]]], dtype=np.uint8)
    assert pixel_stats(images) == pytest.approx((0.5, 0.5))
    assert pixel_stats(np.zeros((2, 2, 2), np.uint8)) == (0.0, 1.0)  # constant data: std 1, finite output


def test_fashion_class_names(tmp_path, make_mnist_folder):
    folder = make_mnist_folder(tmp_path / "fashion-mnist", 60, 20)
    data = load_mnist_folder(folder, val_size=10)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[-1] == "Ankle boot"


def test_missing_file_in_folder(tiny_mnist):
    (tiny_mnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_mnist_folder(tiny_mnist, val_size=10)


def test_label_out_of_range(tiny_mnist):
    write_idx(tiny_mnist / "train-labels-idx1-ubyte.gz", np.full(300, 10, np.uint8), gzip=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz holds labels from 10 to 10"):
        load_mnist_folder(tiny_mnist, val_size=10)


def test_count_mismatch(tiny_mnist):
    write_idx(tiny_mnist / "t10k-labels-idx1-ubyte.gz", np.zeros(99, np.uint8), gzip=True)
    with pytest.raises(DataError, match="holds 100 images but .* holds 99 labels"):
        load_mnist_folder(tiny_mnist, val_size=10)


def test_wrong_image_shape(tiny_mnist):
    write_idx(tiny_mnist / "t10k-images-idx3-ubyte.gz", np.zeros((100, 32, 32), np.uint8), gzip=True)
    with pytest.raises(DataError, match=r"\(100, 32, 32\); MNIST-layout images must be uint8 of shape \(N, 28, 28\)"):
        load_mnist_folder(tiny_mnist, val_size=10)


def test_truncated_file_in_folder(tiny_mnist):
    path = tiny_mnist / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is truncated"):
        load_mnist_folder(tiny_mnist, val_size=10)


def test_download_is_atomic_and_checked_without_network(tmp_path, isolated_env, monkeypatch):
    """download_mnist with urlopen replaced: files land in the cache, bad checksums leave nothing."""
    import hashlib
    import io

    from modelpress.data import mnist as mnist_module

    contents = {f"{base}.gz": f"fake {base}".encode() for base in MNIST_FILES.values()}
    checksums = {name: hashlib.md5(data).hexdigest() for name, data in contents.items()}
    monkeypatch.setattr(mnist_module, "MIRRORS", {"mnist": ("https://example.invalid/", checksums)})
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        return io.BytesIO(contents[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(mnist_module.urllib.request, "urlopen", fake_urlopen)
    folder = mnist_module.download_mnist("mnist")
    assert folder == Path.home() / ".cache" / "modelpress" / "mnist"
    assert {p.name for p in folder.iterdir()} == set(contents)
    assert find_mnist_dir("mnist") == folder
    mnist_module.download_mnist("mnist")  # everything present and verified: nothing fetched again
    assert len(fetched) == 4

    checksums["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    target = tmp_path / "elsewhere"
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz downloaded with MD5"):
        mnist_module.download_mnist("mnist", target)
    assert not (target / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]  # no half-written leftovers
