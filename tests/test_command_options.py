"""One declaration per command: every (command or recipe stage, config) pair derives its options from the
library config, so the CLI's config with no flags, the recipe's with no fields and the library default agree."""

from __future__ import annotations

import argparse

import pytest

from modelpress.cli.compress import compress_config_from_args
from modelpress.cli.main import build_parser
from modelpress.cli.options import options_from_args
from modelpress.core.errors import ConfigError
from modelpress.core.options import flat_fields, from_dict, to_dict
from modelpress.factorize import FactorizeConfig, ShrinkConfig
from modelpress.pipeline import CompressConfig, DeepCompressionConfig
from modelpress.prune import PruneConfig, StructuredConfig
from modelpress.quantize import Int8Config, QuantizeConfig
from modelpress.quantize.binary import BinaryConfig, TernaryConfig
from modelpress.recipes.fields import parse_options
from modelpress.recipes.schema import (
    EncodeStage,
    ExportConfig,
    FactorizeStage,
    Int8Stage,
    PruneStage,
    QuantizeStage,
    TrainStage,
)
from modelpress.train import TrainConfig

CONFIGS = [PruneConfig, StructuredConfig, QuantizeConfig, BinaryConfig, TernaryConfig, Int8Config, FactorizeConfig,
           ShrinkConfig, DeepCompressionConfig, CompressConfig, TrainConfig, ExportConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_config_round_trips_through_a_dict(cls):
    config = cls()
    assert from_dict(cls, to_dict(config)) == config


def _args(command: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(command)


# (command line, config the command builds from the namespace, the stage's part of the recipe config)
CLI_CASES = {
    "train": (["train", "--model", "mlp:8", "--data", "digits", "-o", "x.mpk"],
              lambda a: options_from_args(TrainConfig, a, seed=a.seed)),
    "compress": (["compress", "m.mpk", "--data", "digits", "-o", "x.mpz"], compress_config_from_args),
    "shrink-structured": (["shrink", "m.mpk", "--data", "digits", "-o", "x.mpk"],
                          lambda a: options_from_args(StructuredConfig, a)),
    "shrink-factorize": (["shrink", "m.mpk", "--data", "digits", "-o", "x.mpk"],
                         lambda a: options_from_args(FactorizeConfig, a)),
    "shrink-finetune": (["shrink", "m.mpk", "--data", "digits", "-o", "x.mpk"],
                        lambda a: options_from_args(ShrinkConfig, a, seed=a.seed)),
    "export-int8": (["export", "m.mpk", "--onnx", "x.onnx"], lambda a: options_from_args(Int8Config, a)),
    "export-float": (["export", "m.mpk", "--onnx", "x.onnx"], lambda a: options_from_args(ExportConfig, a)),
}
LIBRARY = {"train": TrainConfig(), "compress": CompressConfig(), "shrink-structured": StructuredConfig(),
           "shrink-factorize": FactorizeConfig(), "shrink-finetune": ShrinkConfig(), "export-int8": Int8Config(),
           "export-float": ExportConfig()}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_a_command_without_flags_builds_the_library_default(name):
    command, build = CLI_CASES[name]
    assert build(_args(command)) == LIBRARY[name]


RECIPE_CASES = {  # stage class, the config it holds, that config's library default
    "train": (TrainStage, {"model": "mlp:8"}, lambda s: s.train_config(0), TrainConfig()),
    "prune": (PruneStage, {}, lambda s: s.compress, CompressConfig()),
    "quantize": (QuantizeStage, {}, lambda s: s.compress, CompressConfig()),
    "encode": (EncodeStage, {}, lambda s: s.coding, DeepCompressionConfig()),
    "factorize": (FactorizeStage, {}, lambda s: s.factorize, FactorizeConfig()),
    "factorize-finetune": (FactorizeStage, {}, lambda s: s.finetune, ShrinkConfig()),
    "int8": (Int8Stage, {}, lambda s: s.int8, Int8Config()),
    "export": (ExportConfig, {}, lambda s: s, ExportConfig()),
}


@pytest.mark.parametrize("name", sorted(RECIPE_CASES))
def test_a_stage_without_fields_holds_the_library_default(name):
    cls, raw, part, default = RECIPE_CASES[name]
    stage, _ = parse_options(cls, raw, "stage:")
    assert part(stage) == default


def test_no_recipe_stage_offers_the_seed():
    """The recipe's top-level seed seeds every stage; a stage field would be a second, silent one."""
    for cls in (TrainStage, PruneStage, QuantizeStage, EncodeStage, FactorizeStage, Int8Stage, ExportConfig):
        assert "seed" not in {item.name for item in flat_fields(cls)}


SAME_VALUES = [  # (CLI flags, recipe stage and fields, how to read the shared config from each)
    (["compress", "m.mpk", "--data", "digits", "-o", "x.mpz", "--sparsity", "0.7", "--prune-steps", "3",
      "--retrain-epochs", "2", "--retrain-lr", "0.02", "--batch-size", "64"],
     PruneStage, {"sparsity": 0.7, "steps": 3, "retrain_epochs": 2, "retrain_lr": 0.02, "batch_size": 64},
     lambda c: (c.prune, c.steps, c.retrain_config())),
    (["compress", "m.mpk", "--data", "digits", "-o", "x.mpz", "--bits", "fc=4,conv=6", "--init", "density",
      "--finetune-epochs", "1", "--finetune-lr", "0.001"],
     QuantizeStage, {"bits_fc": 4, "bits_conv": 6, "init": "density", "finetune_epochs": 1, "finetune_lr": 0.001},
     lambda c: (c.quantize_config(), c.finetune_config())),
    (["compress", "m.mpk", "--data", "digits", "-o", "x.mpz", "--index-bits", "fc=4,conv=7", "--float16"],
     EncodeStage, {"index_bits_fc": 4, "index_bits_conv": 7, "float16": True},
     lambda c: (c.index_bits_fc, c.index_bits_conv, c.float16)),
]


@pytest.mark.parametrize("command, stage_cls, raw, read", SAME_VALUES, ids=["prune", "quantize", "encode"])
def test_the_same_values_by_flag_and_by_recipe_give_the_same_config(command, stage_cls, raw, read):
    from_cli = compress_config_from_args(_args(command))
    stage, _ = parse_options(stage_cls, raw, "stage:")
    if stage_cls is EncodeStage:
        assert read(from_cli.coding) == read(stage.coding)
    else:
        assert read(from_cli) == read(stage.compress)


def test_shrink_and_the_factorize_stage_give_the_same_configs():
    args = _args(["shrink", "m.mpk", "--data", "digits", "-o", "x.mpk", "--low-rank", "tucker", "--flop-budget", "0.5",
                  "--finetune-epochs", "2", "--lr", "0.03", "--grad-clip", "2"])
    stage, _ = parse_options(FactorizeStage, {"method": "tucker", "flop_budget": 0.5, "finetune_epochs": 2, "lr": 0.03,
                                              "grad_clip": 2.0}, "stage:")
    assert options_from_args(FactorizeConfig, args) == stage.factorize
    assert options_from_args(ShrinkConfig, args, seed=0) == stage.finetune


def test_export_and_the_int8_stage_give_the_same_config():
    args = _args(["export", "m.mpk", "--onnx", "x.onnx", "--int8", "qat", "--calibration", "64", "--epochs", "3",
                  "--lr", "0.01", "--opset", "13"])
    stage, _ = parse_options(Int8Stage, {"mode": "qat", "calibration": 64, "epochs": 3, "lr": 0.01, "opset": 13}, "s:")
    assert options_from_args(Int8Config, args) == stage.int8
    assert stage.int8.qat_train_config(5) == options_from_args(Int8Config, args).qat_train_config(5)


@pytest.mark.parametrize("cls, field, value", [
    (PruneConfig, "sparsity", 1.5), (StructuredConfig, "amount", -0.1), (QuantizeConfig, "bits_fc", 0),
    (BinaryConfig, "clip", -1.0), (TernaryConfig, "t", 2.0), (Int8Config, "calibration", 0),
    (FactorizeConfig, "flop_budget", 1.5), (ShrinkConfig, "finetune_epochs", -1), (CompressConfig, "retrain_lr", 0.0),
    (DeepCompressionConfig, "gradual", 2.0), (ExportConfig, "atol", 0.0), (CompressConfig, "criterion", "best"),
])
def test_a_bad_value_is_refused_naming_the_field(cls, field, value):
    with pytest.raises(ConfigError, match=field):
        from_dict(cls, {field: value})


def test_a_bad_flag_value_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match="retrain_epochs"):
        compress_config_from_args(_args(["compress", "m.mpk", "--data", "digits", "-o", "x", "--retrain-epochs", "-2"]))


# Formerly each of these defaults was written in the library and again in the CLI and/or the recipe schema.
def test_retraining_defaults_are_the_pipelines():
    config = CompressConfig()
    assert config.retrain_config() == DeepCompressionConfig().prune_retrain
    assert config.finetune_config() == DeepCompressionConfig().quantize_retrain
    assert config.deep_compression_config() == DeepCompressionConfig()


def test_pruning_and_coding_defaults_are_the_library_configs():
    stage, _ = parse_options(PruneStage, {}, "s:")
    assert stage.sparsity == PruneConfig().sparsity and stage.quality == PruneConfig().quality
    assert stage.steps == DeepCompressionConfig().prune_steps
    quantize, _ = parse_options(QuantizeStage, {}, "s:")
    assert (quantize.bits_fc, quantize.bits_conv, quantize.init) == (QuantizeConfig().bits_fc, QuantizeConfig().bits_conv,
                                                                    QuantizeConfig().init)
    encode, _ = parse_options(EncodeStage, {}, "s:")
    assert (encode.index_bits_fc, encode.index_bits_conv) == (5, 8) == (DeepCompressionConfig().index_bits_fc,
                                                                        DeepCompressionConfig().index_bits_conv)


def test_int8_and_export_defaults_are_the_library_configs():
    args = _args(["export", "m.mpk", "--onnx", "x.onnx"])
    assert not hasattr(args, "calibration") and not hasattr(args, "epochs")  # no second default in the parser
    assert Int8Config().calibration == 512 and Int8Config().qat_train_config() == TrainConfig(epochs=2, lr=0.005)
    assert ExportConfig().opset == Int8Config().opset


def test_shrink_and_factorize_stage_fine_tuning_defaults_are_one():
    stage, _ = parse_options(FactorizeStage, {}, "s:")
    assert stage.finetune == ShrinkConfig() and ShrinkConfig().grad_clip == 1.0
    assert stage.factorize == FactorizeConfig() and ShrinkConfig(finetune_epochs=0).train_config() is None


def test_training_stage_options_are_train_configs_without_the_seed():
    train_fields = {item.name for item in flat_fields(TrainConfig)} - {"seed"}
    assert train_fields <= {item.name for item in flat_fields(TrainStage)}
    stage, _ = parse_options(TrainStage, {"model": "mlp:8", "lr": 0.2, "optimizer": "adam"}, "s:")
    assert stage.train_config(7) == TrainConfig(lr=0.2, optimizer="adam", seed=7)
