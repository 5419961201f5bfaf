"""What each CLI command does, as plain functions over the Python API (``cli.py`` only parses)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, data_metadata, load_dataset
from modelpress.distributed import is_main_process
from modelpress.distill import DistillConfig
from modelpress.measure import markdown_table, measure_model, write_json
from modelpress.measure.plots import plot_weight_histograms
from modelpress.pipeline import DeepCompressionConfig, deep_compress
from modelpress.prune import PruneConfig, sensitivity_sparsity
from modelpress.quantize import QuantizeConfig
from modelpress.encode import read_any_model, read_manifest
from modelpress.encode.report import (BUDGET_COLUMNS, BUDGET_HEADERS, LAYER_COLUMNS, LAYER_HEADERS, budget_rows,
                                      byte_budget, layer_rows)
from modelpress.models import build_model, read_model_file, save_model
from modelpress.models.zoo import ModelSpec
from modelpress.train import TrainConfig, train


def _say(args: argparse.Namespace, line: str) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "json", False) and is_main_process():
        print(line)


def _progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def load_data_from_args(args: argparse.Namespace) -> DataSplits:
    val_size = args.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)
    return load_dataset(args.data, seed=args.seed, val_size=val_size, limit=args.limit, limit_test=args.limit_test)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, weight_decay=args.weight_decay, schedule=args.schedule,
        max_norm=args.max_norm, grad_clip=args.grad_clip, patience=args.patience, jitter=args.jitter, seed=args.seed,
        grad_compression=getattr(args, "grad_compression", None), powersgd_rank=getattr(args, "powersgd_rank", 1),
    )


def check_model_fits_data(spec: ModelSpec, splits: DataSplits, what: str) -> None:
    """Raise ShapeError when a saved model cannot take or label this data set."""
    if tuple(spec.input_shape) != splits.input_shape:
        raise ShapeError(f"{what} expects inputs of shape {tuple(spec.input_shape)} but {splits.name} has {splits.input_shape}")
    if spec.num_classes != splits.num_classes:
        raise ShapeError(f"class-count mismatch: {what} predicts {spec.num_classes} classes but {splits.name} has {splits.num_classes}")


def _finish(args: argparse.Namespace, model, splits: DataSplits, extra: dict) -> dict:
    """Save the model, measure it on the test split, print a summary, drop the checkpoint."""
    if not is_main_process():  # under torchrun every rank holds the same trained model: rank 0 writes it
        return {}
    save_model(model, args.output, extra=extra)
    metrics = measure_model(model, splits.x_test, splits.y_test, path=args.output)
    _say(args, f"saved {args.output}: test accuracy {metrics['accuracy']:.4f} ({metrics['errors']} errors of "
               f"{metrics['n']}), {metrics['params']:,} params, {metrics['bytes']:,} bytes, "
               f"{metrics['latency_ms_b1']:.3f} ms at batch 1 ({metrics['threads']} threads)")
    checkpoint = Path(f"{args.output}.ckpt")
    if checkpoint.exists():
        checkpoint.unlink()
    return {"output": str(args.output), **metrics}


def model_options(args: argparse.Namespace) -> dict:
    """Architecture options from ``--dropout``, ``--input-dropout`` and repeated ``--model-option KEY=VALUE``.

    Values are read as JSON where they parse (``true``, ``3``, ``0.5``), else kept as text (``mean``).
    """
    options = {k: v for k, v in (("dropout", args.dropout), ("input_dropout", getattr(args, "input_dropout", None)))
               if v is not None}
    for item in getattr(args, "model_option", None) or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-option takes KEY=VALUE, got {item!r}")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


def cmd_train(args: argparse.Namespace) -> dict:
    """``modelpress train``: build a zoo model, train it, save it, measure it."""
    splits = load_data_from_args(args)
    _say(args, f"data: {splits.describe()}")
    seed_everything(args.seed)
    model = build_model(args.model, splits.input_shape, splits.num_classes, **model_options(args))
    config = train_config_from_args(args)
    result = train(model, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume,
                   progress=_progress(args), description=f"train {args.model}")
    extra = {"data": data_metadata(splits), "method": "train", "train": config.to_json(),
             "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
    return _finish(args, model, splits, extra) or None  # other ranks than 0 report nothing


def cmd_evaluate(args: argparse.Namespace) -> dict:
    """``modelpress evaluate``: every headline figure of one model file on one data split."""
    loaded = read_any_model(args.model)
    splits = load_dataset(args.data, seed=args.seed, limit_test=args.limit_test)
    check_model_fits_data(loaded.spec, splits, str(args.model))
    x, y = splits.split(args.split)
    metrics = {"model": str(args.model), "arch": loaded.spec.arch, "data": splits.name, "split": args.split,
               **measure_model(loaded.model, x, y, path=args.model, latency=not args.no_latency)}
    if not args.json:
        print(markdown_table([metrics], list(metrics)), end="")
    return metrics


def cmd_demo(args: argparse.Namespace) -> dict:
    """``modelpress demo``: the seeds' MNIST distillation experiment on a built-in data set."""
    from modelpress.demo import run_demo

    return run_demo(data=args.data, quick=args.quick, output_dir=args.output_dir, seed=args.seed,
                    progress=False if args.quiet else None, out=sys.stdout)


def parse_layer_bits(text: str, option: str) -> dict[str, int]:
    """``"fc=5,conv=8"`` -> ``{"fc": 5, "conv": 8}``; a bare number applies to both."""
    if text.strip().isdigit():
        return {"fc": int(text), "conv": int(text)}
    result = {"fc": 5, "conv": 8}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("fc", "conv") or not value.strip().isdigit():
            raise ConfigError(f"{option} must look like 'fc=5,conv=8' (keys fc and conv, integer values); got {text!r}")
        result[key.strip()] = int(value)
    return result


def cmd_compress(args: argparse.Namespace) -> dict:
    """``modelpress compress``: the three Deep Compression stages, the file, and its report."""
    if args.quality is not None and args.criterion != "magnitude":
        raise ConfigError(f"--criterion {args.criterion} goes with --sparsity; --quality is Han's threshold criterion")
    if args.teacher and not args.self_distill:
        raise ConfigError("--teacher adds to the soft targets of --self-distill; give --self-distill too")
    if args.quality is not None:
        prune = PruneConfig(criterion="threshold", quality=args.quality)
    elif args.criterion == "sensitivity":  # the per-layer targets need the model and data: set below
        prune = PruneConfig(sparsity=0.9 if args.sparsity is None else args.sparsity)
    else:
        prune = PruneConfig(criterion=args.criterion, sparsity=0.9 if args.sparsity is None else args.sparsity)
    bits, index_bits = parse_layer_bits(args.bits, "--bits"), parse_layer_bits(args.index_bits, "--index-bits")
    config = DeepCompressionConfig(
        prune=prune, prune_steps=args.prune_steps,
        prune_retrain=TrainConfig(epochs=args.retrain_epochs, lr=args.retrain_lr, batch_size=args.batch_size,
                                  seed=args.seed) if args.retrain_epochs else None,
        quantize=QuantizeConfig(bits_fc=bits["fc"], bits_conv=bits["conv"], init=args.init, seed=args.seed),
        quantize_retrain=(TrainConfig(epochs=args.finetune_epochs, optimizer="adam", lr=args.finetune_lr,
                                      batch_size=args.batch_size, schedule="constant", seed=args.seed)
                          if args.finetune_epochs else None),
        index_bits_fc=index_bits["fc"], index_bits_conv=index_bits["conv"],
        self_distill=DistillConfig(temperature=args.temperature, alpha=args.alpha) if args.self_distill else None,
        gradual=args.gradual, context_masks=not args.no_context_masks, float16=args.float16,
    )
    # the whole config is checked above, before the model and data are read or any training starts
    loaded = read_model_file(args.model)
    splits = load_data_from_args(args)
    check_model_fits_data(loaded.spec, splits, str(args.model))
    teachers = []
    for path in args.teacher:
        teacher = read_model_file(path)
        check_model_fits_data(teacher.spec, splits, f"teacher {path}")
        teachers.append(teacher.model)
    _say(args, f"data: {splits.describe()}")
    allocation = None
    if args.criterion == "sensitivity":
        allocation = sensitivity_sparsity(loaded.model, splits.x_val, splits.y_val, prune.sparsity)
        config = replace(config, prune=PruneConfig(sparsity=0.0, layer_sparsity=allocation))
        _say(args, "sensitivity allocation: " + ", ".join(f"{name} {s:.2f}" for name, s in allocation.items()))
    seed_everything(args.seed)
    # the uncompressed model teaches, with the other teachers as an ensemble (deep_compress copies them all before pruning)
    teacher = [loaded.model, *teachers] if teachers else None
    result = deep_compress(loaded.model, splits, config, args.output, teacher=teacher, progress=_progress(args))
    report = write_compression_report(result, Path(args.output), title=f"{loaded.spec.arch} on {splits.name}")
    _say(args, report)
    summary = result.summary_rows()
    return {"output": str(args.output), "reference_error_percent": summary[0]["error_percent"],
            "compressed_error_percent": summary[-1]["error_percent"], "bytes": result.compressed["bytes"],
            "rate": summary[-1]["rate"], "layers": result.layers, "allocation": allocation}


def write_compression_report(result, output: Path, title: str) -> str:
    """``OUT.report.md`` (summary + per-layer tables), ``OUT.report.json`` and ``OUT.hist.png``."""
    base = output.with_suffix("")
    summary = markdown_table(result.summary_rows(), ["model", "error_percent", "bytes", "rate"],
                             ["Model", "Top-1 error (%)", "Bytes", "Compress rate"])
    layers = markdown_table(result.layers, LAYER_COLUMNS, LAYER_HEADERS)
    budget = byte_budget(result.stream_stats, result.compressed["bytes"])
    where = markdown_table(budget_rows(budget), BUDGET_COLUMNS, BUDGET_HEADERS)
    text = (f"# Deep Compression: {title}\n\n{summary}\n{layers}\nWhere the bytes go (each coded stream takes the "
            f"smaller of Huffman and ANS):\n\n{where}\nHistograms: {base.name}.hist.png\n")
    with atomic_write(f"{base}.report.md") as tmp:
        tmp.write_text(text)
    write_json(f"{base}.report.json", {"summary": result.summary_rows(), "layers": result.layers,
                                       "reference": result.reference, "pruned": result.pruned, "compressed": result.compressed,
                                       "byte_budget": budget})
    plot_weight_histograms(result.histograms, f"{base}.hist.png")
    return text


def cmd_inspect(args: argparse.Namespace) -> dict:
    """``modelpress inspect``: manifest and per-layer table of a compressed file, without decoding it."""
    manifest, payload = read_manifest(args.file)
    rows = layer_rows(manifest)
    info = {"file": str(args.file), "bytes": Path(args.file).stat().st_size, "arch": manifest["spec"]["arch"],
            "input_shape": manifest["spec"]["input_shape"], "num_classes": manifest["spec"]["num_classes"],
            "tensors": len(manifest["tensors"]), "payload_bytes": len(payload), "extra": manifest.get("extra", {}),
            "layers": rows}
    if not args.json:
        print(f"{info['file']}: {info['arch']}, {info['bytes']:,} bytes ({info['payload_bytes']:,} payload), "
              f"{info['tensors']} tensors, checksum OK")
        print(markdown_table(rows, LAYER_COLUMNS, LAYER_HEADERS), end="")
    return info


def cmd_export(args: argparse.Namespace) -> dict:
    """``modelpress export``: an ONNX file (float or int8) that ONNX Runtime runs, with what it cost."""
    from modelpress.export import export_onnx, load_onnx
    from modelpress.measure.onnx_latency import measure_onnx_latency
    from modelpress.quantize import Int8Config, quantize_int8

    loaded = read_any_model(args.model)
    splits = None
    if args.data:
        splits = load_dataset(args.data, seed=args.seed, limit_test=None)
        check_model_fits_data(loaded.spec, splits, str(args.model))
    elif args.int8 in ("static", "qat"):
        raise ConfigError(f"--int8 {args.int8} needs --data: calibration examples (and QAT training data) come from it")
    shape = tuple(loaded.spec.input_shape)
    if args.int8 is None:
        report = export_onnx(loaded.model, args.onnx, input_shape=shape, opset=args.opset, atol=args.atol, rtol=args.rtol)
        result = {"output": str(args.onnx), "bytes": report.bytes, "opset": report.opset, "folded": list(report.folded),
                  "max_abs_diff": report.max_abs_diff, "tolerance": f"atol {report.atol} + rtol {report.rtol}"}
    else:
        calibration = None
        if splits is not None:
            g = torch.Generator().manual_seed(args.seed)
            calibration = splits.x_train[torch.randperm(len(splits.x_train), generator=g)[: args.calibration]]
        config = Int8Config(mode=args.int8, opset=args.opset)
        report = quantize_int8(loaded.model, args.onnx, config, calibration, input_shape=shape, data=splits,
                               train_config=TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed))
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
