"""``modelpress shrink``: structured pruning, low-rank factorization and depthwise-separable blocks, fine-tuned,
with a before/after report measured side by side (``cli.py`` only parses)."""

from __future__ import annotations

import argparse
import copy

import torch

from modelpress.commands import _finish, _progress, _say, check_model_fits_data, load_data_from_args
from modelpress.core.errors import ConfigError
from modelpress.core.seed import seed_everything
from modelpress.data import data_metadata
from modelpress.distill import DistillConfig, distill
from modelpress.encode import read_any_model
from modelpress.factorize import FactorizeConfig, factorize_, to_depthwise_separable_
from modelpress.measure import count_flops, count_params, evaluate_accuracy, markdown_table, measure_latency
from modelpress.prune import StructuredConfig, structured_prune
from modelpress.train import TrainConfig, train


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
        _say(args, line)
    seed_everything(args.seed)
    config = TrainConfig(epochs=args.finetune_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         grad_clip=args.grad_clip)
    if args.finetune_epochs:
        if args.separable:  # new blocks start far from the original: learn from it, not only from the labels
            distill(model, original, splits, DistillConfig(temperature=4.0, alpha=0.9, train=config),
                    checkpoint_path=f"{args.output}.ckpt", resume=args.resume, progress=_progress(args))
        else:
            train(model, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume,
                  progress=_progress(args), description="fine-tune")
    comparison = compare(original, model, splits, latency=not args.no_latency)
    if not args.json:
        print(markdown_table(comparison["rows"], list(comparison["rows"][0])), end="")
        print(comparison["verdict"])
    extra = {"data": data_metadata(splits), "method": "shrink", "source": str(args.model), "steps": steps,
             "finetune": config.to_json()}
    return _finish(args, model, splits, extra) | {"comparison": comparison}


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
