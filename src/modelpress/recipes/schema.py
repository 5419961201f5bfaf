"""One options dataclass per stage kind, each field typed and bounded (see :mod:`modelpress.recipes.fields`).

The stage kinds and what they call:

- ``train``: a zoo model trained from scratch (:func:`modelpress.train.train`).
- ``load``: a ``.mpk`` / ``.mpz`` file made elsewhere.
- ``distill``: a student from the teacher stage (:mod:`modelpress.distill`: hinton, logits,
  early-stopped, born-again, fitnets, attention).
- ``prune``: unstructured (magnitude, global, threshold; :func:`modelpress.pipeline.prune_and_retrain`)
  or structured (whole channels; :func:`modelpress.prune.structured_prune`), then retraining.
- ``quantize``: k-means weight sharing with centroid fine-tuning (:func:`modelpress.quantize.quantize_`).
- ``encode``: the Deep Compression ``.mpz`` file (:func:`modelpress.encode.save_compressed`).
- ``factorize``: SVD / Tucker-2 / CP (:func:`modelpress.factorize.factorize_`), fine-tuned.
- ``int8``: an int8 ONNX file for ONNX Runtime (:func:`modelpress.quantize.quantize_int8`).
- ``export``: a float ONNX file checked in ONNX Runtime (:func:`modelpress.export.export_onnx`).
- ``tree``: ensemble -> one born-again tree (:class:`modelpress.trees.BornAgainTreeClassifier`).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelpress.core.errors import ConfigError
from modelpress.recipes.fields import opt
from modelpress.train import TrainConfig

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine", "exponential")
GRAD_COMPRESSIONS = ("terngrad", "powersgd")


@dataclass(frozen=True)
class TrainingOptions:
    """The training loop's settings that a recipe may set (and tune) on any stage that trains."""

    epochs: int = opt(10, "integer", lo=1, tunable=True)
    batch_size: int = opt(128, "integer", lo=1, tunable=True)
    optimizer: str = opt("sgd", "choice", choices=OPTIMIZERS, tunable=True)
    lr: float = opt(0.05, lo=0, lo_open=True, tunable=True)
    momentum: float = opt(0.9, lo=0, hi=1, hi_open=True, tunable=True)
    weight_decay: float = opt(0.0, lo=0, tunable=True)
    schedule: str = opt("cosine", "choice", choices=SCHEDULES, tunable=True)
    patience: int | None = opt(None, "integer", lo=1, optional=True)
    jitter: int = opt(0, "integer", lo=0, tunable=True)
    grad_clip: float | None = opt(None, lo=0, lo_open=True, optional=True, tunable=True)
    max_norm: float | None = opt(None, lo=0, lo_open=True, optional=True, tunable=True)
    # Only under torchrun (several processes); one process ignores them and says so.
    grad_compression: str | None = opt(None, "choice", choices=GRAD_COMPRESSIONS, optional=True, tunable=True)
    powersgd_rank: int = opt(1, "integer", lo=1, tunable=True)

    def train_config(self, seed: int) -> TrainConfig:
        """These settings as the training loop's config."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
                           patience=self.patience, jitter=self.jitter, grad_clip=self.grad_clip,
                           max_norm=self.max_norm, grad_compression=self.grad_compression,
                           powersgd_rank=self.powersgd_rank, seed=seed)


@dataclass(frozen=True)
class TrainStage(TrainingOptions):
    """Train a zoo architecture from scratch."""

    model: str = opt(type="text", help="a zoo architecture such as mlp:800-800 or lenet5")
    dropout: float | None = opt(None, lo=0, hi=1, hi_open=True, optional=True, tunable=True)
    input_dropout: float | None = opt(None, lo=0, hi=1, hi_open=True, optional=True, tunable=True)


@dataclass(frozen=True)
class LoadStage:
    """A model file made elsewhere; a relative path is read from the recipe's folder."""

    path: str = opt(type="text", help="a .mpk or .mpz model file")


DISTILL_METHODS = ("hinton", "logits", "early-stopped", "born-again", "fitnets", "attention")


@dataclass(frozen=True)
class DistillStage(TrainingOptions):
    """Distil the teacher stage's model into a student (``teacher:`` names it; default: the stage before)."""

    method: str = opt("hinton", "choice", choices=DISTILL_METHODS)
    student: str | None = opt(None, "text", optional=True, help="a zoo architecture such as mlp:800-800")
    teacher: str | None = opt(None, "text", optional=True, help="the name of an earlier stage")
    dropout: float | None = opt(None, lo=0, hi=1, hi_open=True, optional=True, tunable=True)
    temperature: float = opt(4.0, lo=0, lo_open=True, tunable=True)
    alpha: float | None = opt(None, lo=0, hi=1, optional=True, tunable=True)
    kd_epochs: int | None = opt(None, "integer", lo=1, optional=True, tunable=True)
    generations: int = opt(3, "integer", lo=1)
    layers: str | None = opt(None, "text", optional=True, help="student:teacher layer pairs, S:T[,S:T...]")
    beta: float = opt(1000.0, lo=0, lo_open=True, tunable=True)
    stage1_epochs: int = opt(2, "integer", lo=1, tunable=True)
    stage1_lr: float = opt(1e-3, lo=0, lo_open=True, tunable=True)
    precompute: bool = opt(True, "bool")

    def __post_init__(self) -> None:
        if self.method == "born-again":
            if self.student is not None:
                raise ConfigError("born-again trains the teacher's own architecture: drop 'student'")
        elif self.student is None:
            raise ConfigError(f"field 'student' is required for method {self.method} (a zoo architecture such as mlp:800-800)")
        if self.kd_epochs is not None and self.method != "early-stopped":
            raise ConfigError("field 'kd_epochs' belongs to method early-stopped")
        if self.method == "early-stopped" and self.kd_epochs is None:
            raise ConfigError("method early-stopped needs field 'kd_epochs' (epochs with the teacher term)")
        if self.jitter and self.precompute and self.method in ("hinton", "logits", "early-stopped", "born-again"):
            raise ConfigError("jitter shifts the inputs, so precomputed teacher outputs would not match: set precompute: false")

    @property
    def alpha_or_default(self) -> float:
        """The teacher term's weight: as given, else the method's paper default (born-again 1, attention 0, else 0.9)."""
        if self.alpha is not None:
            return self.alpha
        return {"born-again": 1.0, "attention": 0.0}.get(self.method, 0.9)


# sensitivity: the kept weights spread over the layers by a scan on the validation split
PRUNE_CRITERIA = {"unstructured": ("magnitude", "global", "threshold", "sensitivity"),
                  "structured": ("l1", "l2", "apoz", "taylor")}


@dataclass(frozen=True)
class PruneStage:
    """Remove weights (``unstructured``) or whole channels (``structured``), then retrain."""

    mode: str = opt("unstructured", "choice", choices=tuple(PRUNE_CRITERIA))
    criterion: str | None = opt(None, "choice", choices=sum(PRUNE_CRITERIA.values(), ()), optional=True)
    sparsity: float = opt(0.9, lo=0, hi=1, hi_open=True, tunable=True)
    quality: float = opt(1.0, lo=0, tunable=True)
    steps: int = opt(1, "integer", lo=1, tunable=True)
    retrain_epochs: int = opt(5, "integer", lo=0, tunable=True)
    retrain_lr: float = opt(0.01, lo=0, lo_open=True, tunable=True)
    batch_size: int = opt(128, "integer", lo=1)
    grad_clip: float | None = opt(None, lo=0, lo_open=True, optional=True)

    def __post_init__(self) -> None:
        allowed = PRUNE_CRITERIA[self.mode]
        if self.criterion is None:
            object.__setattr__(self, "criterion", allowed[0])
        elif self.criterion not in allowed:
            raise ConfigError(f"field 'criterion' must be one of: {', '.join(allowed)} with mode {self.mode}, got {self.criterion!r}")
        if self.mode == "structured" and self.steps != 1:
            raise ConfigError("field 'steps' must be 1 with mode structured (channels are removed once)")


@dataclass(frozen=True)
class QuantizeStage:
    """k-means weight sharing (``bits`` sets both layer types), then centroid fine-tuning with Adam."""

    bits: int | None = opt(None, "integer", lo=1, hi=16, optional=True, tunable=True)
    bits_fc: int = opt(5, "integer", lo=1, hi=16, tunable=True)
    bits_conv: int = opt(8, "integer", lo=1, hi=16, tunable=True)
    init: str = opt("linear", "choice", choices=("linear", "density", "random"), tunable=True)
    finetune_epochs: int = opt(3, "integer", lo=0, tunable=True)
    finetune_lr: float = opt(1e-4, lo=0, lo_open=True, tunable=True)
    batch_size: int = opt(128, "integer", lo=1)

    def __post_init__(self) -> None:
        if self.bits is not None:
            object.__setattr__(self, "bits_fc", self.bits)
            object.__setattr__(self, "bits_conv", self.bits)


@dataclass(frozen=True)
class EncodeStage:
    """The Deep Compression file: relative-index sparse storage, Huffman/ANS coded."""

    index_bits_fc: int = opt(5, "integer", lo=1, hi=16, tunable=True)
    index_bits_conv: int = opt(8, "integer", lo=1, hi=16, tunable=True)
    float16: bool = opt(False, "bool")  # centroids, biases and every other float rounded to float16: half their bytes


@dataclass(frozen=True)
class FactorizeStage:
    """Low-rank factorization (ranks by ``energy`` or ``flop_budget``), then fine-tuning."""

    method: str = opt("svd", "choice", choices=("svd", "tucker", "cp"), tunable=True)
    energy: float = opt(0.9, lo=0, hi=1, lo_open=True, tunable=True)
    flop_budget: float | None = opt(None, lo=0, hi=1, lo_open=True, optional=True, tunable=True)
    finetune_epochs: int = opt(3, "integer", lo=0, tunable=True)
    lr: float = opt(0.01, lo=0, lo_open=True, tunable=True)
    grad_clip: float | None = opt(1.0, lo=0, lo_open=True, optional=True)
    batch_size: int = opt(128, "integer", lo=1)


@dataclass(frozen=True)
class Int8Stage:
    """An int8 ONNX file: ``dynamic`` (no data), ``static`` (calibrated) or ``qat`` (fine-tuned with fake quantization)."""

    mode: str = opt("dynamic", "choice", choices=("dynamic", "static", "qat"), tunable=True)
    calibration: int = opt(512, "integer", lo=1)
    epochs: int = opt(2, "integer", lo=1)
    lr: float = opt(0.005, lo=0, lo_open=True)
    opset: int = opt(17, "integer", lo=7)


@dataclass(frozen=True)
class ExportStage:
    """A float ONNX file, checked against PyTorch in ONNX Runtime."""

    opset: int = opt(17, "integer", lo=7)
    atol: float = opt(1e-4, lo=0, lo_open=True)
    rtol: float = opt(1e-3, lo=0)


@dataclass(frozen=True)
class TreeStage:
    """A born-again tree (Breiman & Shang 1996): one CART tree grown on real and synthetic rows labelled
    by an ``ensemble`` fitted on the training split, or by an earlier stage's model (``teacher:``)."""

    ensemble: str = opt("random_forest", "choice", choices=("random_forest", "gradient_boosting"))
    teacher: str | None = opt(None, "text", optional=True, help="the name of an earlier stage")
    synthetic: str = opt("munge", "choice", choices=("munge", "smear", "none"), tunable=True)
    n_synthetic: int = opt(10000, "integer", lo=0, tunable=True)
    max_depth: int | None = opt(None, "integer", lo=1, optional=True, tunable=True)
    max_leaf_nodes: int | None = opt(None, "integer", lo=2, optional=True, tunable=True)
    min_samples_leaf: int = opt(1, "integer", lo=1, tunable=True)
    prune: str = opt("train", "choice", choices=("train", "none"), tunable=True)


STAGE_KINDS: dict[str, type] = {"train": TrainStage, "load": LoadStage, "distill": DistillStage, "prune": PruneStage,
                                "quantize": QuantizeStage, "encode": EncodeStage, "factorize": FactorizeStage,
                                "int8": Int8Stage, "export": ExportStage, "tree": TreeStage}
# kinds whose file (ONNX, a tree) ends a chain: no later stage can read it as a PyTorch model
TERMINAL_KINDS = ("int8", "export", "tree")


@dataclass(frozen=True)
class DataSection:
    """The data set every stage uses."""

    name: str = opt(type="text", help="digits, fashion-mnist, mnist, wine, breast-cancer, mnist1d, or a folder")
    limit: int | None = opt(None, "integer", lo=1, optional=True)
    limit_test: int | None = opt(None, "integer", lo=1, optional=True)
    val_size: float | None = opt(None, lo=0, lo_open=True, optional=True)


@dataclass(frozen=True)
class MeasureSection:
    """What is measured after each stage besides accuracy, parameters, bytes and FLOPs."""

    latency: bool = opt(True, "bool")


@dataclass(frozen=True)
class ObjectiveSection:
    """What ``tune`` maximises: validation accuracy of ``stage`` (default the last), less ``penalty`` x
    the fraction by which its file exceeds ``max_bytes``."""

    metric: str = opt("val_accuracy", "choice", choices=("val_accuracy",))
    stage: str | None = opt(None, "text", optional=True, help="the name of the stage whose model counts")
    max_bytes: int | None = opt(None, "integer", lo=1, optional=True)
    penalty: float = opt(1.0, lo=0)
