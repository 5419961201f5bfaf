"""Batch augmentations: RandomShift (jitter), GaussianNoise and build_jitter."""

from __future__ import annotations

import pytest
import torch

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data.transforms import Compose, GaussianNoise, RandomShift, build_jitter


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def shift_one(image: torch.Tensor, dy: int, dx: int, fill: float) -> torch.Tensor:
    """Reference: shift a (C, H, W) image by (dy, dx), filling with ``fill``, with plain slicing."""
    out = torch.full_like(image, fill)
    _, h, w = image.shape
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def test_single_bright_pixel_stays_within_max_shift():
    x = torch.full((200, 1, 15, 15), -0.5)
    x[:, 0, 7, 7] = 3.0
    out = RandomShift(2)(x, gen())
    assert out.shape == x.shape
    positions = (out[:, 0] == 3.0).nonzero()[:, 1:]  # (row, col) of the bright pixel per example
    assert len(positions) == 200  # exactly one bright pixel each, none lost
    offsets = positions - 7
    assert offsets.abs().max() <= 2
    assert len({tuple(o) for o in offsets.tolist()}) > 10  # independent shifts per example
    assert (out[out != 3.0] == -0.5).all()  # filled with the background (batch minimum)


def test_matches_reference_shift_for_every_example():
    x = torch.randn(32, 3, 9, 11, generator=gen(1))
    out = RandomShift(3)(x, gen(2))
    fill = float(x.min())
    for b in range(len(x)):
        matches = [
            (dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
            if torch.equal(out[b], shift_one(x[b], dy, dx, fill))
        ]
        assert len(matches) == 1  # every channel moved together by one offset


def test_shift_zero_is_identity_and_seeded():
    x = torch.randn(4, 1, 6, 6)
    assert torch.equal(RandomShift(0)(x, gen()), x)
    assert torch.equal(RandomShift(2)(x, gen(5)), RandomShift(2)(x, gen(5)))


def test_shift_needs_images():
    with pytest.raises(ShapeError, match="jitter by shifting needs images"):
        RandomShift(1)(torch.zeros(8, 40), gen())
    with pytest.raises(ConfigError, match="max_shift"):
        RandomShift(-1)


def test_gaussian_noise():
    x = torch.zeros(200, 50)
    out = GaussianNoise(0.5)(x, gen())
    assert abs(float(out.std()) - 0.5) < 0.02
    assert torch.equal(GaussianNoise(0.0)(x, gen()), x)
    with pytest.raises(ConfigError, match="std"):
        GaussianNoise(-1.0)


def test_build_jitter():
    assert build_jitter(2) == RandomShift(2)
    assert build_jitter("3") == RandomShift(3)
    assert build_jitter(" shift:1 ") == RandomShift(1)
    assert build_jitter("noise:0.1") == GaussianNoise(0.1)
    assert build_jitter("shift:2+noise:0.05") == Compose((RandomShift(2), GaussianNoise(0.05)))
    for nothing in (None, "none", "off", "", 0):
        assert build_jitter(nothing) is None
    assert build_jitter(2, input_shape=(1, 28, 28)) == RandomShift(2)
    assert build_jitter("noise:0.1", input_shape=(40,)) == GaussianNoise(0.1)


@pytest.mark.parametrize(
    ("spec", "error", "pattern"),
    [
        ("blur:2", ConfigError, "unknown kind 'blur'"),
        ("shift:x", ConfigError, "'x' is not a whole number of pixels"),
        ("shift:-2", ConfigError, "non-negative"),
        (1.5, ConfigError, "noise:1.5"),
        (True, ConfigError, "jitter spec"),
        ([2], ConfigError, "jitter spec"),
    ],
)
def test_build_jitter_errors(spec, error, pattern):
    with pytest.raises(error, match=pattern):
        build_jitter(spec)


def test_build_jitter_refuses_shift_on_non_images():
    with pytest.raises(ShapeError, match="jitter by shifting needs images"):
        build_jitter(2, input_shape=(40,))
