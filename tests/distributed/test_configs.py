"""Validation of the distributed options, and what happens without a launcher."""

from __future__ import annotations

import pytest

from modelpress.core.errors import ConfigError
from modelpress.distributed import DataParallel, init_distributed, is_main_process
from modelpress.distributed.codistill import CodistillConfig, codistill
from modelpress.train import TrainConfig
from modelpress.train.config import GradCompression


def test_train_config_compression_fields():
    config = TrainConfig(grad_compression="terngrad")
    assert config.grad_compression is GradCompression.TERNGRAD
    assert config.to_json()["grad_compression"] == "terngrad"
    assert TrainConfig().to_json()["grad_compression"] is None


@pytest.mark.parametrize("kwargs, field", [
    ({"grad_compression": "gzip"}, "grad_compression"),
    ({"powersgd_rank": 0}, "powersgd_rank"),
    ({"powersgd_start_iter": 1}, "powersgd_start_iter"),
    ({"terngrad_clip": 0.0}, "terngrad_clip"),
])
def test_train_config_rejects_bad_compression_options(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"exchange_every": 0}, "exchange_every"),
    ({"burn_in_steps": -1}, "burn_in_steps"),
    ({"temperature": 0}, "temperature"),
    ({"weight": -1.0}, "weight"),
    ({"train": TrainConfig(patience=2)}, "patience"),
])
def test_codistill_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        CodistillConfig(**kwargs)


def test_single_process_is_not_distributed(monkeypatch, tiny_splits):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed() is None and DataParallel.launch() is None and is_main_process()
    with pytest.raises(ConfigError, match="torchrun"):
        codistill(lambda: None, tiny_splits, CodistillConfig())


def test_world_size_without_torchrun_variables_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        init_distributed()
