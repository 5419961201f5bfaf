"""Quantization: k-means weight sharing with centroid fine-tuning (Deep Compression)."""

from modelpress.quantize.kmeans import CentroidInit, assign, init_centroids, kmeans_1d
from modelpress.quantize.sharing import QuantizationReport, QuantizeConfig, finalize_, is_shared, quantize_, share_weights_

__all__ = [
    "CentroidInit",
    "QuantizationReport",
    "QuantizeConfig",
    "assign",
    "finalize_",
    "init_centroids",
    "is_shared",
    "kmeans_1d",
    "quantize_",
    "share_weights_",
]
