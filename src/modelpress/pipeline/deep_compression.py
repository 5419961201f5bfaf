"""Deep Compression (Han, Mao & Dally 2016): prune, retrain; share weights, fine-tune centroids; encode.

``deep_compress`` runs the three stages on an ordinary trained model, retraining between them with the
one training loop, writes the compressed file, loads it back and measures the loaded model: the
figures it reports are those of the file on disk.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared, nested, opt
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

    # The stage configs are set from Python (None skips a stage); users set them through CompressConfig.
    prune: PruneConfig | None = PruneConfig(sparsity=0.9)
    prune_steps: int = opt(1, "integer", lo=1, tunable=True, help="iterative pruning in N steps")
    prune_retrain: TrainConfig | None = TrainConfig(epochs=5, lr=0.01)
    quantize: QuantizeConfig = QuantizeConfig()
    quantize_retrain: TrainConfig | None = TrainConfig(epochs=3, optimizer="adam", lr=1e-4, schedule="constant")
    self_distill: DistillConfig | None = None
    index_bits_fc: int = opt(5, "integer", lo=1, hi=16, tunable=True,
                             help="bits per relative sparse index of fully connected layers")
    index_bits_conv: int = opt(8, "integer", lo=1, hi=16, tunable=True, help="bits per relative sparse index of convolutions")
    gradual: float | None = opt(None, lo=0, hi=1, lo_open=True, optional=True, metavar="FRACTION",
                                help="prune gradually within one retraining run of --retrain-epochs, reaching the "
                                     "targets after this fraction of it (Zhu & Gupta's ramp) instead of in "
                                     "--prune-steps steps")
    context_masks: bool = opt(True, "bool",
                              help="code sparsity patterns with the context-coded mask or spatial layout where that "
                                   "is smaller (--no-context-masks: relative indices only, readable by older modelpress)")
    float16: bool = opt(False, "bool",
                        help="round centroids, biases and every other float the file stores to float16 after "
                             "fine-tuning: half their bytes")

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
        check_declared(self)


UNSTRUCTURED_CRITERIA = ("magnitude", "global", "threshold", "sensitivity")
_DEFAULTS = DeepCompressionConfig()  # the one place the retraining defaults below are read from


@dataclass(frozen=True)
class CompressConfig:
    """Deep Compression as a user sets it: the one declaration of ``modelpress compress``'s flags and of
    the recipe ``prune`` / ``quantize`` / ``encode`` stages' fields (each exposes its part).

    :meth:`deep_compression_config` turns it into the :class:`DeepCompressionConfig` the pipeline runs;
    the retraining defaults are :class:`DeepCompressionConfig`'s own.

    Args:
        criterion: ``magnitude``, ``global``, ``threshold`` (Han's ``quality`` x std) or ``sensitivity``
            (the kept weights spread over the layers by a scan on the validation split).
        prune: ``sparsity`` and ``quality`` of the pruning step.
        steps: iterative pruning in this many steps (``DeepCompressionConfig.prune_steps``).
        retrain_epochs, retrain_lr, grad_clip: retraining after each pruning step (0 epochs: none).
        batch_size: of retraining and centroid fine-tuning.
        quantize: bits per layer type and centroid initialisation.
        finetune_epochs, finetune_lr: centroid fine-tuning with Adam at a constant rate (0 epochs: none).
        coding: index bits, gradual pruning, context masks, float16 (:class:`DeepCompressionConfig`).
        self_distill, temperature, alpha: retrain and fine-tune against the uncompressed model's soft targets.
        seed: seeds retraining and the random centroid initialisation.
    """

    criterion: str = opt("magnitude", "choice", choices=UNSTRUCTURED_CRITERIA, tunable=True,
                         help="per-layer (magnitude), one threshold for all layers (global), Han's threshold, or the "
                              "kept weights spread over the layers by a sensitivity scan on the validation split")
    prune: PruneConfig = nested(PruneConfig, expose=("sparsity", "quality"))
    steps: int = opt(_DEFAULTS.prune_steps, "integer", lo=1, tunable=True, flag="prune-steps",
                     help="iterative pruning in N steps")
    retrain_epochs: int = opt(_DEFAULTS.prune_retrain.epochs, "integer", lo=0, tunable=True,
                              help="retraining epochs after each pruning step")
    retrain_lr: float = opt(_DEFAULTS.prune_retrain.lr, lo=0, lo_open=True, tunable=True, help="retraining learning rate")
    grad_clip: float | None = opt(_DEFAULTS.prune_retrain.grad_clip, lo=0, lo_open=True, optional=True,
                                  help="clip the gradient norm while retraining")
    batch_size: int = opt(_DEFAULTS.prune_retrain.batch_size, "integer", lo=1,
                          help="batch size of retraining and fine-tuning")
    quantize: QuantizeConfig = nested(QuantizeConfig, expose=("bits_fc", "bits_conv", "init"))
    finetune_epochs: int = opt(_DEFAULTS.quantize_retrain.epochs, "integer", lo=0, tunable=True,
                               help="centroid fine-tuning epochs (0: none)")
    finetune_lr: float = opt(_DEFAULTS.quantize_retrain.lr, lo=0, lo_open=True, tunable=True,
                             help="Adam learning rate of the centroids")
    coding: DeepCompressionConfig = nested(DeepCompressionConfig, expose=("index_bits_fc", "index_bits_conv", "gradual",
                                                                          "context_masks", "float16"))
    self_distill: bool = opt(False, "bool", help="retrain and fine-tune with the uncompressed model's soft targets "
                                                 "as well as the labels")
    temperature: float = opt(2.0, lo=0, lo_open=True, tunable=True, help="with --self-distill")
    alpha: float = opt(0.9, lo=0, hi=1, tunable=True, help="with --self-distill: weight of the soft targets")
    seed: int = opt(0, "integer", lo=0, shared=True, help="seeds retraining and centroid initialisation")

    def __post_init__(self) -> None:
        if self.criterion == "threshold" and self.prune.criterion.value != "threshold":
            object.__setattr__(self, "prune", replace(self.prune, criterion="threshold"))
        elif self.criterion in ("magnitude", "global") and self.prune.criterion.value != self.criterion:
            object.__setattr__(self, "prune", replace(self.prune, criterion=self.criterion))
        check_declared(self)

    def retrain_config(self) -> TrainConfig | None:
        """Retraining after each pruning step; ``None`` for 0 epochs."""
        if not self.retrain_epochs:
            return None
        return replace(_DEFAULTS.prune_retrain, epochs=self.retrain_epochs, lr=self.retrain_lr,
                       batch_size=self.batch_size, grad_clip=self.grad_clip, seed=self.seed)

    def finetune_config(self) -> TrainConfig | None:
        """Centroid fine-tuning (Adam, constant rate); ``None`` for 0 epochs."""
        if not self.finetune_epochs:
            return None
        return replace(_DEFAULTS.quantize_retrain, epochs=self.finetune_epochs, lr=self.finetune_lr,
                       batch_size=self.batch_size, seed=self.seed)

    def prune_config(self, layer_sparsity: dict | None = None) -> PruneConfig:
        """The pruning step; ``sensitivity`` needs the per-layer targets its scan found.

        Raises:
            ConfigError: ``sensitivity`` without ``layer_sparsity``.
        """
        if self.criterion == "sensitivity":
            if layer_sparsity is None:
                raise ConfigError("criterion sensitivity needs the per-layer targets of sensitivity_sparsity()")
            return PruneConfig(sparsity=0.0, layer_sparsity=layer_sparsity)
        return self.prune

    def quantize_config(self) -> QuantizeConfig:
        """Weight sharing, seeded with ``seed``."""
        return replace(self.quantize, seed=self.seed)

    def deep_compression_config(self, layer_sparsity: dict | None = None) -> DeepCompressionConfig:
        """The pipeline's config (see :meth:`prune_config` for ``layer_sparsity``)."""
        kd = DistillConfig(temperature=self.temperature, alpha=self.alpha) if self.self_distill else None
        return replace(self.coding, prune=self.prune_config(layer_sparsity), prune_steps=self.steps,
                       prune_retrain=self.retrain_config(), quantize=self.quantize_config(),
                       quantize_retrain=self.finetune_config(), self_distill=kd)


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
