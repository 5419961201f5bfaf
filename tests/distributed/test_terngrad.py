"""TernGrad's pure functions (no process group): unbiased, 2 bits per element, lossless packing."""

from __future__ import annotations

import pytest
import torch

from modelpress.core.errors import ShapeError
from modelpress.distributed import dequantize, encoded_bytes, pack_ternary, ternarize, unpack_ternary


def test_ternarize_is_unbiased_without_clipping():
    """E[s * sign(g) * b] = g: the mean over many independent draws approaches g, layer by layer."""
    g = torch.randn(300, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 2, 300)
    sizes = [100, 150, 50]
    gen = torch.Generator().manual_seed(1)
    trials = 4000
    total = torch.zeros_like(g)
    for _ in range(trials):
        scales, codes = ternarize(g, sizes, clip=None, generator=gen)
        total += dequantize(scales, codes, sizes)
    mean = total / trials
    # each element's draw has std <= s / sqrt(trials); s <= max|g| ~ 5
    assert (mean - g).abs().max() < 5 * g.abs().max() / trials**0.5
    assert (mean - g).abs().mean() < 0.02 * g.abs().max()


def test_ternarize_codes_and_scales():
    g = torch.tensor([0.5, -1.0, 0.0, 0.25, 3.0, -3.0])
    scales, codes = ternarize(g, [4, 2], clip=None, generator=torch.Generator().manual_seed(0))
    assert codes.dtype == torch.int8 and set(codes.tolist()) <= {-1, 0, 1}
    assert scales.tolist() == [1.0, 3.0]  # per-layer max |g|
    assert codes[1] == -1 and codes[2] == 0 and codes[4] == 1 and codes[5] == -1  # |g| = s is kept for sure
    assert torch.all(torch.sign(codes.float()) * torch.sign(g) >= 0)  # never the wrong sign


def test_clipping_lowers_the_scale_to_c_sigma():
    g = torch.cat([torch.randn(999, generator=torch.Generator().manual_seed(2)), torch.tensor([100.0])])
    scales, _ = ternarize(g, [g.numel()], clip=2.5)
    assert scales[0] == pytest.approx(2.5 * float(g.square().mean().sqrt()), rel=1e-5)  # sigma about zero
    unclipped, _ = ternarize(g, [g.numel()], clip=None)
    assert unclipped[0] == 100.0


def test_constant_layer_survives_clipping():
    scales, codes = ternarize(torch.full((8,), 0.3), [8], clip=2.5)
    assert scales[0] == pytest.approx(0.3) and codes.tolist() == [1] * 8


@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 1000])
def test_pack_unpack_roundtrip(n):
    codes = torch.randint(-1, 2, (n,), generator=torch.Generator().manual_seed(n)).to(torch.int8)
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 3) // 4
    assert torch.equal(unpack_ternary(packed, n), codes)


def test_packed_bytes_are_a_sixteenth_of_fp32():
    sizes = [784 * 500, 500, 500 * 300, 300, 300 * 10, 10]
    n = sum(sizes)
    assert encoded_bytes(sizes) == 4 * len(sizes) + (n + 3) // 4
    assert 15.9 < (4 * n) / encoded_bytes(sizes) <= 16


def test_bad_shapes_are_named():
    with pytest.raises(ShapeError, match="add up"):
        ternarize(torch.zeros(10), [4, 4])
    with pytest.raises(ShapeError, match="at most 8"):
        unpack_ternary(torch.zeros(2, dtype=torch.uint8), 9)
