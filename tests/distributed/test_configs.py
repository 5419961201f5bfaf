"""Validation of the distributed options, and what happens without a launcher."""

from __future__ import annotations

import pytest
import torch

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


class _Joined(Exception):
    """Raised by a stand-in for init_process_group: the backend chosen, without a rendezvous."""


@pytest.mark.parametrize("gpus, device_env, expected", [
    (0, None, "gloo"),
    (2, None, "cpu:gloo,cuda:nccl"),  # a GPU per local rank: NCCL for CUDA tensors, rank r on GPU r
    (2, "cpu", "gloo"),  # asked to train on the CPU of a GPU machine
    (1, None, "2 processes on this machine but it has 1 GPU"),
])
def test_torchrun_ranks_get_a_gpu_each_or_gloo(monkeypatch, gpus, device_env, expected):
    import torch.distributed as dist

    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    if device_env is None:
        monkeypatch.delenv("MODELPRESS_DEVICE", raising=False)
    else:
        monkeypatch.setenv("MODELPRESS_DEVICE", device_env)
    chosen_gpu = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", chosen_gpu.append)

    def joined(backend):
        raise _Joined(backend)

    monkeypatch.setattr(dist, "init_process_group", joined)
    if expected.startswith("2 processes"):
        with pytest.raises(ConfigError, match=expected):
            init_distributed()
        return
    with pytest.raises(_Joined) as backend:
        init_distributed()
    assert str(backend.value) == expected
    assert chosen_gpu == ([1] if "nccl" in expected else [])
