"""Quantization: k-means weight sharing with centroid fine-tuning (Deep Compression); binary and ternary
weights trained with a straight-through estimator (BinaryConnect, BWN, TWN, TTQ)."""

from modelpress.quantize.binary import (
    BinaryConfig,
    BinaryMode,
    BinaryReport,
    BinaryScale,
    ClipLatent,
    TernaryConfig,
    TernaryThreshold,
    binarize_,
    binary_report,
    clip_latent_,
    finalize_binary_,
    is_binarized,
    ternarize_,
)
from modelpress.quantize.kmeans import CentroidInit, assign, init_centroids, kmeans_1d
from modelpress.quantize.sharing import QuantizationReport, QuantizeConfig, finalize_, is_shared, quantize_, share_weights_

__all__ = [
    "BinaryConfig",
    "BinaryMode",
    "BinaryReport",
    "BinaryScale",
    "CentroidInit",
    "ClipLatent",
    "QuantizationReport",
    "QuantizeConfig",
    "TernaryConfig",
    "TernaryThreshold",
    "assign",
    "binarize_",
    "binary_report",
    "clip_latent_",
    "finalize_",
    "finalize_binary_",
    "init_centroids",
    "is_binarized",
    "is_shared",
    "kmeans_1d",
    "quantize_",
    "share_weights_",
    "ternarize_",
]

# int8 for ONNX Runtime: dynamic, static and quantization-aware training
from modelpress.quantize.int8 import (  # noqa: E402
    Int8Config,
    Int8Mode,
    Int8Report,
    quantize_dynamic_onnx,
    quantize_int8,
    quantize_static_onnx,
)
from modelpress.quantize.qat import convert_qat, fake_quantize, is_qat_prepared, prepare_qat_, qat_ranges, strip_qat_  # noqa: E402

__all__ += [
    "Int8Config",
    "Int8Mode",
    "Int8Report",
    "convert_qat",
    "fake_quantize",
    "is_qat_prepared",
    "prepare_qat_",
    "qat_ranges",
    "quantize_dynamic_onnx",
    "quantize_int8",
    "quantize_static_onnx",
    "strip_qat_",
]
