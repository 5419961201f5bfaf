"""Measurement: the one place that counts parameters, bytes, FLOPs, latency and accuracy."""

from modelpress.measure.metrics import (
    Accuracy,
    Latency,
    check_class_count,
    count_flops,
    count_nonzero_params,
    count_params,
    evaluate_accuracy,
    file_bytes,
    measure_latency,
    measure_model,
    predict_logits,
)
from modelpress.measure.report import format_value, markdown_table, write_json

__all__ = [
    "Accuracy",
    "Latency",
    "check_class_count",
    "count_flops",
    "count_nonzero_params",
    "count_params",
    "evaluate_accuracy",
    "file_bytes",
    "format_value",
    "markdown_table",
    "measure_latency",
    "measure_model",
    "predict_logits",
    "write_json",
]
