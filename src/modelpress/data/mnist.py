"""MNIST-layout data sets: MNIST, Fashion-MNIST, or any folder of the same four IDX files.

Nothing here touches the network unless :func:`download_mnist` is called explicitly.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from modelpress.core.errors import ConfigError, DataError, DataNotFoundError
from modelpress.core.io import atomic_write
from modelpress.data.base import DataSplits
from modelpress.data.idx import read_idx
from modelpress.data.splitting import STREAM_VAL, resolve_count, split_off

__all__ = [
    "CLASS_NAMES",
    "MNIST_FILES",
    "SYSTEM_DATA_DIRS",
    "download_mnist",
    "find_mnist_dir",
    "load_mnist_folder",
    "mnist_search_path",
]

#: The four files of the MNIST layout, by role; each may also carry a ``.gz`` suffix.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: System-wide data folders searched last. Debian's ``dataset-fashion-mnist`` package installs
#: /usr/share/datasets/fashion-mnist/*.gz. A module constant so tests can monkeypatch it.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"),)

#: Environment variable naming a folder of data sets (or of one data set's files).
DATA_ENV = "MODELPRESS_DATA"

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "mnist": tuple(str(digit) for digit in range(10)),
}

# Opt-in download sources with the MD5 of each published .gz file (as torchvision checks them).
MIRRORS: dict[str, tuple[str, dict[str, str]]] = {
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}

IMAGE_SIZE = (28, 28)
NUM_CLASSES = 10
DEFAULT_VAL_SIZE = 5000


# --------------------------------------------------------------------------- finding files


def cache_dir(name: str) -> Path:
    """``~/.cache/modelpress/<name>``, where :func:`download_mnist` puts files."""
    return Path.home() / ".cache" / "modelpress" / name


def mnist_search_path(name: str, path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders :func:`find_mnist_dir` tries, in order.

    1. ``path`` itself, then ``path/<name>`` (when ``path`` is given);
    2. ``$MODELPRESS_DATA/<name>``, then ``$MODELPRESS_DATA`` itself (the sub-folder first, so
       one variable can serve several data sets);
    3. ``~/.cache/modelpress/<name>``;
    4. ``<dir>/<name>`` for each of :data:`SYSTEM_DATA_DIRS` (``/usr/share/datasets``).
    """
    candidates: list[Path] = []
    if path is not None:
        user = Path(path).expanduser()
        candidates += [user, user / name]
    env = os.environ.get(DATA_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        candidates += [root / name, root]
    candidates.append(cache_dir(name))
    candidates += [Path(system) / name for system in SYSTEM_DATA_DIRS]
    return candidates


def mnist_files(folder: str | os.PathLike[str]) -> tuple[dict[str, Path], list[str]]:
    """The four MNIST-layout files found in ``folder`` and the names of any that are missing.

    The uncompressed file is preferred when both it and the ``.gz`` exist (faster to read).
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, base in MNIST_FILES.items():
        for candidate in (folder / base, folder / f"{base}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{base}[.gz]")
    return found, missing


def find_mnist_dir(name: str, path: str | os.PathLike[str] | None = None) -> Path:
    """Find a folder holding all four MNIST-layout IDX files of data set ``name``.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"`` (other names work for your own copies in
            ``$MODELPRESS_DATA/<name>`` or ``~/.cache/modelpress/<name>``).
        path: a folder to try first (the ``data_dir`` of :func:`load_dataset`).

    Returns:
        The first folder of :func:`mnist_search_path` that holds all four files.

    Raises:
        DataNotFoundError: no folder does; the message lists every place looked at, why
            each failed, and how to get the data.
    """
    looked: list[str] = []
    for folder in mnist_search_path(name, path):
        if not folder.is_dir():
            looked.append(f"  {folder}: no such folder")
            continue
        _, missing = mnist_files(folder)
        if not missing:
            return folder
        looked.append(f"  {folder}: missing {', '.join(missing)}")
    raise DataNotFoundError(
        f"could not find the {name} data set. Looked in:\n" + "\n".join(looked) + "\n" + _how_to_get(name)
    )


def _how_to_get(name: str) -> str:
    ways = []
    if name == "fashion-mnist":
        ways.append("install the Debian/Ubuntu package: sudo apt-get install dataset-fashion-mnist")
    ways += [
        f"set {DATA_ENV} to a folder holding the four files ({', '.join(MNIST_FILES.values())}, "
        f"gzipped or not), or to a parent folder containing {name}/",
        "pass the folder explicitly (data_dir=... or the folder path as the data set name)",
    ]
    if name in MIRRORS:
        ways.append(
            f"download it once (opt-in, needs network) into {cache_dir(name)}: "
            f"python -c \"from modelpress.data import download_mnist; download_mnist('{name}')\""
        )
    return "To get it, do one of:\n" + "\n".join(f"  - {way}" for way in ways)


# --------------------------------------------------------------------------- download


def download_mnist(name: str, dest: str | os.PathLike[str] | None = None, *, timeout: float = 60.0) -> Path:
    """Download the four published ``.gz`` files of ``name`` (opt-in; never called implicitly).

    Each file is streamed to a temporary file, checked against its published MD5 and only
    then renamed into place, so an interrupted download never leaves a half file behind.
    Files already present with the right checksum are not downloaded again.

    Args:
        name: ``"fashion-mnist"`` (Zalando's S3 bucket) or ``"mnist"`` (the ossci-datasets
            S3 mirror).
        dest: target folder; ``~/.cache/modelpress/<name>`` by default, which
            :func:`find_mnist_dir` searches.
        timeout: seconds to wait for the server on each request.

    Returns:
        The folder holding the four files.

    Raises:
        ConfigError: ``name`` has no download source.
        DataError: a download failed or a file's checksum is wrong.
    """
    if name not in MIRRORS:
        raise ConfigError(f"no download source for data set {name!r}; downloadable: {', '.join(sorted(MIRRORS))}")
    base_url, checksums = MIRRORS[name]
    folder = Path(dest).expanduser() if dest is not None else cache_dir(name)
    for filename, md5 in checksums.items():
        target = folder / filename
        if target.is_file() and _md5(target) == md5:
            continue
        _download_one(base_url + filename, target, md5, timeout)
    return folder


def _download_one(url: str, target: Path, md5: str, timeout: float) -> None:
    with atomic_write(target) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError) as error:
            raise DataError(
                f"downloading {url} failed ({error}); check the network, or get the files another way "
                f"and put them in {target.parent}"
            ) from None
        actual = _md5(tmp)
        if actual != md5:
            raise DataError(f"{url} downloaded with MD5 {actual}, expected {md5}; the mirror or the transfer is bad")


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- loading


def read_mnist_folder(folder: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read and cross-check the four IDX files of an MNIST-layout folder.

    Returns:
        ``{"train_images": uint8 (N, 28, 28), "train_labels": uint8 (N,), "test_images": ...,
        "test_labels": ...}`` with labels in ``[0, 10)``.

    Raises:
        DataNotFoundError: a file is missing.
        DataError: a file is malformed, holds the wrong shape or dtype, labels fall outside
            ``[0, 10)``, or image and label counts disagree.
    """
    folder = Path(folder)
    found, missing = mnist_files(folder)
    if missing:
        raise DataNotFoundError(
            f"{folder} is not a complete MNIST-layout folder: missing {', '.join(missing)}"
        )
    arrays = {role: read_idx(path) for role, path in found.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        _check_images(found[f"{split}_images"], images)
        _check_labels(found[f"{split}_labels"], labels)
        if len(images) != len(labels):
            raise DataError(
                f"{found[f'{split}_images']} holds {len(images)} images but {found[f'{split}_labels']} "
                f"holds {len(labels)} labels; the two files must come from the same release"
            )
    return arrays


def _check_images(path: Path, images: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SIZE:
        raise DataError(
            f"{path} holds {images.dtype} data of shape {images.shape}; MNIST-layout images must be "
            f"uint8 of shape (N, 28, 28)"
        )


def _check_labels(path: Path, labels: np.ndarray) -> None:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path} holds {labels.dtype} data of shape {labels.shape}; MNIST-layout labels must be "
            f"integers of shape (N,)"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path} holds labels from {labels.min()} to {labels.max()}; MNIST-layout labels must lie "
            f"in [0, {NUM_CLASSES})"
        )


def pixel_stats(images: np.ndarray) -> tuple[float, float]:
    """Exact mean and standard deviation of uint8 ``images`` scaled to [0, 1].

    A 256-bin histogram makes this exact and cheap even for 47 million pixels (no float copy).
    """
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float((counts * values).sum() / total)
    var = float((counts * (values - mean) ** 2).sum() / total)
    # A constant image set would give std 0; dividing by 1 then keeps the data finite.
    return mean, (var**0.5 if var > 0 else 1.0)


def images_to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> normalised float32 ``(N, 1, H, W)``: ``(pixel / 255 - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)


def default_val_size(n_train: int) -> int:
    """5000, or 1/12 of a smaller training file (5000 is 1/12 of MNIST's 60000), at least 1.

    Scaling down keeps a user's reduced copy of MNIST loadable without choosing ``val_size``.
    """
    return max(1, min(DEFAULT_VAL_SIZE, round(n_train / 12)))


def load_mnist_folder(folder: str | os.PathLike[str], *, name: str | None = None, seed: int = 0,
                      val_size: int | float | None = None) -> DataSplits:
    """Load an MNIST-layout folder into normalised train / val / test splits.

    Args:
        folder: holds the four files of :data:`MNIST_FILES` (each gzipped or not).
        name: data set name; the folder's name by default. ``"fashion-mnist"`` gives the
            Fashion-MNIST class names, anything else the digits ``"0"``..``"9"``.
        seed: seeds the permutation that picks the validation examples.
        val_size: validation examples drawn from the training file: an int count or a
            float fraction in (0, 1); by default 5000 (1/12 of a training file smaller than
            60000). The rest is the train split; the test split is the t10k files.

    Returns:
        DataSplits with float32 ``(N, 1, 28, 28)`` inputs normalised by the scalar pixel mean
        and std (in units of pixel/255) of the whole training file, computed before the
        validation split so they do not depend on ``seed``; int64 labels.

    Raises:
        DataNotFoundError, DataError: see :func:`read_mnist_folder`.
        ConfigError: ``val_size`` is invalid or leaves no training examples.
    """
    folder = Path(folder)
    name = name or folder.name
    arrays = read_mnist_folder(folder)
    train_images, train_labels = arrays["train_images"], arrays["train_labels"]
    n_val = resolve_count(
        "val_size", val_size, len(train_labels), default=default_val_size(len(train_labels)),
        of_what=f"training examples in {folder}",
    )
    val_index, train_index = split_off(len(train_labels), n_val, seed, STREAM_VAL)
    mean, std = pixel_stats(train_images)

    def labels(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.int64))

    files, _ = mnist_files(folder)
    return DataSplits(
        name=name,
        x_train=images_to_tensor(train_images[train_index], mean, std),
        y_train=labels(train_labels[train_index]),
        x_val=images_to_tensor(train_images[val_index], mean, std),
        y_val=labels(train_labels[val_index]),
        x_test=images_to_tensor(arrays["test_images"], mean, std),
        y_test=labels(arrays["test_labels"]),
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES.get(name, CLASS_NAMES["mnist"]),
        mean=mean,
        std=std,
        info={
            "source": str(folder.resolve()),
            "files": {role: str(path) for role, path in files.items()},
            "seed": seed,
            "val_size": n_val,
            "split": f"val: {n_val} seeded from the training file; test: the t10k files",
        },
    )
