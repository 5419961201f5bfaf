"""Deep Compression (Han, Mao & Dally 2016): prune, retrain; share weights, fine-tune centroids; encode.

``deep_compress`` runs the three stages on an ordinary trained model, retraining between them with the
one training loop, writes the compressed file, loads it back and measures the loaded model: the
figures it reports are those of the file on disk.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.data.base import DataSplits
from modelpress.distill import DistillConfig
from modelpress.distill.core import DistillationObjective
from modelpress.distill.teachers import as_teacher
from modelpress.encode import load_compressed, read_manifest, round_to_float16_, save_compressed
from modelpress.encode.report import layer_rows
from modelpress.encode.sparse import check_index_bits
from modelpress.measure import count_params, evaluate_accuracy, file_bytes
from modelpress.pipeline.gradual import ScaledGradualPruning, scaled_prune_config
from modelpress.prune import PruneConfig, make_permanent_, prunable_layers, prune_
from modelpress.quantize import QuantizeConfig, finalize_, quantize_
from modelpress.train import Objective, TrainConfig, cross_entropy_objective, train


@dataclass(frozen=True)
class DeepCompressionConfig:
    """The three stages' settings.

    Args:
        prune: which weights go (per-layer sparsity, Han's threshold with ``quality``, or global);
            ``None`` skips the pruning stage (a model pruned beforehand keeps its zeros, or
            quantization alone).
        prune_steps: prune in this many equal steps up to the target, retraining after each
            (iterative pruning); 1 is one-shot followed by retraining.
        prune_retrain: training after each pruning step (masks fixed); ``None`` skips it.
        quantize: bits per layer type and centroid initialisation.
        quantize_retrain: centroid fine-tuning; ``None`` skips it. Adam by default: a centroid's
            gradient is the sum over its cluster, which grows with the cluster (30 or 30,000
            members), and Adam's per-parameter scaling makes one learning rate fit all of them
            where SGD's would have to shrink with the largest cluster.
        self_distill: if set, both retraining stages learn from the uncompressed model's soft
            targets as well as the labels (its ``method``, ``temperature`` and ``alpha``; the stages'
            own TrainConfigs replace its ``train``). Beyond the paper; on Fashion-MNIST it recovered
            part of the pruning loss (``benchmarks/prune_retraining.py``).
        index_bits_fc / index_bits_conv: bits of the relative sparse indices.
        gradual: prune inside one retraining run instead of in ``prune_steps`` steps: the targets rise
            along Zhu & Gupta's cubic ramp over the first ``gradual`` fraction of ``prune_retrain``'s
            epochs (``pipeline/gradual.py``), the rest retrains with the final masks. ``None``: Han's
            iterative steps. Beyond the paper; on Fashion-MNIST it kept far more accuracy at Han's
            sparsities (``benchmarks/deep_compression.py``).
        context_masks: let the file code a layer's sparsity mask with the row x column context model
            (a version-3 file; ``encode/mask.py``) or, for a conv layer or an MLP's first layer on
            images, positions and labels with their neighbours as context (version 5;
            ``encode/spatial.py``), where that is smaller than relative indices.
        float16: after fine-tuning, round every float the file stores (centroids, biases,
            normalisation) to float16 values, which the file then holds in 2 bytes each instead of 4.
            The accuracy reported is the rounded model's, as always measured on the file.
    """

    prune: PruneConfig | None = PruneConfig(sparsity=0.9)
    prune_steps: int = 1
    prune_retrain: TrainConfig | None = TrainConfig(epochs=5, lr=0.01)
    quantize: QuantizeConfig = QuantizeConfig()
    quantize_retrain: TrainConfig | None = TrainConfig(epochs=3, optimizer="adam", lr=1e-4, schedule="constant")
    self_distill: DistillConfig | None = None
    index_bits_fc: int = 5
    index_bits_conv: int = 8
    gradual: float | None = None
    context_masks: bool = True
    float16: bool = False

    def __post_init__(self) -> None:
        if self.prune_steps < 1:
            raise ConfigError(f"prune_steps must be at least 1; got {self.prune_steps}")
        if self.gradual is not None and not 0 < self.gradual <= 1:
            raise ConfigError(f"gradual must be a fraction of the retraining epochs in (0, 1]; got {self.gradual}")
        if self.gradual is not None and self.prune_retrain is None:
            raise ConfigError("gradual pruning happens during retraining: set prune_retrain")
        # checked here, not when the file is written, so a bad value never costs the retraining
        check_index_bits(self.index_bits_fc, "index_bits_fc")
        check_index_bits(self.index_bits_conv, "index_bits_conv")


@dataclass
class CompressionResult:
    """Before/after figures of one compression, measured on the test split and on the written file."""

    path: Path
    reference: dict
    pruned: dict
    compressed: dict
    layers: list[dict] = field(default_factory=list)
    stream_stats: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)  # layer -> (weights before sharing, final centroids)
    loaded_model: nn.Module | None = None  # the model as read back from the file

    def summary_rows(self) -> list[dict]:
        """Han et al.'s Table 1 form: error, size, compression rate."""
        ref_bytes = self.reference["dense_bytes"]
        return [
            {"model": "reference", "error_percent": 100 * (1 - self.reference["accuracy"]), "bytes": ref_bytes, "rate": 1.0},
            {"model": "pruned (P)", "error_percent": 100 * (1 - self.pruned["accuracy"]), "bytes": None,
             "rate": self.pruned["rate_dense_over_kept"]},
            {"model": "compressed (P+Q+H), loaded from file", "error_percent": 100 * (1 - self.compressed["accuracy"]),
             "bytes": self.compressed["bytes"], "rate": ref_bytes / self.compressed["bytes"]},
        ]


Teachers = nn.Module | Sequence[nn.Module]


def _objective(teacher: Teachers, config: DeepCompressionConfig) -> Objective:
    """Cross-entropy, or distillation from frozen copies of ``teacher`` taken now (before the model is
    compressed); a sequence of modules teaches as their uniform ensemble."""
    if config.self_distill is None:
        return cross_entropy_objective
    members = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
    if not members:
        raise ConfigError("the teacher ensemble is empty; give a module or a non-empty list of modules")
    frozen = [copy.deepcopy(member).eval() for member in members]
    # one member stays a plain teacher: an ensemble of one would hand out log-probabilities, not logits,
    # and so soften differently at the same temperature
    return DistillationObjective(as_teacher(frozen[0] if len(frozen) == 1 else frozen), config.self_distill)


def prune_and_retrain(model: nn.Module, data: DataSplits, config: DeepCompressionConfig, *, progress: bool | None = False,
                      objective: Objective | None = None, checkpoint_path: str | os.PathLike[str] | None = None,
                      resume: bool = False, callbacks: tuple = (), teacher: Teachers | None = None) -> nn.Module:
    """Deep Compression's first stage alone: prune in ``config.prune_steps`` steps, retraining after each.

    With ``config.self_distill``, retraining learns from ``teacher`` (default: a copy of ``model`` as
    given); a list of modules teaches as their ensemble. ``objective``, if given, replaces both.

    With ``checkpoint_path``, step ``k``'s retraining checkpoints to ``PATH.step{k}``; with ``resume``
    an existing one is continued (pruning is deterministic, so redoing a step's masks is exact).
    ``callbacks`` go to every retraining run.

    With ``config.gradual``, pruning is one retraining run with :class:`ScaledGradualPruning`
    as a callback (checkpointing to ``PATH.gradual``).

    Returns the model (in place) with its masks made permanent: an ordinary module with zeros.
    """
    objective = objective or _objective(model if teacher is None else teacher, config)
    if config.gradual is not None and config.prune is not None:
        steps_per_epoch = -(-int(data.y_train.shape[0]) // config.prune_retrain.batch_size)
        end_step = max(1, round(config.gradual * config.prune_retrain.epochs * steps_per_epoch))
        ramp = ScaledGradualPruning(config.prune, end_step=end_step, every=max(1, min(100, end_step // 20)))
        train(model, data, config.prune_retrain, objective=objective, progress=progress,
              checkpoint_path=f"{checkpoint_path}.gradual" if checkpoint_path else None, resume=resume,
              callbacks=(ramp, *callbacks), description="gradual pruning")
        return make_permanent_(model)
    for step in range(1, config.prune_steps + 1 if config.prune is not None else 1):
        # Han et al. grow the threshold step by step; masks only grow because pruned weights stay zero
        prune_(model, scaled_prune_config(config.prune, step / config.prune_steps))
        if config.prune_retrain is not None:
            train(model, data, config.prune_retrain, objective=objective, progress=progress,
                  checkpoint_path=f"{checkpoint_path}.step{step}" if checkpoint_path else None, resume=resume,
                  callbacks=callbacks, description=f"retrain after pruning {step}")
    return make_permanent_(model)


def _accuracy(model: nn.Module, data: DataSplits) -> float:
    return evaluate_accuracy(model, data.x_test, data.y_test).accuracy


def deep_compress(model: nn.Module, data: DataSplits, config: DeepCompressionConfig, output: str | os.PathLike[str], *,
                  teacher: Teachers | None = None, progress: bool | None = None) -> CompressionResult:
    """Compress a trained ``model`` (in place) and write it to ``output``.

    The model ends as an ordinary module (no masks or hooks left) whose weights are the shared values
    written to the file. With ``config.self_distill``, retraining learns from ``teacher`` (default: a
    copy of ``model`` as given; pass the uncompressed model when ``model`` was pruned beforehand). A list
    of modules teaches as their uniform ensemble (probabilities averaged), e.g. the reference and
    other trainings of it: a stronger teacher than the reference alone.

    Returns:
        A :class:`CompressionResult`; ``result.compressed`` is measured on the model loaded back from
        ``output``, ``result.layers`` is the per-layer table of the file.
    """
    ref = {"accuracy": _accuracy(model, data), "params": count_params(model), "dense_bytes": 4 * count_params(model)}
    objective = _objective(model if teacher is None else teacher, config)
    prune_and_retrain(model, data, config, progress=progress, objective=objective)
    kept = sum(int((p != 0).sum()) for p in model.parameters())
    pruned = {"accuracy": _accuracy(model, data), "kept_params": kept, "rate_dense_over_kept": ref["params"] / max(kept, 1)}

    before_sharing = {name: m.weight.detach().numpy().copy() for name, m in prunable_layers(model).items()}
    quantize_(model, config.quantize)
    if config.quantize_retrain is not None:
        train(model, data, config.quantize_retrain, objective=objective, progress=progress, description="fine-tune centroids")
    histograms = {name: (weights, prunable_layers(model)[name].weight_centroids.detach().numpy().copy())
                  for name, weights in before_sharing.items()}

    if config.float16:
        round_to_float16_(model)
    stats = save_compressed(model, output, index_bits_fc=config.index_bits_fc, index_bits_conv=config.index_bits_conv,
                            context_masks=config.context_masks, float16=config.float16,
                            extra={"data": data.name, "reference_accuracy": ref["accuracy"]})
    finalize_(model)
    loaded, _, _ = load_compressed(output)
    compressed = {"accuracy": _accuracy(loaded, data), "bytes": file_bytes(output)}
    manifest, _ = read_manifest(output)
    return CompressionResult(Path(output), ref, pruned, compressed, layer_rows(manifest), stats, histograms, loaded)
