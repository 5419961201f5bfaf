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
from modelpress.core.errors import ConfigError
from modelpress.core.seed import seed_everything
from modelpress.data import data_metadata
from modelpress.distill import DistillConfig, distill
from modelpress.encode import read_any_model
from modelpress.factorize import FactorizeConfig, factorize_, to_depthwise_separable_
from modelpress.measure import count_flops, count_params, evaluate_accuracy, markdown_table, measure_latency
from modelpress.prune import StructuredConfig, structured_prune
from modelpress.train import TrainConfig, train

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
    g.add_argument("--channels", type=float, default=None, metavar="FRACTION",
                   help="structured pruning: remove this fraction of every prunable layer's channels/neurons")
    g.add_argument("--criterion", choices=["l1", "l2", "apoz", "taylor"], default="l1",
                   help="channel importance: filter norm, average percentage of zeros, or first-order Taylor (default l1)")
    g.add_argument("--low-rank", choices=["svd", "tucker", "cp"], default=None,
                   help="svd: Linear layers into two; tucker: Tucker-2 convolutions (1x1, kxk, 1x1); cp: CP convolutions")
    g.add_argument("--energy", type=float, default=0.9, help="low rank: keep this fraction of squared singular values")
    g.add_argument("--flop-budget", type=float, default=None, help="low rank: instead, keep at most this fraction of the FLOPs")
    g.add_argument("--separable", action="store_true",
                   help="replace 3x3 convolutions by depthwise-separable blocks, then distil from the original")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, default=3)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient norm while fine-tuning (default 1; CP factors diverge without it)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--resume", action="store_true")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--no-latency", action="store_true", help="skip the side-by-side latency measurement")
    add_data_args(p)
    add_output_args(p)
    p.set_defaults(handler=cmd_shrink)



def cmd_shrink(args: argparse.Namespace) -> dict:
    """Make the model really smaller (fewer channels, thinner factors, cheaper blocks), fine-tune, and prove it."""
    if not (args.channels or args.low_rank or args.separable):
        raise ConfigError("say how to shrink: --channels FRACTION, --low-rank svd|tucker|cp and/or --separable")
    splits = load_data_from_args(args)
    loaded = read_any_model(args.model)
    check_model_fits_data(loaded.spec, splits, str(args.model))
    original = loaded.model.eval()
    model = copy.deepcopy(original)
    example = splits.x_train[:256]
    steps = []
    if args.channels:
        report = structured_prune(model, StructuredConfig(amount=args.channels, criterion=args.criterion),
                                  example[:2], data=splits if args.criterion in ("apoz", "taylor") else None)
        steps.append(f"structured ({args.criterion}, {args.channels:.0%} of channels): "
                     f"{len(report.layers)} layers changed, {len(report.skipped)} groups left whole")
    if args.low_rank:
        rule = {"flop_budget": args.flop_budget} if args.flop_budget else {"energy": args.energy}
        report = factorize_(model, FactorizeConfig(method=args.low_rank, **rule), example[:2])
        steps.append(f"low rank ({args.low_rank}): {len(report.factorized)} layers factorized")
    if args.separable:
        report = to_depthwise_separable_(model, example_input=example)
        steps.append(f"depthwise-separable: {len(report.layers)} convolutions replaced")
    for line in steps:
        say(args, line)
    seed_everything(args.seed)
    config = TrainConfig(epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         grad_clip=args.grad_clip)
    if args.finetune_epochs:
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
             "finetune": config.to_json()}
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
