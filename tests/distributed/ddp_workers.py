"""Two-process helpers for the distributed tests: gloo on loopback, one result file per rank.

Worker functions live here (not in the test files) so spawned children import a plain module."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modelpress.data.base import DataSplits


def make_splits(n_train: int = 256, num_classes: int = 4) -> DataSplits:
    """Gaussian class blobs ``(N, 1, 8, 8)``, the same on every rank (fixed seeds)."""
    centers = torch.randn(num_classes, 1, 8, 8, generator=torch.Generator().manual_seed(1234)) * 1.5

    def blobs(n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, num_classes, (n,), generator=g)
        return centers[y] + torch.randn(n, 1, 8, 8, generator=g), y

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = blobs(n_train, 0), blobs(64, 1), blobs(128, 2)
    return DataSplits("blobs", x_tr, y_tr, x_va, y_va, x_te, y_te, num_classes=num_classes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, folder: Path, *args, world: int = 2, gpus: bool = False) -> list[dict]:
    """Run ``fn(rank, folder, *args)`` on ``world`` processes in one group (gloo on loopback; with
    ``gpus``, rank r on GPU r with NCCL for CUDA tensors, as torchrun sets it up); returns each rank's
    JSON result."""
    mp.spawn(_entry, args=(world, free_port(), fn, str(folder), args, gpus), nprocs=world, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]


def _entry(rank: int, world: int, port: int, fn, folder: str, args, gpus: bool) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    if gpus:
        torch.cuda.set_device(rank)
    else:  # the CPU test stays on the CPU on a GPU machine too
        os.environ["MODELPRESS_DEVICE"] = "cpu"
    dist.init_process_group("cpu:gloo,cuda:nccl" if gpus else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        result = fn(rank, Path(folder), *args)
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # let gloo deliver every last message before either rank closes its sockets
    finally:
        dist.destroy_process_group()


def flat_weights(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


# ----- workers --------------------------------------------------------------------------------------

def train_worker(rank: int, folder: Path, compression: str | None) -> dict:
    """Train a tiny MLP under DDP; check that every batch's stored-by-index targets match its labels."""
    from modelpress.models import build_model, load_model, save_model
    from modelpress.train import TrainConfig, train

    splits = make_splits(n_train=256)
    torch.manual_seed(rank)  # the ranks start apart: DDP must broadcast rank 0's weights
    model = build_model("mlp:32", splits.input_shape, splits.num_classes)
    mismatches, indices, devices = [], [], set()

    def indexed_objective(m, x, y, idx):  # what a stored teacher does: look targets up by example index
        mismatches.append(int((splits.y_train.to(idx.device)[idx] != y).sum()))
        indices.extend(idx.tolist())
        devices.add(str(x.device))
        return torch.nn.functional.cross_entropy(m(x), y)

    config = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=3, grad_compression=compression, powersgd_start_iter=2)
    result = train(model, splits, config, objective=indexed_objective, checkpoint_path=folder / "run.ckpt", progress=False)
    path = folder / "model.mpk"
    if rank == 0:
        save_model(model, path)
    dist.barrier()
    loaded = load_model(path)
    return {"weights": flat_weights(model), "loaded": flat_weights(loaded), "mismatches": sum(mismatches),
            "indices": indices, "history": result.history,
            "params": sum(p.numel() for p in model.parameters()), "devices": sorted(devices),
            "ckpt_exists": (folder / "run.ckpt").exists()}


def terngrad_average_worker(rank: int, folder: Path, trials: int) -> dict:
    """Mean over ``trials`` TernGrad-averaged gradients vs the exact mean gradient of the two ranks."""
    from torch.nn.parallel import DistributedDataParallel

    from modelpress.distributed import CommStats, register_compression

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(10 + rank))  # each rank its own batch
    y = torch.arange(8) % 3
    loss_fn = torch.nn.functional.cross_entropy
    loss_fn(model(x), y).backward()
    exact = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(exact)
    exact /= 2
    model.zero_grad()
    ddp = DistributedDataParallel(model)
    stats = CommStats()
    register_compression(ddp, "terngrad", stats, seed=5, terngrad_clip=None)
    total = torch.zeros_like(exact)
    for _ in range(trials):
        ddp.zero_grad()
        loss_fn(ddp(x), y).backward()
        total += torch.cat([p.grad.flatten() for p in model.parameters()])
    return {"mean": (total / trials).tolist(), "exact": exact.tolist(), "bytes_per_step": stats.bytes_per_step,
            "numel": exact.numel(), "last": torch.cat([p.grad.flatten() for p in model.parameters()]).tolist()}


def codistill_worker(rank: int, folder: Path, weights: list[float]) -> dict:
    """Codistill with each pull weight in turn (0: the same two models trained alone)."""
    return {str(w): _codistill_once(rank, folder, w) for w in weights}


def _codistill_once(rank: int, folder: Path, weight: float) -> dict:
    from modelpress.distributed.codistill import CodistillConfig, codistill, peer_predictions
    from modelpress.models import build_model
    from modelpress.train import TrainConfig

    splits = make_splits(n_train=256)
    config = CodistillConfig(weight=weight, temperature=2.0, burn_in_steps=4,
                             train=TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=0, restore_best=False))
    out = codistill(lambda: build_model("mlp:32", splits.input_shape, splits.num_classes), splits, config,
                    checkpoint_path=folder / f"codistill{weight}.ckpt", progress=False)
    logits = peer_predictions(out.model, splits.x_test)  # (2, N, C)
    probs = logits.softmax(-1)
    return {"weights": flat_weights(out.model), "exchanges": out.exchanges, "bytes": out.bytes_per_exchange,
            "disagreement": float((probs[0] - probs[1]).abs().sum(-1).mean()),
            "losses": [h["train_loss"] for h in out.history.history],
            "ckpt": (folder / f"codistill{weight}.ckpt.rank{rank}").exists()}


def diverging_worker(rank: int, folder: Path) -> dict:
    """Rank 1's loss turns infinite at its third step; both ranks must stop there with a clear error."""
    from modelpress.core.errors import TrainingDivergedError
    from modelpress.models import build_model
    from modelpress.train import TrainConfig, train

    splits = make_splits(n_train=256)
    model = build_model("mlp:16", splits.input_shape, splits.num_classes)
    calls = []

    def objective(m, x, y, idx):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(m(x), y)
        return loss * float("inf") if rank == 1 and len(calls) == 3 else loss

    try:
        train(model, splits, TrainConfig(epochs=2, batch_size=32, lr=0.05), objective=objective, progress=False)
    except TrainingDivergedError as err:
        return {"error": str(err), "steps": len(calls)}
    return {"error": None, "steps": len(calls)}
