"""Stages that compress the model of an earlier stage: ``prune``, ``quantize``, ``encode``, ``factorize``,
``int8`` and ``export``, each a thin layer over the family's Python API. Retraining checkpoints into the
stage folder and is resumed when the recipe is run again."""

from __future__ import annotations

import torch

from modelpress.core.seed import seed_everything
from modelpress.encode import load_compressed, round_to_float16_, save_compressed
from modelpress.pipeline import DeepCompressionConfig, prune_and_retrain
from modelpress.prune import PruneConfig, StructuredConfig, sensitivity_sparsity, structured_prune
from modelpress.quantize import QuantizeConfig, finalize_, quantize_
from modelpress.recipes.context import StageContext, StageOutput
from modelpress.recipes.schema import EncodeStage, ExportStage, FactorizeStage, Int8Stage, PruneStage, QuantizeStage
from modelpress.train import TrainConfig, train


def run_prune(options: PruneStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Unstructured pruning with retraining after each step (Han et al.), or structured channel pruning."""
    model = ctx.load(source)
    seed_everything(ctx.seed)
    retrain = (TrainConfig(epochs=options.retrain_epochs, lr=options.retrain_lr, batch_size=options.batch_size,
                           grad_clip=options.grad_clip, seed=ctx.seed) if options.retrain_epochs else None)
    info = {}
    if options.mode == "unstructured":
        if options.criterion == "sensitivity":
            info["sparsity_per_layer"] = sensitivity_sparsity(model, ctx.splits.x_val, ctx.splits.y_val, options.sparsity)
            prune = PruneConfig(sparsity=0.0, layer_sparsity=info["sparsity_per_layer"])
        else:
            prune = PruneConfig(criterion=options.criterion, sparsity=options.sparsity, quality=options.quality)
        config = DeepCompressionConfig(prune=prune, prune_steps=options.steps, prune_retrain=retrain)
        prune_and_retrain(model, ctx.splits, config, progress=ctx.progress, checkpoint_path=ctx.checkpoint("retrain"),
                          resume=True, callbacks=ctx.callbacks)
    else:
        config = StructuredConfig(amount=options.sparsity, criterion=options.criterion)
        report = structured_prune(model, config, ctx.splits.x_train[:2],
                                  data=ctx.splits if config.needs_data else None)
        info = {"layers_changed": len(report.layers), "groups_left_whole": len(report.skipped),
                "params_before": report.params_before, "params_after": report.params_after}
        if retrain is not None:
            train(model, ctx.splits, retrain, checkpoint_path=ctx.checkpoint("retrain"), resume=True, progress=ctx.progress,
                  callbacks=ctx.callbacks, description=f"{ctx.stage_name}: retrain")
    return StageOutput(ctx.save(model, "prune", mode=options.mode, criterion=options.criterion, sparsity=options.sparsity),
                       model, info=info)


def run_quantize(options: QuantizeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """k-means weight sharing, centroid fine-tuning (Adam, constant rate), then the shared values folded in.

    The saved ``.mpk`` holds ordinary weights with at most ``2**bits`` distinct values per layer;
    an ``encode`` stage stores them as codebook + indices."""
    model = ctx.load(source)
    report = quantize_(model, QuantizeConfig(bits_fc=options.bits_fc, bits_conv=options.bits_conv, init=options.init,
                                             seed=ctx.seed))
    if options.finetune_epochs:
        config = TrainConfig(epochs=options.finetune_epochs, optimizer="adam", lr=options.finetune_lr,
                             batch_size=options.batch_size, schedule="constant", seed=ctx.seed)
        train(model, ctx.splits, config, checkpoint_path=ctx.checkpoint("finetune"), resume=True, progress=ctx.progress,
              callbacks=ctx.callbacks, description=f"{ctx.stage_name}: fine-tune centroids")
    finalize_(model)
    path = ctx.save(model, "quantize", bits_fc=options.bits_fc, bits_conv=options.bits_conv)
    return StageOutput(path, model, info={"layers": report.rows})


def run_encode(options: EncodeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Write the Deep Compression file and measure the model read back from it."""
    model = ctx.load(source)
    path = ctx.folder / "model.mpz"
    if options.float16:
        round_to_float16_(model)
    save_compressed(model, path, index_bits_fc=options.index_bits_fc, index_bits_conv=options.index_bits_conv,
                    float16=options.float16,
                    extra={"data": ctx.splits.name, "recipe": ctx.recipe_name, "stage": ctx.stage_name})
    loaded, _, _ = load_compressed(path)
    return StageOutput(path, loaded.eval())


def run_factorize(options: FactorizeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Low-rank layers (ranks by energy or a FLOP budget), fine-tuned."""
    from modelpress.factorize import FactorizeConfig, factorize_

    model = ctx.load(source)
    rule = {"flop_budget": options.flop_budget} if options.flop_budget is not None else {"energy": options.energy}
    report = factorize_(model, FactorizeConfig(method=options.method, **rule), ctx.splits.x_train[:2])
    if options.finetune_epochs:
        seed_everything(ctx.seed)
        config = TrainConfig(epochs=options.finetune_epochs, lr=options.lr, batch_size=options.batch_size,
                             grad_clip=options.grad_clip, seed=ctx.seed)
        train(model, ctx.splits, config, checkpoint_path=ctx.checkpoint("finetune"), resume=True, progress=ctx.progress,
              callbacks=ctx.callbacks, description=f"{ctx.stage_name}: fine-tune")
    info = {"factorized": report.factorized, "skipped": report.skipped, "flops_fraction": report.flops_fraction}
    return StageOutput(ctx.save(model, "factorize", factorize_method=options.method), model, info=info)


def run_int8(options: Int8Stage, ctx: StageContext, source: str | None) -> StageOutput:
    """An int8 ONNX file run by ONNX Runtime; parameters and FLOPs are those of the float model it came from."""
    from modelpress.export import load_onnx
    from modelpress.quantize import Int8Config, quantize_int8

    model = ctx.load(source)
    g = torch.Generator().manual_seed(ctx.seed)
    x = ctx.splits.x_train
    calibration = x[torch.randperm(len(x), generator=g)[: options.calibration]]
    path = ctx.folder / "model.int8.onnx"
    report = quantize_int8(model, path, Int8Config(mode=options.mode, opset=options.opset), calibration,
                           data=ctx.splits, train_config=TrainConfig(epochs=options.epochs, lr=options.lr, seed=ctx.seed))
    info = {"mode": report.mode, "int8_weight_tensors": report.quantized_weights, "argmax_agreement": report.argmax_agreement,
            "max_abs_diff": report.max_abs_diff}
    return StageOutput(path, load_onnx(path), counted=model, info=info)


def run_export(options: ExportStage, ctx: StageContext, source: str | None) -> StageOutput:
    """A float ONNX file, checked against PyTorch in ONNX Runtime."""
    from modelpress.export import export_onnx, load_onnx

    model = ctx.load(source)
    path = ctx.folder / "model.onnx"
    report = export_onnx(model, path, opset=options.opset, atol=options.atol, rtol=options.rtol)
    return StageOutput(path, load_onnx(path), counted=model,
                       info={"max_abs_diff": report.max_abs_diff, "folded": list(report.folded)})
