"""Stages that compress the model of an earlier stage: ``prune``, ``quantize``, ``encode``, ``factorize``,
``int8`` and ``export``, each a thin layer over the family's Python API. Retraining checkpoints into the
stage folder and is resumed when the recipe is run again."""

from __future__ import annotations

from dataclasses import replace

import torch

from modelpress.core.seed import seed_everything
from modelpress.encode import load_compressed, round_to_float16_, save_compressed
from modelpress.pipeline import DeepCompressionConfig, prune_and_retrain
from modelpress.prune import StructuredConfig, sensitivity_sparsity, structured_prune
from modelpress.quantize import finalize_, quantize_
from modelpress.recipes.context import StageContext, StageOutput
from modelpress.recipes.schema import EncodeStage, ExportStage, FactorizeStage, Int8Stage, PruneStage, QuantizeStage
from modelpress.train import train


def run_prune(options: PruneStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Unstructured pruning with retraining after each step (Han et al.), or structured channel pruning."""
    model = ctx.load(source)
    seed_everything(ctx.seed)
    compress = replace(options.compress, seed=ctx.seed)
    retrain = compress.retrain_config()
    info = {}
    if options.mode == "unstructured":
        allocation = None
        if options.criterion == "sensitivity":
            allocation = sensitivity_sparsity(model, ctx.splits.x_val, ctx.splits.y_val, compress.prune.sparsity)
            info["sparsity_per_layer"] = allocation
        config = DeepCompressionConfig(prune=compress.prune_config(allocation), prune_steps=compress.steps,
                                       prune_retrain=retrain)
        prune_and_retrain(model, ctx.splits, config, progress=ctx.progress, checkpoint_path=ctx.checkpoint("retrain"),
                          resume=True, callbacks=ctx.callbacks)
    else:
        config = StructuredConfig(amount=compress.prune.sparsity, criterion=options.criterion)
        report = structured_prune(model, config, ctx.splits.x_train[:2],
                                  data=ctx.splits if config.needs_data else None)
        info = {"layers_changed": len(report.layers), "groups_left_whole": len(report.skipped),
                "params_before": report.params_before, "params_after": report.params_after}
        if retrain is not None:
            train(model, ctx.splits, retrain, checkpoint_path=ctx.checkpoint("retrain"), resume=True, progress=ctx.progress,
                  callbacks=ctx.callbacks, description=f"{ctx.stage_name}: retrain")
    return StageOutput(ctx.save(model, "prune", mode=options.mode, criterion=options.criterion,
                                sparsity=compress.prune.sparsity), model, info=info)


def run_quantize(options: QuantizeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """k-means weight sharing, centroid fine-tuning (Adam, constant rate), then the shared values folded in.

    The saved ``.mpk`` holds ordinary weights with at most ``2**bits`` distinct values per layer;
    an ``encode`` stage stores them as codebook + indices."""
    model = ctx.load(source)
    compress = replace(options.compress, seed=ctx.seed)
    report = quantize_(model, compress.quantize_config())
    config = compress.finetune_config()
    if config is not None:
        train(model, ctx.splits, config, checkpoint_path=ctx.checkpoint("finetune"), resume=True, progress=ctx.progress,
              callbacks=ctx.callbacks, description=f"{ctx.stage_name}: fine-tune centroids")
    finalize_(model)
    path = ctx.save(model, "quantize", bits_fc=compress.quantize.bits_fc, bits_conv=compress.quantize.bits_conv)
    return StageOutput(path, model, info={"layers": report.rows})


def run_encode(options: EncodeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Write the Deep Compression file and measure the model read back from it."""
    model = ctx.load(source)
    path = ctx.folder / "model.mpz"
    if options.float16:
        round_to_float16_(model)
    coding = options.coding
    save_compressed(model, path, index_bits_fc=coding.index_bits_fc, index_bits_conv=coding.index_bits_conv,
                    float16=coding.float16,
                    extra={"data": ctx.splits.name, "recipe": ctx.recipe_name, "stage": ctx.stage_name})
    loaded, _, _ = load_compressed(path)
    return StageOutput(path, loaded.eval())


def run_factorize(options: FactorizeStage, ctx: StageContext, source: str | None) -> StageOutput:
    """Low-rank layers (ranks by energy or a FLOP budget), fine-tuned."""
    from modelpress.factorize import factorize_

    model = ctx.load(source)
    report = factorize_(model, options.factorize, ctx.splits.x_train[:2])
    config = replace(options.finetune, seed=ctx.seed).train_config()
    if config is not None:
        seed_everything(ctx.seed)
        train(model, ctx.splits, config, checkpoint_path=ctx.checkpoint("finetune"), resume=True, progress=ctx.progress,
              callbacks=ctx.callbacks, description=f"{ctx.stage_name}: fine-tune")
    info = {"factorized": report.factorized, "skipped": report.skipped, "flops_fraction": report.flops_fraction}
    return StageOutput(ctx.save(model, "factorize", factorize_method=options.factorize.method.value), model, info=info)


def run_int8(options: Int8Stage, ctx: StageContext, source: str | None) -> StageOutput:
    """An int8 ONNX file run by ONNX Runtime; parameters and FLOPs are those of the float model it came from."""
    from modelpress.export import load_onnx
    from modelpress.quantize import quantize_int8

    model = ctx.load(source)
    config = options.int8
    g = torch.Generator().manual_seed(ctx.seed)
    x = ctx.splits.x_train
    calibration = x[torch.randperm(len(x), generator=g)[: config.calibration]]
    path = ctx.folder / "model.int8.onnx"
    report = quantize_int8(model, path, config, calibration, data=ctx.splits, train_config=config.qat_train_config(ctx.seed))
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
