"""Pipelines that chain method families: Deep Compression (prune -> quantize -> encode)."""

from modelpress.pipeline.deep_compression import (
    CompressConfig,
    CompressionResult,
    DeepCompressionConfig,
    deep_compress,
    prune_and_retrain,
)

__all__ = ["CompressConfig", "CompressionResult", "DeepCompressionConfig", "deep_compress", "prune_and_retrain"]
