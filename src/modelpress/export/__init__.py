"""Export: compressed models as ONNX files checked in ONNX Runtime, and a module face to run them."""

from modelpress.export.onnx import (
    ExportCheckError,
    ExportError,
    Exporter,
    ExportReport,
    OnnxModel,
    compare_outputs,
    deployable_copy,
    export_onnx,
    load_onnx,
    resolve_input_shape,
)

__all__ = [
    "ExportCheckError",
    "ExportError",
    "ExportReport",
    "Exporter",
    "OnnxModel",
    "compare_outputs",
    "deployable_copy",
    "export_onnx",
    "load_onnx",
    "resolve_input_shape",
]
