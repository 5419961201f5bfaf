"""One options dataclass per stage kind, each field typed and bounded (see :mod:`modelpress.recipes.fields`).

The stage kinds and what they call:

- ``train``: a zoo model trained from scratch (:func:`modelpress.train.train`).
- ``load``: a ``.mpk`` / ``.mpz`` file made elsewhere.
- ``distill``: a student from the teacher stage, by any method of :data:`modelpress.distill.methods.METHODS`
  (its fields generated from the method's config).
- ``prune``: unstructured (magnitude, global, threshold; :func:`modelpress.pipeline.prune_and_retrain`)
  or structured (whole channels; :func:`modelpress.prune.structured_prune`), then retraining.
- ``quantize``: k-means weight sharing with centroid fine-tuning (:func:`modelpress.quantize.quantize_`).
- ``encode``: the Deep Compression ``.mpz`` file (:func:`modelpress.encode.save_compressed`).
- ``factorize``: SVD / Tucker-2 / CP (:func:`modelpress.factorize.factorize_`), fine-tuned.
- ``int8``: an int8 ONNX file for ONNX Runtime (:func:`modelpress.quantize.quantize_int8`).
- ``export``: a float ONNX file checked in ONNX Runtime (:func:`modelpress.export.export_onnx`).
- ``tree``: ensemble -> one born-again tree (:class:`modelpress.tabular.trees.BornAgainTreeClassifier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass, replace
from typing import Any

from modelpress.core.errors import ConfigError
from modelpress.core.options import check_declared
from modelpress.core.options import Nested, check_declared, flat_fields, nested
from modelpress.distill.methods import METHODS, with_seed
from modelpress.factorize.core import FactorizeConfig, ShrinkConfig
from modelpress.pipeline.deep_compression import UNSTRUCTURED_CRITERIA, CompressConfig, DeepCompressionConfig
from modelpress.prune.structured import ChannelCriterion
from modelpress.quantize.int8 import Int8Config
from modelpress.recipes.fields import opt
from modelpress.train import TrainConfig

# a stage's seed is the recipe's top-level seed, so no stage offers it as a field
_TRAIN_FIELDS = tuple(item.name for item in flat_fields(TrainConfig) if item.name != "seed")


class _Forward:
    """Read nested configs' fields as the stage's own (``stage.lr`` for ``stage.train.lr``), as recipes name them."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy/pickle probe before __dict__ exists
            raise AttributeError(name)
        found = _find(self, name)
        if found is _MISSING:
            raise AttributeError(f"{type(self).__name__} has no option {name!r}")
        return found


_MISSING = object()


def _find(config: Any, name: str) -> Any:
    """The value of field ``name`` in ``config``'s nested configs, depth first (``_MISSING`` if none)."""
    for f in fields(config):
        if "nested" not in f.metadata or f.name not in config.__dict__:
            continue
        inner = config.__dict__[f.name]
        if name in inner.__dict__:
            return inner.__dict__[name]
        found = _find(inner, name)
        if found is not _MISSING:
            return found
    return _MISSING


@dataclass(frozen=True)
class TrainingOptions(_Forward):
    """The training loop's settings that a recipe may set (and tune) on any stage that trains: every
    option :class:`TrainConfig` declares but the seed, which is the recipe's."""

    train: TrainConfig = nested(TrainConfig, expose=_TRAIN_FIELDS)

    def train_config(self, seed: int) -> TrainConfig:
        """These settings as the training loop's config."""
        return replace(self.train, seed=seed)


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


@dataclass(frozen=True)
class DistillStage(_Forward):
    """Distil the teacher stage's model into a student (``teacher:`` names it; default: the stage before).

    ``method`` is any registered method (:data:`modelpress.distill.methods.METHODS`); the stage's other
    fields are the method's own options, generated from its config (:func:`distill_stage_class`), so a
    recipe, the CLI and Python build the same config. The seed is the recipe's.
    """

    method: str = opt("hinton", "choice", choices=tuple(METHODS.names()), help="the distillation method")
    student: str | None = opt(None, "text", optional=True, help="a zoo architecture such as mlp:800-800")
    teacher: str | None = opt(None, "text", optional=True, help="the name of an earlier stage")
    dropout: float | None = opt(None, lo=0, hi=1, hi_open=True, optional=True, tunable=True)
    precompute: bool = opt(True, "bool", help="run the teacher once over the training split, not every epoch")

    def __post_init__(self) -> None:
        entry = METHODS.get(self.method)
        if entry.student == "teacher":
            if self.student is not None:
                raise ConfigError(f"{self.method} trains the teacher's own architecture: drop 'student'")
        elif self.student is None:
            raise ConfigError(f"field 'student' is required for method {self.method} (a zoo architecture such as mlp:800-800)")
        refuses_store = entry.teacher == "outputs" or entry.student == "teacher"
        if refuses_store and self.precompute and getattr(self, "jitter", 0):
            raise ConfigError("jitter shifts the inputs, so precomputed teacher outputs would not match: set precompute: false")

    @classmethod
    def for_raw(cls, raw: dict, where: str) -> type:
        """The stage class of the method ``raw`` names (its fields: the common ones and the method's options).

        Raises:
            ConfigError: an unknown method, or an option the method does not offer.
        """
        name = raw.get("method", "hinton")
        if not isinstance(name, str) or name not in METHODS:
            raise ConfigError(f"{where} field 'method' must be one of: {', '.join(METHODS.names())}, got {name!r}")
        stage = distill_stage_class(name)
        known = {item.name for item in flat_fields(stage)} - set(_refused(name))
        for key in raw:
            if key in _refused(name):
                raise ConfigError(f"{where} unknown field {key!r} for method {name}; known fields: {', '.join(sorted(known))}")
        return stage

    def method_config(self, seed: int) -> Any:
        """The method's config, with the recipe's ``seed`` and what the method fixes (the ``logits`` loss)."""
        entry = METHODS.get(self.method)
        config = with_seed(self.config, seed)
        return replace(config, **entry.preset) if entry.preset else config


def _refused(method: str) -> tuple[str, ...]:
    """Flat names of the method's config that a recipe may not set: the recipe's seed, and what the method skips."""
    return ("seed", *METHODS.get(method).skip)


_STAGE_CLASSES: dict[str, type] = {}


def distill_stage_class(method: str) -> type:
    """The :class:`DistillStage` subclass of ``method``: its ``config`` field is the method's config, nested."""
    if method not in _STAGE_CLASSES:
        entry = METHODS.get(method)
        # no default instance: a method may have required options; build() makes it from the stage's fields
        spec = field(default=None, metadata={"nested": Nested(entry.config)})
        cls = make_dataclass(f"DistillStage[{method}]", [("config", entry.config, spec)], bases=(DistillStage,), frozen=True)
        cls.__module__ = __name__
        _STAGE_CLASSES[method] = cls
    return _STAGE_CLASSES[method]


# sensitivity: the kept weights spread over the layers by a scan on the validation split
PRUNE_CRITERIA = {"unstructured": UNSTRUCTURED_CRITERIA, "structured": tuple(c.value for c in ChannelCriterion)}


@dataclass(frozen=True)
class PruneStage(_Forward):
    """Remove weights (``unstructured``) or whole channels (``structured``), then retrain."""

    mode: str = opt("unstructured", "choice", choices=tuple(PRUNE_CRITERIA))
    criterion: str | None = opt(None, "choice", choices=sum(PRUNE_CRITERIA.values(), ()), optional=True)
    compress: CompressConfig = nested(CompressConfig, expose=("prune", "steps", "retrain_epochs", "retrain_lr",
                                                              "batch_size", "grad_clip"))

    def __post_init__(self) -> None:
        allowed = PRUNE_CRITERIA[self.mode]
        if self.criterion is None:
            object.__setattr__(self, "criterion", allowed[0])
        elif self.criterion not in allowed:
            raise ConfigError(f"field 'criterion' must be one of: {', '.join(allowed)} with mode {self.mode}, got {self.criterion!r}")
        if self.mode == "structured" and self.compress.steps != 1:
            raise ConfigError("field 'steps' must be 1 with mode structured (channels are removed once)")
        if self.mode == "unstructured":
            object.__setattr__(self, "compress", replace(self.compress, criterion=self.criterion))


@dataclass(frozen=True)
class QuantizeStage(_Forward):
    """k-means weight sharing (``bits`` sets both layer types), then centroid fine-tuning with Adam."""

    bits: int | None = opt(None, "integer", lo=1, hi=16, optional=True, tunable=True)
    compress: CompressConfig = nested(CompressConfig, expose=("quantize", "finetune_epochs", "finetune_lr", "batch_size"))

    def __post_init__(self) -> None:
        if self.bits is not None:
            shared = replace(self.compress.quantize, bits_fc=self.bits, bits_conv=self.bits)
            object.__setattr__(self, "compress", replace(self.compress, quantize=shared))


@dataclass(frozen=True)
class EncodeStage(_Forward):
    """The Deep Compression file: relative-index sparse storage, Huffman/ANS coded (``float16``: centroids,
    biases and every other float rounded to float16, half their bytes)."""

    coding: DeepCompressionConfig = nested(DeepCompressionConfig, expose=("index_bits_fc", "index_bits_conv", "float16"))


@dataclass(frozen=True)
class FactorizeStage(_Forward):
    """Low-rank factorization (ranks by ``energy`` or ``flop_budget``), then fine-tuning."""

    factorize: FactorizeConfig = nested(FactorizeConfig, expose=("method", "energy", "flop_budget"))
    finetune: ShrinkConfig = nested(ShrinkConfig, expose=("finetune_epochs", "lr", "grad_clip", "batch_size"))


@dataclass(frozen=True)
class Int8Stage(_Forward):
    """An int8 ONNX file: ``dynamic`` (no data), ``static`` (calibrated) or ``qat`` (fine-tuned with fake quantization)."""

    int8: Int8Config = nested(Int8Config, expose=("mode", "calibration", "epochs", "lr", "opset"))


@dataclass(frozen=True)
class ExportConfig:
    """A float ONNX file's export and its check against PyTorch in ONNX Runtime (``modelpress export``, recipe
    ``export`` stage): ``|ort - torch| <= atol + rtol |torch|``."""

    opset: int = opt(Int8Config.opset, "integer", lo=7, help="ONNX opset")
    atol: float = opt(1e-4, lo=0, lo_open=True, help="float export check: |ort - torch| <= atol + rtol |torch|")
    rtol: float = opt(1e-3, lo=0, help="float export check: relative tolerance")

    def __post_init__(self) -> None:
        check_declared(self)


ExportStage = ExportConfig  # a float ONNX file, checked against PyTorch in ONNX Runtime


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

    def __post_init__(self) -> None:
        check_declared(self)


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

    def __post_init__(self) -> None:
        check_declared(self)
