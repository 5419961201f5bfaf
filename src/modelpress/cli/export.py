"""``modelpress export``: an ONNX file (float or int8) checked in ONNX Runtime."""

from __future__ import annotations

import argparse

import torch

from modelpress.cli.common import check_model_fits_data
from modelpress.cli.options import add_options, options_from_args
from modelpress.core.errors import ConfigError
from modelpress.data import load_dataset
from modelpress.encode import read_any_model
from modelpress.measure import markdown_table, measure_model
from modelpress.quantize.int8 import Int8Config, Int8Mode
from modelpress.recipes.schema import ExportConfig

EPILOG_EXPORT = """examples:
  modelpress export student.mpk --onnx student.onnx                          # float, checked against PyTorch
  modelpress export lenet5.mpk --onnx lenet5.int8.onnx --int8 static --data fashion-mnist --latency
  modelpress export mlp.mpk --onnx mlp.int8.onnx --int8 dynamic
  modelpress export lenet300.mpz --onnx lenet300.onnx                         # a Deep Compression file, decoded
"""


def register(sub) -> None:
    """Add ``export``."""
    p = sub.add_parser("export", help="write a model as ONNX (optionally int8), checked in ONNX Runtime",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fold any pruning masks, shared weights or binary weights, export to ONNX, run the file "
                                   "in ONNX Runtime and compare its logits with PyTorch's; with --int8, quantize it for a "
                                   "real CPU speed-up (dynamic: fully connected layers; static and qat: convolutions too).")
    p.add_argument("model", metavar="MODEL", help="a .mpk model, .ckpt checkpoint or .mpz compressed model")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--int8", dest="mode", choices=[m.value for m in Int8Mode], default=argparse.SUPPRESS,
                   help="write an int8 file instead: dynamic (no data needed), static (calibrated on --data), qat "
                        "(fine-tuned with fake quantization on --data, then static)")
    p.add_argument("--data", default=None, metavar="NAME|DIR", help="calibration (and QAT training) data; also measures accuracy")
    add_options(p, Int8Config, skip=("mode",))
    add_options(p, ExportConfig, skip=("opset",))
    p.add_argument("--latency", action="store_true", help="also time PyTorch and ONNX Runtime side by side at batch 1 and 256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_export)



def cmd_export(args: argparse.Namespace) -> dict:
    """``modelpress export``: an ONNX file (float or int8) that ONNX Runtime runs, with what it cost."""
    from modelpress.export import export_onnx, load_onnx
    from modelpress.measure.onnx_latency import measure_onnx_latency
    from modelpress.quantize import quantize_int8

    config = options_from_args(Int8Config, args)
    mode = getattr(args, "mode", None)  # no --int8: a float file
    loaded = read_any_model(args.model)
    splits = None
    if args.data:
        splits = load_dataset(args.data, seed=args.seed, limit_test=None)
        check_model_fits_data(loaded.spec, splits, str(args.model))
    elif mode in ("static", "qat"):
        raise ConfigError(f"--int8 {mode} needs --data: calibration examples (and QAT training data) come from it")
    shape = tuple(loaded.spec.input_shape)
    if mode is None:
        check = options_from_args(ExportConfig, args, opset=config.opset)
        report = export_onnx(loaded.model, args.onnx, input_shape=shape, opset=check.opset, atol=check.atol, rtol=check.rtol)
        result = {"output": str(args.onnx), "bytes": report.bytes, "opset": report.opset, "folded": list(report.folded),
                  "max_abs_diff": report.max_abs_diff, "tolerance": f"atol {report.atol} + rtol {report.rtol}"}
    else:
        calibration = None
        if splits is not None:
            g = torch.Generator().manual_seed(args.seed)
            calibration = splits.x_train[torch.randperm(len(splits.x_train), generator=g)[: config.calibration]]
        report = quantize_int8(loaded.model, args.onnx, config, calibration, input_shape=shape, data=splits,
                               train_config=config.qat_train_config(args.seed))
        result = {"output": str(args.onnx), "mode": report.mode, "bytes": report.bytes, "float_onnx_bytes": report.float_bytes,
                  "int8_weight_tensors": report.quantized_weights, "max_abs_diff": report.max_abs_diff,
                  "argmax_agreement": report.argmax_agreement, "notes": list(report.notes)}
    onnx_model = load_onnx(args.onnx)
    if splits is not None:
        result["accuracy_onnx"] = measure_model(onnx_model, splits.x_test, splits.y_test, latency=False)["accuracy"]
        result["accuracy_pytorch"] = measure_model(loaded.model, splits.x_test, splits.y_test, latency=False)["accuracy"]
    if args.latency:
        from modelpress.measure import measure_latency

        for batch in (1, 256):
            result[f"pytorch_ms_b{batch}"] = measure_latency(loaded.model, shape, batch).median_ms
        result |= {f"onnx_{k}": v for k, v in measure_onnx_latency(args.onnx, shape).items()}
    if not args.json:
        print(markdown_table([result], [k for k in result if k not in ("notes", "folded")]), end="")
    return result
