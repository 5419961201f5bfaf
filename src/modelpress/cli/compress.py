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
from modelpress.core.errors import ConfigError
from modelpress.core.io import atomic_write
from modelpress.core.seed import seed_everything
from modelpress.distill import DistillConfig
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
from modelpress.pipeline import DeepCompressionConfig, deep_compress
from modelpress.prune import PruneConfig, sensitivity_sparsity
from modelpress.quantize import QuantizeConfig
from modelpress.train import TrainConfig

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
    how = g.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, default=None, help="fraction of weights removed (default 0.9)")
    how.add_argument("--quality", type=float, default=None, help="Han et al.'s threshold: remove |w| <= quality x std")
    g.add_argument("--criterion", choices=["magnitude", "global", "sensitivity"], default="magnitude",
                   help="with --sparsity: per-layer (magnitude), one threshold for all layers (global), or the "
                        "kept weights spread over the layers by a sensitivity scan on the validation split")
    g.add_argument("--prune-steps", type=int, default=1, help="iterative pruning in N steps (default 1)")
    g.add_argument("--retrain-epochs", type=int, default=5, help="retraining epochs after each pruning step")
    g.add_argument("--retrain-lr", type=float, default=0.01)
    g.add_argument("--gradual", type=float, default=None, metavar="FRACTION",
                   help="prune gradually within one retraining run of --retrain-epochs, reaching the targets after "
                        "this fraction of it (Zhu & Gupta's ramp) instead of in --prune-steps steps")
    g.add_argument("--batch-size", type=int, default=128, help="batch size of retraining and fine-tuning")
    g = p.add_argument_group("quantization and coding")
    g.add_argument("--bits", default="fc=5,conv=8", help="bits per shared weight (default fc=5,conv=8)")
    g.add_argument("--init", choices=["linear", "density", "random"], default="linear", help="centroid initialisation")
    g.add_argument("--finetune-epochs", type=int, default=3, help="centroid fine-tuning epochs (0: none)")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate of the centroids")
    g.add_argument("--index-bits", default="fc=5,conv=8", help="bits per relative sparse index")
    g.add_argument("--no-context-masks", action="store_true",
                   help="store every sparsity pattern as relative indices (readable by older modelpress), not the "
                        "context-coded mask or spatial layout where that is smaller")
    g.add_argument("--float16", action="store_true",
                   help="round centroids, biases and every other float the file stores to float16 after fine-tuning: "
                        "half their bytes")
    g = p.add_argument_group("retraining against the uncompressed model (beyond the paper)")
    g.add_argument("--self-distill", action="store_true",
                   help="retrain and fine-tune with the uncompressed model's soft targets as well as the labels")
    g.add_argument("--temperature", type=float, default=2.0, help="with --self-distill (default 2)")
    g.add_argument("--alpha", type=float, default=0.9, help="with --self-distill: weight of the soft targets (default 0.9)")
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
    say(args, f"data: {splits.describe()}")
    allocation = None
    if args.criterion == "sensitivity":
        allocation = sensitivity_sparsity(loaded.model, splits.x_val, splits.y_val, prune.sparsity)
        config = replace(config, prune=PruneConfig(sparsity=0.0, layer_sparsity=allocation))
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
