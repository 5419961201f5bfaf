"""What each CLI command does, as plain functions over the Python API (``cli.py`` only parses)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, load_dataset
from modelpress.distill import DistillConfig, EnsembleTeacher, StoredTeacher, TeacherStore, distill, precompute_teacher
from modelpress.measure import markdown_table, measure_model
from modelpress.encode import is_compressed_file, load_compressed
from modelpress.models import LoadedModel, build_model, read_model_file, save_model
from modelpress.models.zoo import ModelSpec
from modelpress.train import TrainConfig, train


def _say(args: argparse.Namespace, line: str) -> None:
    if not getattr(args, "quiet", False) and not getattr(args, "json", False):
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
    )


def data_metadata(splits: DataSplits) -> dict:
    """What a model file records about the data it was trained on (for evaluate and reports)."""
    return {"name": splits.name, "mean": splits.mean, "std": splits.std, "num_classes": splits.num_classes,
            "input_shape": list(splits.input_shape), "class_names": list(splits.class_names)}


def check_model_fits_data(spec: ModelSpec, splits: DataSplits, what: str) -> None:
    """Raise ShapeError when a saved model cannot take or label this data set."""
    if tuple(spec.input_shape) != splits.input_shape:
        raise ShapeError(f"{what} expects inputs of shape {tuple(spec.input_shape)} but {splits.name} has {splits.input_shape}")
    if spec.num_classes != splits.num_classes:
        raise ShapeError(f"class-count mismatch: {what} predicts {spec.num_classes} classes but {splits.name} has {splits.num_classes}")


def _finish(args: argparse.Namespace, model, splits: DataSplits, extra: dict) -> dict:
    """Save the model, measure it on the test split, print a summary, drop the checkpoint."""
    save_model(model, args.output, extra=extra)
    metrics = measure_model(model, splits.x_test, splits.y_test, path=args.output)
    _say(args, f"saved {args.output}: test accuracy {metrics['accuracy']:.4f} ({metrics['errors']} errors of "
               f"{metrics['n']}), {metrics['params']:,} params, {metrics['bytes']:,} bytes, "
               f"{metrics['latency_ms_b1']:.3f} ms at batch 1 ({metrics['threads']} threads)")
    checkpoint = Path(f"{args.output}.ckpt")
    if checkpoint.exists():
        checkpoint.unlink()
    return {"output": str(args.output), **metrics}


def cmd_train(args: argparse.Namespace) -> dict:
    """``modelpress train``: build a zoo model, train it, save it, measure it."""
    splits = load_data_from_args(args)
    _say(args, f"data: {splits.describe()}")
    seed_everything(args.seed)
    options = {k: v for k, v in (("dropout", args.dropout), ("input_dropout", args.input_dropout)) if v is not None}
    model = build_model(args.model, splits.input_shape, splits.num_classes, **options)
    config = train_config_from_args(args)
    result = train(model, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume,
                   progress=_progress(args), description=f"train {args.model}")
    extra = {"data": data_metadata(splits), "method": "train", "train": config.to_json(),
             "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
    return _finish(args, model, splits, extra)


def _load_teacher(args: argparse.Namespace, splits: DataSplits):
    if args.teacher_store:
        if args.teacher:
            raise ConfigError("give either --teacher or --teacher-store, not both")
        store = TeacherStore.load(args.teacher_store)
        if len(store) != len(splits.y_train):
            raise ShapeError(f"{args.teacher_store} holds outputs for {len(store)} examples but the training split has "
                             f"{len(splits.y_train)}: use the same --data, --seed, --val-size and --limit as when it was saved")
        return StoredTeacher(store), [f"store:{args.teacher_store}"]
    if not args.teacher:
        raise ConfigError("give a teacher with --teacher FILE.mpk (repeat it for an ensemble) or --teacher-store FILE")
    loaded = [read_model_file(path) for path in args.teacher]
    for item in loaded:
        check_model_fits_data(item.spec, splits, f"teacher {item.path}")
    weights = None
    if args.teacher_weights:
        try:
            weights = [float(w) for w in args.teacher_weights.split(",")]
        except ValueError:
            raise ConfigError(f"--teacher-weights must be numbers separated by commas; got {args.teacher_weights!r}") from None
    teacher = EnsembleTeacher([item.model for item in loaded], weights)
    if not args.no_precompute:
        if args.jitter:
            raise ConfigError("--jitter shifts the student's inputs, so stored teacher outputs would not match: "
                              "add --no-precompute to run the teacher on every batch")
        store = precompute_teacher(teacher, splits.x_train, mass=args.store_mass, max_classes=args.store_max_classes)
        _say(args, f"stored teacher outputs: {len(store)} examples, {store.nbytes():,} bytes, "
                   f"mean kept mass {float(store.kept_mass().mean()):.4f}")
        if args.save_store:
            store.save(args.save_store)
        teacher = StoredTeacher(store)
    return teacher, [str(item.path) for item in loaded]


def cmd_distill(args: argparse.Namespace) -> dict:
    """``modelpress distill``: train a student architecture on a teacher's (or ensemble's) targets."""
    splits = load_data_from_args(args)
    _say(args, f"data: {splits.describe()}")
    teacher, teacher_names = _load_teacher(args, splits)
    seed_everything(args.seed)
    options = {"dropout": args.dropout} if args.dropout is not None else {}
    student = build_model(args.student, splits.input_shape, splits.num_classes, **options)
    config = DistillConfig(method=args.method, temperature=args.temperature, alpha=args.alpha, train=train_config_from_args(args))
    distill(student, teacher, splits, config, checkpoint_path=f"{args.output}.ckpt", resume=args.resume, progress=_progress(args))
    extra = {"data": data_metadata(splits), "method": f"distill:{config.method.value}", "teachers": teacher_names,
             "temperature": config.temperature, "alpha": config.alpha, "train": config.train.to_json()}
    return _finish(args, student, splits, extra)


def read_any_model(path) -> LoadedModel:
    """A ``.mpk`` model, a training checkpoint or a compressed ``.mpz`` file, told apart by content."""
    if Path(path).is_file() and is_compressed_file(path):
        model, spec, extra = load_compressed(path)
        return LoadedModel(model, spec, extra, Path(path))
    return read_model_file(path)


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
