"""``modelpress codistill``: codistillation with one model per ``torchrun`` process (a thin layer over
:func:`modelpress.distributed.codistill.codistill`).

Data-parallel training needs no command of its own: ``torchrun --standalone --nproc-per-node N -m
modelpress.cli train ...`` (or ``distill ...``) runs the ordinary commands under DDP, with
``--grad-compression terngrad|powersgd`` choosing how gradients travel.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

EPILOG = """examples:
  torchrun --standalone --nproc-per-node 2 -m modelpress.cli codistill --model mlp:500-300 \\
      --data fashion-mnist --epochs 10 -o codistilled.mpk     # rank 0 -> codistilled.mpk, rank 1 -> codistilled.rank1.mpk
  torchrun --standalone --nproc-per-node 2 -m modelpress.cli train --model lenet5 --data fashion-mnist \\
      --grad-compression terngrad -o lenet5.mpk                 # data parallel, ternary gradients
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``codistill`` sub-command."""
    from modelpress.cli.common import add_data_args, add_output_args, add_train_args

    p = sub.add_parser("codistill", help="codistillation across torchrun processes, each training its own model",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Anil et al.'s codistillation: launched with torchrun, every process trains its own "
                                   "model (seeded with --seed + rank) and is pulled toward the other processes' "
                                   "predictions on the same batch, exchanged by all-gather.")
    p.add_argument("--model", required=True, metavar="ARCH", help="zoo architecture of every rank's model")
    p.add_argument("--dropout", type=float, default=None, help="hidden-layer dropout (mlp, vgg_mini)")
    g = p.add_argument_group("codistillation")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the pull (default 1)")
    g.add_argument("--weight", type=float, default=1.0, help="strength of the pull (default 1; 0 trains alone)")
    g.add_argument("--burn-in", type=int, default=None, metavar="STEPS",
                   help="steps of labels only before the first exchange (default one epoch)")
    g.add_argument("--exchange-every", type=int, default=1, metavar="STEPS", help="exchange predictions every STEPS steps")
    add_data_args(p)
    add_train_args(p)
    add_output_args(p)
    p.set_defaults(handler=cmd_codistill)


def rank_path(output: str | Path, rank: int) -> Path:
    """Where rank ``rank`` saves its model: ``OUT`` for rank 0, ``OUT-stem.rank{r}.suffix`` for the others."""
    path = Path(output)
    return path if rank == 0 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def cmd_codistill(args: argparse.Namespace) -> dict | None:
    """Train this rank's model by codistillation, save it, and (rank 0) report every rank's accuracy."""
    from modelpress.cli.common import load_data_from_args, progress, say, train_config_from_args
    from modelpress.core.errors import ConfigError
    from modelpress.data import data_metadata
    from modelpress.distributed.codistill import CodistillConfig, codistill, peer_predictions
    from modelpress.models import build_model, save_model

    if getattr(args, "grad_compression", None) is not None:
        raise ConfigError("--grad-compression is for data-parallel training; codistillation averages no gradients")
    splits = load_data_from_args(args)
    say(args, f"data: {splits.describe()}")
    train_config = train_config_from_args(args)
    burn_in = args.burn_in if args.burn_in is not None else math.ceil(len(splits.y_train) / train_config.batch_size)
    config = CodistillConfig(temperature=args.temperature, weight=args.weight, burn_in_steps=burn_in,
                             exchange_every=args.exchange_every, train=train_config)
    options = {"dropout": args.dropout} if args.dropout is not None else {}
    out = codistill(lambda: build_model(args.model, splits.input_shape, splits.num_classes, **options), splits, config,
                    checkpoint_path=f"{args.output}.ckpt", resume=args.resume, progress=progress(args))
    path = rank_path(args.output, out.rank)
    save_model(out.model, path, extra={"data": data_metadata(splits), "method": "codistill", "train": train_config.to_json(),
                                       "rank": out.rank, "world_size": out.world_size,
                                       "codistill": {"temperature": config.temperature, "weight": config.weight,
                                                     "burn_in_steps": burn_in, "exchange_every": config.exchange_every}})
    Path(f"{args.output}.ckpt.rank{out.rank}").unlink(missing_ok=True)
    logits = peer_predictions(out.model, splits.x_test)  # (W, N, C), a collective: every rank takes part
    if out.rank != 0:
        return None
    y = splits.y_test
    preds = logits.argmax(-1)  # (W, N)
    accuracies = [float((p == y).float().mean()) for p in preds]
    ensemble = float((logits.softmax(-1).mean(0).argmax(-1) == y).float().mean())
    agreement = float((preds == preds[0]).all(0).float().mean())
    say(args, f"saved {out.world_size} models ({path} ...): test accuracy per rank "
               f"{', '.join(f'{a:.4f}' for a in accuracies)}; ensemble {ensemble:.4f}; all agree on {agreement:.1%}")
    return {"outputs": [str(rank_path(args.output, r)) for r in range(out.world_size)], "rank_accuracies": accuracies,
            "ensemble_accuracy": ensemble, "agreement": agreement, "exchanges": out.exchanges,
            "bytes_per_exchange": out.bytes_per_exchange}
