"""Helpers every command module shares: data and output flags, training flags generated from
:class:`~modelpress.train.TrainConfig`, progress and summary lines, saving and measuring the result."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelpress.cli.options import add_options, options_from_args
from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data import DataSplits, load_dataset
from modelpress.distributed import is_main_process
from modelpress.measure import measure_model
from modelpress.models import save_model
from modelpress.models.zoo import ModelSpec
from modelpress.train import TrainConfig


def say(args: argparse.Namespace, line: str) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "json", False) and is_main_process():
        print(line)


def progress(args: argparse.Namespace) -> bool | None:
    return False if args.quiet else None


def load_data_from_args(args: argparse.Namespace) -> DataSplits:
    val_size = args.val_size
    if val_size is not None and val_size >= 1:
        val_size = int(val_size)
    return load_dataset(args.data, seed=args.seed, val_size=val_size, limit=args.limit, limit_test=args.limit_test)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the training flags given (the rest at the config's defaults) and ``--seed``."""
    return options_from_args(TrainConfig, args, seed=args.seed)


def check_model_fits_data(spec: ModelSpec, splits: DataSplits, what: str) -> None:
    """Raise ShapeError when a saved model cannot take or label this data set."""
    if tuple(spec.input_shape) != splits.input_shape:
        raise ShapeError(f"{what} expects inputs of shape {tuple(spec.input_shape)} but {splits.name} has {splits.input_shape}")
    if spec.num_classes != splits.num_classes:
        raise ShapeError(f"class-count mismatch: {what} predicts {spec.num_classes} classes but {splits.name} has {splits.num_classes}")


def finish(args: argparse.Namespace, model, splits: DataSplits, extra: dict) -> dict:
    """Save the model, measure it on the test split, print a summary, drop the checkpoint."""
    if not is_main_process():  # under torchrun every rank holds the same trained model: rank 0 writes it
        return {}
    save_model(model, args.output, extra=extra)
    metrics = measure_model(model, splits.x_test, splits.y_test, path=args.output)
    say(args, f"saved {args.output}: test accuracy {metrics['accuracy']:.4f} ({metrics['errors']} errors of "
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


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="NAME|DIR",
                   help="fashion-mnist, mnist, digits, breast-cancer, wine, mnist1d, or a folder of MNIST-layout IDX files")
    g.add_argument("--val-size", type=float, default=None, metavar="N",
                   help="validation examples taken from the training split (count, or fraction if < 1)")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="use only N training examples (quick runs)")
    g.add_argument("--limit-test", type=int, default=None, metavar="N", help="use only N validation and test examples")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, initialisation and training (default 0)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """The training loop's flags, one per option :class:`TrainConfig` declares (``--seed`` is a data flag)."""
    g = p.add_argument_group("training")
    add_options(g, TrainConfig, skip=("seed",))
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="FILE.mpk", help="where to write the trained model")
    p.add_argument("--json", action="store_true", help="print the final measurements as one JSON object")
