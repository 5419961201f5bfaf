"""What the one training loop does differently when launched on several processes.

:func:`~modelpress.train.train` asks :meth:`DataParallel.launch` whether it runs under torchrun (or in
a process group the caller initialised). If so, each rank:

- takes its own shard of every epoch (a ``DistributedSampler`` over the same data set, seeded with the
  run's seed and told the epoch), with ``batch_size // world_size`` examples per step, so the global
  batch and therefore the learning-rate recipe stay what the config says;
- computes its loss through DistributedDataParallel, whose communication hook averages the gradients
  (fp32 allreduce, TernGrad or PowerSGD: :mod:`modelpress.distributed.hooks`) during ``backward``;
- averages its epoch metrics with the others, so early stopping decides the same on every rank.

The model stays the caller's ordinary module (DDP wraps a small module around model and objective),
so objectives, callbacks, checkpoints and the ``.mpk`` file see exactly what they see in one process.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from modelpress.core.device import module_device
from modelpress.core.errors import ConfigError
from modelpress.distributed.context import DistContext, init_distributed, mean_across_ranks
from modelpress.distributed.hooks import CommStats, register_compression


class _LossModule(nn.Module):
    """``forward(x, y, idx) = objective(model, x, y, idx)``: DDP must see the forward that builds the loss,
    whatever the objective calls on the model (``member_logits``, feature taps, a teacher)."""

    def __init__(self, model: nn.Module, objective: Callable) -> None:
        super().__init__()
        self.model = model
        self.objective_module = objective if isinstance(objective, nn.Module) else None  # its trainable parts sync too
        self._objective = objective

    def forward(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        return self._objective(self.model, x, y, idx)


class DataParallel:
    """The per-process state of data-parallel training (see the module docstring).

    Args:
        ctx: this rank's place in the process group.
    """

    def __init__(self, ctx: DistContext) -> None:
        self.ctx = ctx
        self.stats = CommStats()
        self.ddp: DistributedDataParallel | None = None
        self.hook_state: object | None = None

    @classmethod
    def launch(cls) -> "DataParallel | None":
        """A :class:`DataParallel` when two or more processes take part, else ``None``."""
        ctx = init_distributed()
        return cls(ctx) if ctx is not None else None

    @property
    def is_main(self) -> bool:
        return self.ctx.is_main

    def shard(self, loader: DataLoader, seed: int) -> DataLoader:
        """This rank's part of ``loader``'s data set, reshuffled every epoch from ``(seed, epoch)``.

        The sampler pads the data set (repeating a few examples) so every rank takes the same number
        of steps, which DDP needs. Batches keep the dataset's own items, so ``(x, y, index)`` datasets
        keep yielding each example's index in the full training split.

        Raises:
            ConfigError: the loader has no map-style dataset with a fixed batch size, or the batch is
                smaller than the number of ranks.
        """
        world = self.ctx.world_size
        if loader.batch_size is None or not hasattr(loader.dataset, "__len__"):
            raise ConfigError("data-parallel training shards a DataLoader with a batch_size over a map-style "
                              "dataset; this one has a batch sampler or an iterable dataset")
        if loader.batch_size < world:
            raise ConfigError(f"batch_size {loader.batch_size} is smaller than the {world} processes; "
                              f"the global batch is split between them")
        sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=self.ctx.rank, shuffle=True, seed=seed)
        return DataLoader(loader.dataset, batch_size=loader.batch_size // world, sampler=sampler,
                          collate_fn=loader.collate_fn, num_workers=loader.num_workers)

    def wrap(self, model: nn.Module, objective: Callable, trainable: list[nn.Parameter], *,
             compression=None, seed: int = 0, powersgd_rank: int = 1, powersgd_start_iter: int = 10,
             terngrad_clip: float | None = 2.5) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
        """The loss function ``(x, y, idx) -> loss`` to use instead of ``objective(model, ...)``.

        Builds DistributedDataParallel around model and objective (rank 0's weights are broadcast to
        every rank here) with the gradient hook of ``compression``; only ``trainable`` parameters are
        synchronised, and of the buffers only the model's (e.g. BatchNorm statistics): an objective's
        buffers (stored teacher outputs, step counters) are the same everywhere already.
        """
        module = _LossModule(model, objective)
        keep = {id(p) for p in trainable}
        ignore = [name for name, p in module.named_parameters() if id(p) not in keep]
        ignore += [name for name, _ in module.named_buffers() if not name.startswith("model.")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
        device_ids = [model_device.index] if (model_device := module_device(model)).type == "cuda" else None
        self.ddp = DistributedDataParallel(module, device_ids=device_ids)
        self.hook_state = register_compression(self.ddp, compression, self.stats, seed=seed, powersgd_rank=powersgd_rank,
                                               powersgd_start_iter=powersgd_start_iter, terngrad_clip=terngrad_clip)
        return self.ddp

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Give each rank its own dropout stream, a pure function of ``(seed, epoch, rank)`` so a
        resumed run draws what an uninterrupted one would."""
        torch.manual_seed((seed * 1_000_003 + epoch) * 1_009 + self.ctx.rank)

    def reduce(self, metrics: dict) -> dict:
        """Epoch metrics averaged over ranks, plus ``comm_bytes_per_step`` of this epoch's gradient traffic."""
        numeric = {k: float(v) for k, v in metrics.items() if k not in ("epoch", "lr") and isinstance(v, (int, float))}
        out = {**metrics, **mean_across_ranks(numeric)}
        out["comm_bytes_per_step"] = self.stats.bytes_per_step
        self.stats.reset()
        return out

    def close(self) -> None:
        """Drop DDP (and with it the gradient hooks it put on the model's parameters)."""
        self.ddp = None
        self.hook_state = None
