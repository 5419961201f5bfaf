"""Two CPU processes with gloo on loopback: DDP through train(), the gradient hooks, codistillation.

Each test spawns two processes (a few seconds to start), so they are marked slow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # spawned ranks import their workers from ddp_workers by name
from ddp_workers import (codistill_worker, diverging_worker, run_ranks, terngrad_average_worker,  # noqa: E402
                         train_worker)

pytestmark = pytest.mark.slow


def test_ddp_training_keeps_ranks_identical_and_writes_a_loadable_model(tmp_path):
    """Ranks start from different weights, train on disjoint shards, and end bit-identical (DDP
    broadcasts rank 0's weights and averages gradients); rank 0 alone checkpoints; idx stays the
    example's index in the training split, so stored teacher outputs line up."""
    r0, r1 = run_ranks(train_worker, tmp_path, None)
    assert r0["weights"] == r1["weights"]
    assert r0["loaded"] == r0["weights"]
    assert r0["mismatches"] == 0 and r1["mismatches"] == 0
    # one epoch: the two shards cover the 256 training examples exactly once (256 divides evenly)
    first_epoch = r0["indices"][:128] + r1["indices"][:128]
    assert sorted(first_epoch) == list(range(256))
    same = [{k: v for k, v in h.items() if k != "seconds"} for h in r0["history"]]
    assert same == [{k: v for k, v in h.items() if k != "seconds"} for h in r1["history"]]  # averaged metrics
    assert r0["history"][-1]["train_loss"] < r0["history"][0]["train_loss"]
    assert r0["history"][0]["comm_bytes_per_step"] == 4 * r0["params"]  # fp32 allreduce of every gradient
    assert r0["ckpt_exists"]


def test_terngrad_hook_averages_unbiasedly_and_sends_a_sixteenth(tmp_path):
    """The mean of many TernGrad-averaged gradients approaches the exact mean of the ranks' gradients;
    every rank ends each step with the same gradient."""
    r0, r1 = run_ranks(terngrad_average_worker, tmp_path, 1000)
    mean, exact = torch.tensor(r0["mean"]), torch.tensor(r0["exact"])
    assert torch.allclose(mean, exact, atol=0.08 * float(exact.abs().max()))
    assert r0["last"] == r1["last"]
    fp32 = 4 * r0["numel"]
    assert r0["bytes_per_step"] < fp32 / 16 + 4 * 4 + 4  # packed codes + one 4-byte scale per layer


@pytest.mark.parametrize("method", ["terngrad", "powersgd"])
def test_compressed_training_keeps_ranks_identical_and_sends_less(tmp_path, method):
    r0, r1 = run_ranks(train_worker, tmp_path, method)
    assert r0["weights"] == r1["weights"]
    history = r0["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["comm_bytes_per_step"] < 4 * r0["params"] / 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("method", [None, "terngrad", "powersgd"])
def test_ddp_on_two_gpus_talks_nccl_and_keeps_ranks_identical(tmp_path, method):
    """The same train() call as on the CPU: each rank picks its own GPU, gradients go over NCCL."""
    r0, r1 = run_ranks(train_worker, tmp_path, method, gpus=True)
    assert (r0["devices"], r1["devices"]) == (["cuda:0"], ["cuda:1"])
    assert r0["weights"] == r1["weights"] and r0["loaded"] == r0["weights"]
    assert r0["mismatches"] == 0 and r1["mismatches"] == 0
    assert r0["history"][-1]["train_loss"] < r0["history"][0]["train_loss"]


def test_codistillation_exchanges_predictions_and_brings_ranks_together(tmp_path):
    """Each rank trains its own model (weights differ), and the pull makes their predictions closer
    than the same two models trained alone."""
    ranks = run_ranks(codistill_worker, tmp_path, [1.0, 0.0])
    pulled, alone = [r["1.0"] for r in ranks], [r["0.0"] for r in ranks]
    assert pulled[0]["weights"] != pulled[1]["weights"]
    assert pulled[0]["exchanges"] == 4 * 8 - 4 and alone[0]["exchanges"] == 0  # 8 steps per epoch, 4 of burn-in
    assert pulled[0]["bytes"] == 32 * 4 * 4  # a batch of 32 logits over 4 classes, fp32
    assert pulled[0]["disagreement"] < alone[0]["disagreement"]
    assert pulled[0]["losses"][-1] < pulled[0]["losses"][0]
    assert pulled[0]["ckpt"] and pulled[1]["ckpt"]


def _failure(done: subprocess.CompletedProcess) -> str:
    """A child's own error comes first in stderr, torchrun's summary of it last: show both."""
    return done.stderr if len(done.stderr) < 6000 else f"{done.stderr[:3000]}\n...\n{done.stderr[-2000:]}"


def test_cli_train_under_torchrun(tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m modelpress.cli train ...`: rank 0 writes one model file."""
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "m.mpk"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MODELPRESS_DEVICE": "cpu"}  # gloo on CPU
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "modelpress.cli", "train",
                           "--model", "mlp:16", "--data", "digits", "--epochs", "1", "--limit", "300",
                           "--grad-compression", "terngrad", "--quiet", "-o", str(out), "--json"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, _failure(done)
    assert done.stdout.count('"output"') == 1  # one report, from rank 0
    from modelpress.models import load_model

    assert isinstance(load_model(out), torch.nn.Module)
    assert not Path(f"{out}.ckpt").exists()


def test_a_recipe_runs_under_torchrun_unchanged(tmp_path):
    """The same recipe file, only the launcher changed: every stage finishes and the run matches one process's shape."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("name: tiny-ddp\nseed: 0\ndata: {name: digits}\nstages:\n"
                      "  - {kind: train, name: base, model: 'mlp:32', epochs: 1, lr: 0.05, grad_compression: terngrad}\n"
                      "  - {kind: distill, name: student, teacher: base, method: hinton, student: 'mlp:16', epochs: 1}\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "MODELPRESS_DEVICE": "cpu"}  # gloo on CPU
    done = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "modelpress.cli", "run",
                           str(recipe), "-o", str(tmp_path / "run"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, _failure(done)
    import json

    stages = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["done", "done"]
    assert stages[0]["metrics"]["accuracy"] > 0.5 and 0.0 <= stages[1]["metrics"]["accuracy"] <= 1.0


def test_a_non_finite_loss_on_one_rank_stops_every_rank_instead_of_hanging(tmp_path):
    r0, r1 = run_ranks(diverging_worker, tmp_path)
    assert r0["steps"] == r1["steps"] == 3
    assert "another rank's loss became non-finite" in r0["error"] and "loss became inf" in r1["error"]
