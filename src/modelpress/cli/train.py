"""``modelpress train``, ``evaluate`` and ``demo``: a model from the zoo trained, measured, or the main job."""

from __future__ import annotations

import argparse
import sys

from modelpress.cli.common import (
    add_data_args,
    add_output_args,
    add_train_args,
    check_model_fits_data,
    finish,
    load_data_from_args,
    model_options,
    progress,
    say,
    train_config_from_args,
)
from modelpress.core.seed import seed_everything
from modelpress.data import data_metadata, load_dataset
from modelpress.encode import read_any_model
from modelpress.measure import markdown_table, measure_model
from modelpress.models import build_model
from modelpress.train import train

EPILOG_TRAIN = """examples:
  modelpress train --model mlp:1200-1200 --dropout 0.5 --jitter 2 --data fashion-mnist --epochs 20 -o teacher.mpk
  modelpress train --model lenet5 --data ~/my-mnist-folder --epochs 10 -o lenet5.mpk
  modelpress train ... -o teacher.mpk --resume      # continue after an interruption
"""


def register(sub) -> None:
    """Add ``train``, ``evaluate`` and ``demo``."""
    p = sub.add_parser("train", help="train a model from the zoo", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a zoo architecture on a data set and save it as a .mpk file.")
    p.add_argument("--model", required=True, metavar="ARCH",
                   help="mlp:H1-H2-..., lenet300_100, lenet5, vgg_mini[:BASE], mobilenetv2_tiny, cnn:C1-C2-..., "
                        "shallow_cnn:C-H; for 1-D sequences lstm:H1-..., gru:H1-..., cnn1d[:C1-C2-...]")
    p.add_argument("--dropout", type=float, default=None, help="hidden-layer dropout (mlp, vgg_mini)")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="any other architecture option, e.g. bidirectional=true, readout=last, pool=mean; repeatable")
    p.add_argument("--input-dropout", type=float, default=None, help="input dropout (mlp)")
    add_data_args(p)
    add_train_args(p)
    add_output_args(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="measure a model file on a data set",
                       description="Accuracy, errors, parameters, bytes on disk, FLOPs and latency of a model file.")
    p.add_argument("model", metavar="MODEL", help="a file modelpress wrote: .mpk model, .ckpt checkpoint or .mpz compressed model")
    p.add_argument("--data", required=True, metavar="NAME|DIR")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="evaluate on N examples only")
    p.add_argument("--seed", type=int, default=0, help="split seed (must match training for --split val)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("demo", help="the main job on a built-in default data set",
                       description="Train a 1200-1200 teacher (dropout + jitter), an 800-800 student alone and the same "
                                   "student by distillation on Fashion-MNIST (digits when absent), then print the table.")
    p.add_argument("--quick", action="store_true", help="a one-minute run on a slice of the data")
    p.add_argument("--output-dir", default="demo-output", help="where models and results go (default demo-output/)")
    p.add_argument("--data", default=None, metavar="NAME|DIR", help="data set (default fashion-mnist, else digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_demo)



def cmd_train(args: argparse.Namespace) -> dict:
    """``modelpress train``: build a zoo model, train it, save it, measure it."""
    splits = load_data_from_args(args)
    say(args, f"data: {splits.describe()}")
    seed_everything(args.seed)
    model = build_model(args.model, splits.input_shape, splits.num_classes, **model_options(args))
    config = train_config_from_args(args)
    result = train(model, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume,
                   progress=progress(args), description=f"train {args.model}")
    extra = {"data": data_metadata(splits), "method": "train", "train": config.to_json(),
             "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
    return finish(args, model, splits, extra) or None  # other ranks than 0 report nothing


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
