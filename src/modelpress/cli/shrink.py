"""``modelpress shrink``: structured pruning, low-rank factorization and depthwise-separable blocks, fine-tuned,
with a before/after report measured side by side (``cli/main.py`` only assembles the parser)."""

from __future__ import annotations

import argparse
import copy

import torch

from modelpress.cli.common import (
    add_data_args,
    add_output_args,
    check_model_fits_data,
    finish,
    load_data_from_args,
    progress,
    say,
)
from modelpress.cli.options import add_options, options_from_args
from modelpress.core.errors import ConfigError
from modelpress.core.seed import seed_everything
from modelpress.data import data_metadata
from modelpress.distill import DistillConfig, distill
from modelpress.encode import read_any_model
from modelpress.factorize import (
    FactorizeConfig,
    Method,
    ShrinkConfig,
    factorize_,
    to_depthwise_separable_,
)
from modelpress.measure import (
    count_flops,
    count_params,
    evaluate_accuracy,
    markdown_table,
    measure_latency,
)
from modelpress.prune import StructuredConfig, structured_prune
from modelpress.train import train

EPILOG_SHRINK = """examples:
  modelpress shrink vgg.mpk --data fashion-mnist --channels 0.5 -o vgg.half.mpk       # half the channels, L1 norm
  modelpress shrink lenet5.mpk --data fashion-mnist --low-rank tucker --flop-budget 0.5 -o lenet5.tucker.mpk
  modelpress shrink mlp.mpk --data fashion-mnist --low-rank svd --energy 0.9 -o mlp.svd.mpk
  modelpress shrink vgg.mpk --data fashion-mnist --separable --finetune-epochs 5 -o vgg.sep.mpk
  modelpress export vgg.half.mpk --onnx vgg.half.int8.onnx --int8 static --data fashion-mnist   # then int8
"""


def register(sub) -> None:
    """Add ``shrink``."""
    p = sub.add_parser("shrink", help="structured pruning / low rank / depthwise-separable blocks, fine-tuned",
                       epilog=EPILOG_SHRINK, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Make a trained model really smaller: remove whole channels and neurons (fixing every "
                                   "layer that consumes them), factorize layers into thinner ones, or replace convolutions "
                                   "by depthwise-separable blocks; fine-tune; report accuracy, params, FLOPs and latency "
                                   "before and after, measured side by side, and say plainly when it is not faster.")
    p.add_argument("model", metavar="MODEL", help="a trained .mpk model (or .ckpt / .mpz)")
    g = p.add_argument_group("how")
    g.add_argument("--channels", dest="amount", type=float, default=argparse.SUPPRESS, metavar="FRACTION",
                   help="structured pruning: remove this fraction of every prunable layer's channels/neurons")
    add_options(g, StructuredConfig, skip=("amount",))
    g.add_argument("--low-rank", dest="method", choices=[m.value for m in Method], default=argparse.SUPPRESS,
                   help="svd: Linear layers into two; tucker: Tucker-2 convolutions (1x1, kxk, 1x1); cp: CP convolutions")
    add_options(g, FactorizeConfig, skip=("method",), overrides={
        "energy": {"help": "low rank: keep this fraction of squared singular values (default 0.9)"},
        "flop_budget": {"help": "low rank: instead, keep at most this fraction of the FLOPs"}})
    g.add_argument("--separable", action="store_true",
                   help="replace 3x3 convolutions by depthwise-separable blocks, then distil from the original")
    g = p.add_argument_group("fine-tuning")
    add_options(g, ShrinkConfig, skip=("seed",))
    g.add_argument("--resume", action="store_true")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--no-latency", action="store_true", help="skip the side-by-side latency measurement")
    add_data_args(p)
    add_output_args(p)
    p.set_defaults(handler=cmd_shrink)



def _shrink_steps(args: argparse.Namespace, model, splits) -> list[str]:
    """Apply the structured pruning, factorization and separable blocks the flags ask for; one line each."""
    example = splits.x_train[:256]
    steps = []
    if getattr(args, "amount", 0):
        config = options_from_args(StructuredConfig, args)
        report = structured_prune(model, config, example[:2], data=splits if config.needs_data else None)
        steps.append(f"structured ({config.criterion.value}, {config.amount:.0%} of channels): "
                     f"{len(report.layers)} layers changed, {len(report.skipped)} groups left whole")
    if hasattr(args, "method"):
        config = options_from_args(FactorizeConfig, args)
        report = factorize_(model, config, example[:2])
        steps.append(f"low rank ({config.method.value}): {len(report.factorized)} layers factorized")
    if args.separable:
        report = to_depthwise_separable_(model, example_input=example)
        steps.append(f"depthwise-separable: {len(report.layers)} convolutions replaced")
    return steps


def cmd_shrink(args: argparse.Namespace) -> dict:
    """Make the model really smaller (fewer channels, thinner factors, cheaper blocks), fine-tune, and prove it."""
    if not (getattr(args, "amount", 0) or hasattr(args, "method") or args.separable):
        raise ConfigError("say how to shrink: --channels FRACTION, --low-rank svd|tucker|cp and/or --separable")
    # every config is checked before the data and model are read
    options_from_args(StructuredConfig, args)
    options_from_args(FactorizeConfig, args)
    config = options_from_args(ShrinkConfig, args, seed=args.seed).train_config()
    splits = load_data_from_args(args)
    loaded = read_any_model(args.model)
    check_model_fits_data(loaded.spec, splits, str(args.model))
    original = loaded.model.eval()
    model = copy.deepcopy(original)
    steps = _shrink_steps(args, model, splits)
    for line in steps:
        say(args, line)
    seed_everything(args.seed)
    if config is not None:
        if args.separable:  # new blocks start far from the original: learn from it, not only from the labels
            distill(model, original, splits, DistillConfig(temperature=4.0, alpha=0.9, train=config),
                    checkpoint_path=f"{args.output}.ckpt", resume=args.resume, progress=progress(args))
        else:
            train(model, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume,
                  progress=progress(args), description="fine-tune")
    comparison = compare(original, model, splits, latency=not args.no_latency)
    if not args.json:
        print(markdown_table(comparison["rows"], list(comparison["rows"][0])), end="")
        print(comparison["verdict"])
    extra = {"data": data_metadata(splits), "method": "shrink", "source": str(args.model), "steps": steps,
             "finetune": config.to_json() if config is not None else None}
    return finish(args, model, splits, extra) | {"comparison": comparison}


def compare(original: torch.nn.Module, shrunk: torch.nn.Module, splits, *, latency: bool = True) -> dict:
    """Accuracy, parameters, FLOPs and PyTorch latency of both models, timed alternately so that load hits both."""
    shape = splits.input_shape
    rows = []
    for name, model in (("original", original), ("shrunk", shrunk)):
        rows.append({"model": name, "accuracy": evaluate_accuracy(model, splits.x_test, splits.y_test).accuracy,
                     "params": count_params(model), "flops": count_flops(model, shape)})
    flop_ratio = rows[0]["flops"] / max(rows[1]["flops"], 1)
    if not latency:
        return {"rows": rows, "speedup_b256": None, "flop_reduction": flop_ratio,
                "verdict": f"{flop_ratio:.2f}x fewer FLOPs; latency not measured (--no-latency), so not known to be faster"}
    for batch in (1, 256):
        times = {0: [], 1: []}
        for _ in range(3):
            for i, model in enumerate((original, shrunk)):
                times[i].append(measure_latency(model, shape, batch).median_ms)
        for i in (0, 1):
            rows[i][f"latency_ms_b{batch}"] = sorted(times[i])[1]
    speedup = rows[0]["latency_ms_b256"] / rows[1]["latency_ms_b256"]
    verdict = (f"{flop_ratio:.2f}x fewer FLOPs, {speedup:.2f}x faster at batch 256 ({torch.get_num_threads()} threads)"
               if speedup >= 1.05 else
               f"NOT faster: {flop_ratio:.2f}x fewer FLOPs but {speedup:.2f}x the speed at batch 256 "
               f"({torch.get_num_threads()} threads); small or irregular layers cost more in overhead than they save")
    return {"rows": rows, "speedup_b256": speedup, "flop_reduction": flop_ratio, "verdict": verdict}
