"""Stages that make a model: ``train``, ``load`` and ``distill``, each a thin layer over the Python API.

Every training run checkpoints into the stage folder and is resumed, so an interrupted stage
continues from its last finished epoch when the recipe is run again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.core.seed import seed_everything
from modelpress.distill import DistillConfig, StoredTeacher, distill, precompute_teacher
from modelpress.distill.features import parse_layer_pairs
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.recipes.context import StageContext, StageOutput, read_model
from modelpress.recipes.schema import DistillStage, LoadStage, TrainStage
from modelpress.train import train


def run_train(options: TrainStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Build ``options.model`` (seeded) and train it with the one training loop."""
    seed_everything(ctx.seed)
    extra = {k: v for k, v in (("dropout", options.dropout), ("input_dropout", options.input_dropout)) if v is not None}
    model = build_model(options.model, ctx.splits.input_shape, ctx.splits.num_classes, **extra)
    config = options.train_config(ctx.seed)
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


def _student(options: DistillStage, ctx: StageContext, offset: int = 0) -> nn.Module:
    seed_everything(ctx.seed + offset)
    extra = {"dropout": options.dropout} if options.dropout is not None else {}
    return build_model(options.student, ctx.splits.input_shape, ctx.splits.num_classes, **extra)


def run_distill(options: DistillStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Distil the teacher stage's model by ``options.method`` (see :mod:`modelpress.distill`)."""
    teacher = ctx.load(source).eval()
    kd = DistillConfig(method="logits" if options.method == "logits" else "hinton", temperature=options.temperature,
                       alpha=options.alpha_or_default, train=options.train_config(ctx.seed),
                       kd_epochs=options.kd_epochs)
    common = {"resume": True, "progress": ctx.progress, "callbacks": ctx.callbacks}
    info: dict = {"teacher": source, "alpha": kd.alpha}
    if options.method == "born-again":
        return _born_again(options, ctx, teacher, kd, info)
    student = _student(options, ctx)
    if options.method in ("hinton", "logits", "early-stopped"):
        taught = StoredTeacher(precompute_teacher(teacher, ctx.splits.x_train)) if options.precompute else teacher
        distill(student, taught, ctx.splits, kd, checkpoint_path=ctx.checkpoint(), **common)
    elif options.method == "fitnets":
        from modelpress.distill.features import match_layers
        from modelpress.distill.hints import HintConfig, fitnets

        if options.layers:
            pairs = parse_layer_pairs(options.layers, "recipe stage field 'layers'")
            if len(pairs) != 1:
                raise ConfigError(f"recipe stage '{ctx.stage_name}': fitnets guides one layer: give one S:T pair in 'layers'")
        else:  # FitNets guides the middle of the student by the middle of the teacher
            matched = match_layers(student, teacher, ctx.splits.x_train[:2])
            pairs = (matched[len(matched) // 2],)
        stage1 = replace(kd.train, epochs=options.stage1_epochs, optimizer="adam", lr=options.stage1_lr, patience=None)
        fitnets(student, teacher, ctx.splits, HintConfig(pairs[0][0], pairs[0][1], stage1=stage1, kd=kd),
                checkpoint_path=ctx.checkpoint(), **common)
        info["layers"] = list(pairs[0])
    else:  # attention
        from modelpress.distill.attention import AttentionConfig, attention_transfer

        pairs = parse_layer_pairs(options.layers, "recipe stage field 'layers'") if options.layers else ()
        attention_transfer(student, teacher, ctx.splits, AttentionConfig(pairs=pairs, beta=options.beta, kd=kd),
                           checkpoint_path=ctx.checkpoint(), **common)
    result = getattr(student, "distill_result", None)
    if result is not None:
        info |= {"best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy}
    path = ctx.save(student, "distill", distill_method=options.method, teacher_stage=source,
                    temperature=kd.temperature, alpha=kd.alpha, train=kd.train.to_json())
    return StageOutput(path, student, info=info)


def _born_again(options: DistillStage, ctx: StageContext, teacher: nn.Module, kd: DistillConfig, info: dict) -> StageOutput:
    """Furlanello et al.'s generations; the last is the stage's model, the others' accuracies are recorded."""
    from modelpress.distill.schemes import born_again

    bans = born_again(teacher, ctx.splits, kd, generations=options.generations, checkpoint_dir=ctx.folder / "generations",
                      resume=True, progress=ctx.progress, precompute=options.precompute)
    splits = ctx.splits
    info["generations"] = [{"generation": k + 1, "test_accuracy": evaluate_accuracy(m, splits.x_test, splits.y_test).accuracy,
                            "val_accuracy": evaluate_accuracy(m, splits.x_val, splits.y_val).accuracy if len(splits.y_val) else None}
                           for k, m in enumerate(bans.generations)]
    if len(bans.generations) > 1:
        info["ensemble_test_accuracy"] = evaluate_accuracy(bans.ensemble(), splits.x_test, splits.y_test).accuracy
    final = bans.generations[-1]
    path = ctx.save(final, "distill", distill_method="born-again", generations=options.generations, temperature=kd.temperature,
                    alpha=kd.alpha, train=kd.train.to_json())
    return StageOutput(path, final, info=info)
