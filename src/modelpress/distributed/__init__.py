"""Scale-out: data-parallel training under ``torchrun``, compressed gradients, codistillation across ranks.

``modelpress.train.train`` uses :class:`DataParallel` by itself when launched on several processes,
so every method that ends in ``train`` runs under ``torchrun --nproc-per-node N`` unchanged.
Codistillation (each rank its own model) lives in :mod:`modelpress.distributed.codistill`; it is not
imported here because it builds on ``train``, which builds on this package.
"""

from modelpress.distributed.context import (DistContext, barrier, current_rank, init_distributed, is_main_process,
                                            launched_world_size, mean_across_ranks, on_every_rank)
from modelpress.distributed.ddp import DataParallel
from modelpress.distributed.hooks import (COMPRESSIONS, CommStats, allreduce_counting_hook, powersgd_counting_hook,
                                          register_compression)
from modelpress.distributed.terngrad import (TernGradState, dequantize, encoded_bytes, pack_ternary, ternarize,
                                             terngrad_hook, unpack_ternary)

__all__ = [
    "COMPRESSIONS",
    "CommStats",
    "DataParallel",
    "DistContext",
    "TernGradState",
    "allreduce_counting_hook",
    "barrier",
    "current_rank",
    "dequantize",
    "encoded_bytes",
    "init_distributed",
    "is_main_process",
    "launched_world_size",
    "mean_across_ranks",
    "on_every_rank",
    "pack_ternary",
    "powersgd_counting_hook",
    "register_compression",
    "ternarize",
    "terngrad_hook",
    "unpack_ternary",
]
