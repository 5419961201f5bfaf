"""Stages that make a model: ``train``, ``load`` and ``distill``, each a thin layer over the Python API.

Every training run checkpoints into the stage folder and is resumed, so an interrupted stage
continues from its last finished epoch when the recipe is run again.
"""

from __future__ import annotations

from pathlib import Path

from modelpress.core.errors import ConfigError
from modelpress.core.options import to_dict
from modelpress.core.seed import seed_everything
from modelpress.distill import StoredTeacher, precompute_teacher
from modelpress.distill.methods import METHODS, student_builder
from modelpress.models import build_model, save_model
from modelpress.recipes.context import StageContext, StageOutput, read_model
from modelpress.recipes.schema import DistillStage, LoadStage, TrainStage
from modelpress.train import train


def run_train(options: TrainStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Build ``options.model`` (seeded) and train it with the one training loop."""
    seed_everything(ctx.seed)
    extra = {k: v for k, v in (("dropout", options.dropout), ("input_dropout", options.input_dropout)) if v is not None}
    model = build_model(options.model, ctx.splits.input_shape, ctx.splits.num_classes, **extra)
    config = options.train_config(ctx.seed)  # the recipe's seed, every other option as the stage sets it
    result = train(model, ctx.splits, config, checkpoint_path=ctx.checkpoint(), resume=True, progress=ctx.progress,
                   callbacks=ctx.callbacks, description=f"{ctx.stage_name}: train {options.model}")
    info = {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy, "epochs_run": result.epochs_run}
    return StageOutput(ctx.save(model, "train", train=config.to_json()), model, info=info)


def run_load(options: LoadStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Read a model file made elsewhere and check that it fits the recipe's data."""
    path = Path(options.path).expanduser()
    path = path if path.is_absolute() else ctx.base_dir / path
    model = read_model(path)
    spec = model.modelpress_spec
    if tuple(spec.input_shape) != ctx.splits.input_shape or spec.num_classes != ctx.splits.num_classes:
        raise ConfigError(f"recipe stage '{ctx.stage_name}': {path} takes inputs {tuple(spec.input_shape)} and predicts "
                          f"{spec.num_classes} classes, but {ctx.splits.name} has {ctx.splits.input_shape} and "
                          f"{ctx.splits.num_classes}")
    return StageOutput(ctx.save(model, "load", source=str(path)), model)


def run_distill(options: DistillStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Distil the teacher stage's model by ``options.method``: the method's handler, the one the CLI calls."""
    entry = METHODS.get(options.method)
    config = options.method_config(ctx.seed)
    teacher = ctx.load(source).eval() if entry.teacher != "none" else None
    if entry.teacher == "outputs" and options.precompute:
        teacher = StoredTeacher(precompute_teacher(teacher, ctx.splits.x_train))
    extra = {"dropout": options.dropout} if options.dropout is not None else {}
    builder = student_builder(options.student, ctx.splits.input_shape, ctx.splits.num_classes, ctx.seed, **extra)
    outcome = entry.handler(builder if entry.student == "architecture" else None, teacher, ctx.splits, config,
                            checkpoint_path=ctx.checkpoint(), resume=True, progress=ctx.progress,
                            callbacks=ctx.callbacks, precompute=options.precompute)
    info: dict = {"teacher": source, **{k: v for k, v in outcome.info.items() if k != "report"}}
    if outcome.train is not None:
        info |= {"best_epoch": outcome.train.best_epoch, "best_val_accuracy": outcome.train.best_val_accuracy}
    meta = {"distill_method": options.method, "teacher_stage": source, "config": to_dict(config)}
    for side in outcome.side_models:  # beside the stage's model, each with what it is
        save_model(side.model, ctx.folder / f"{side.tag}.mpk", extra=meta | side.info)
    if getattr(outcome.model, "modelpress_spec", None) is None:  # the specialists' ensemble: no zoo architecture
        return StageOutput(ctx.folder / f"{outcome.side_models[0].tag}.mpk", outcome.model, info=info)
    return StageOutput(ctx.save(outcome.model, "distill", **meta), outcome.model, info=info)
