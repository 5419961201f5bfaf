"""``modelpress compress`` (Deep Compression into a ``.mpz`` file) and ``inspect`` (its manifest, undecoded)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from modelpress.cli.common import (
    add_data_args,
    add_output_args,
    check_model_fits_data,
    load_data_from_args,
    progress,
    say,
)
from modelpress.cli.options import add_options, options_from_args
from modelpress.core.errors import ConfigError
from modelpress.core.io import atomic_write
from modelpress.core.options import flat_fields
from modelpress.core.seed import seed_everything
from modelpress.encode import read_manifest
from modelpress.encode.report import (
    BUDGET_COLUMNS,
    BUDGET_HEADERS,
    LAYER_COLUMNS,
    LAYER_HEADERS,
    budget_rows,
    byte_budget,
    layer_rows,
)
from modelpress.measure import markdown_table, write_json
from modelpress.measure.plots import plot_weight_histograms
from modelpress.models import read_model_file
from modelpress.pipeline import CompressConfig, deep_compress
from modelpress.prune import sensitivity_sparsity

EPILOG_COMPRESS = """examples:
  modelpress compress lenet300.mpk --data fashion-mnist --sparsity 0.92 --bits fc=5 -o lenet300.mpz
  modelpress compress lenet5.mpk --data fashion-mnist --quality 1.0 --prune-steps 3 --bits fc=5,conv=8 -o lenet5.mpz
  modelpress evaluate lenet300.mpz --data fashion-mnist --json      # measured on the file as written
"""


def register(sub) -> None:
    """Add ``compress`` and ``inspect``."""
    p = sub.add_parser("compress", help="Deep Compression: prune, share weights, entropy-code into a .mpz file",
                       epilog=EPILOG_COMPRESS, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Prune (then retrain), quantize by weight sharing (then fine-tune the centroids) and "
                                   "Huffman/ANS-code a trained model; writes OUT.mpz and OUT.report.md/.json/.png.")
    p.add_argument("model", metavar="MODEL", help="a trained .mpk model")
    g = p.add_argument_group("pruning")
    add_options(g.add_mutually_exclusive_group(), CompressConfig, skip=_all_but("sparsity", "quality"),
                overrides={"sparsity": {"help": "fraction of weights removed (default 0.9)"}})
    add_options(g, CompressConfig, skip=_all_but(*PRUNING_FLAGS),
                overrides={"criterion": {"choices": ["magnitude", "global", "sensitivity"]}})
    g = p.add_argument_group("quantization and coding")
    g.add_argument("--bits", default=argparse.SUPPRESS, metavar="fc=N,conv=N",
                   help="bits per shared weight (default fc=5,conv=8)")
    g.add_argument("--index-bits", default=argparse.SUPPRESS,
                   metavar="fc=N,conv=N", help="bits per relative sparse index (default fc=5,conv=8)")
    add_options(g, CompressConfig, skip=_all_but(*CODING_FLAGS))
    g = p.add_argument_group("retraining against the uncompressed model (beyond the paper)")
    add_options(g, CompressConfig, skip=_all_but("self_distill", "temperature", "alpha"))
    g.add_argument("--teacher", action="append", default=[], metavar="MODEL",
                   help="with --self-distill: also learn from this trained model (repeat for several); the soft targets "
                        "are those of the ensemble of MODEL and these, e.g. other trainings of it")
    add_data_args(p)
    p.add_argument("--quiet", action="store_true")
    add_output_args(p)
    p.set_defaults(handler=cmd_compress)

    p = sub.add_parser("inspect", help="print a compressed file's manifest and per-layer table",
                       description="Read a .mpz file's manifest (after checking its checksum) and print its per-layer table.")
    p.add_argument("file", metavar="FILE.mpz")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_inspect)



PRUNING_FLAGS = ("criterion", "steps", "retrain_epochs", "retrain_lr", "grad_clip", "gradual", "batch_size")
CODING_FLAGS = ("init", "finetune_epochs", "finetune_lr", "context_masks", "float16")


def _all_but(*names: str) -> tuple[str, ...]:
    """The options of :class:`CompressConfig` other than ``names`` (``--seed`` is a data flag)."""
    return tuple(item.name for item in flat_fields(CompressConfig) if item.name not in names)


def parse_layer_bits(text: str, option: str) -> dict[str, int]:
    """``"fc=5,conv=8"`` -> ``{"fc": 5, "conv": 8}``; a bare number applies to both, a key left out keeps its default."""
    if text.strip().isdigit():
        return {"fc": int(text), "conv": int(text)}
    result = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key.strip() not in ("fc", "conv") or not value.strip().isdigit():
            raise ConfigError(f"{option} must look like 'fc=5,conv=8' (keys fc and conv, integer values); got {text!r}")
        result[key.strip()] = int(value)
    return result


def _layer_bits(args: argparse.Namespace, option: str, field: str) -> dict[str, int]:
    """``--bits fc=5,conv=8`` as the config fields ``bits_fc`` / ``bits_conv`` (only the keys given)."""
    text = getattr(args, option.lstrip("-").replace("-", "_"), None)
    if text is None:
        return {}
    return {f"{field}_{key}": bits for key, bits in parse_layer_bits(text, option).items()}


def compress_config_from_args(args: argparse.Namespace) -> CompressConfig:
    """The :class:`CompressConfig` of the flags given (the rest at its defaults) and ``--seed``.

    Raises:
        ConfigError: ``--criterion`` other than magnitude with ``--quality``, or a value the config refuses.
    """
    criterion = getattr(args, "criterion", None)
    if hasattr(args, "quality") and criterion not in (None, "magnitude"):
        raise ConfigError(f"--criterion {criterion} goes with --sparsity; --quality is Han's threshold criterion")
    extra = {"seed": args.seed} | _layer_bits(args, "--bits", "bits") | _layer_bits(args, "--index-bits", "index_bits")
    if hasattr(args, "quality"):
        extra["criterion"] = "threshold"
    return options_from_args(CompressConfig, args, **extra)


def cmd_compress(args: argparse.Namespace) -> dict:
    """``modelpress compress``: the three Deep Compression stages, the file, and its report."""
    options = compress_config_from_args(args)
    if args.teacher and not options.self_distill:
        raise ConfigError("--teacher adds to the soft targets of --self-distill; give --self-distill too")
    sensitivity = options.criterion == "sensitivity"  # the per-layer targets need the model and data: set below
    config = options.deep_compression_config({} if sensitivity else None)
    # the whole config is checked above, before the model and data are read or any training starts
    loaded = read_model_file(args.model)
    splits = load_data_from_args(args)
    check_model_fits_data(loaded.spec, splits, str(args.model))
    teachers = []
    for path in args.teacher:
        teacher = read_model_file(path)
        check_model_fits_data(teacher.spec, splits, f"teacher {path}")
        teachers.append(teacher.model)
    say(args, f"data: {splits.describe()}")
    allocation = None
    if sensitivity:
        allocation = sensitivity_sparsity(loaded.model, splits.x_val, splits.y_val, options.prune.sparsity)
        config = replace(config, prune=options.prune_config(allocation))
        say(args, "sensitivity allocation: " + ", ".join(f"{name} {s:.2f}" for name, s in allocation.items()))
    seed_everything(args.seed)
    # the uncompressed model teaches, with the other teachers as an ensemble (deep_compress copies them all before pruning)
    teacher = [loaded.model, *teachers] if teachers else None
    result = deep_compress(loaded.model, splits, config, args.output, teacher=teacher, progress=progress(args))
    report = write_compression_report(result, Path(args.output), title=f"{loaded.spec.arch} on {splits.name}")
    say(args, report)
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
