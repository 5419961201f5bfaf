"""Report figures are real PNGs, written atomically."""

import numpy as np

from modelpress.measure.plots import plot_accuracy_vs_rate, plot_weight_histograms

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_figures_are_pngs_and_leave_no_temporary_files(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=1000) * (rng.random(1000) > 0.8)
    plot_weight_histograms({"fc1": (weights, np.linspace(-1, 1, 8)), "fc2": (weights, None)}, tmp_path / "h.png")
    plot_accuracy_vs_rate({"pruning only": [(2.0, 0.9), (10.0, 0.85)], "quantization only": [(8.0, 0.89), (16.0, 0.2)]},
                          tmp_path / "f6.png", reference_accuracy=0.9, title="t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f6.png", "h.png"]
    for name in ("f6.png", "h.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
