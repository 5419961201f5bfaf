"""Data-parallel training on 2 CPU processes: fp32 allreduce vs TernGrad vs PowerSGD, and codistillation.

Each run is ``torchrun --standalone --nproc-per-node 2`` of this script in worker mode (gloo on
loopback), training through the ordinary ``modelpress.train.train`` on Fashion-MNIST (10k training
slice, full test set): an MLP 500-300 and LeNet-5, with the gradients averaged by plain fp32 allreduce
(DDP's default), TernGrad (2-bit stochastic ternary, clipping at 2.5 sigma) and PowerSGD (rank 1 and
4, after 10 plain steps). Reported: test accuracy, gradient bytes one rank sends per step (counted by
the hooks; steady state = last epoch) and the ratio to allreduce, and seconds per epoch (medians over
interleaved rounds of a separate short timing phase; ratios to allreduce). Codistillation: 2 ranks,
each its own MLP 500-300 (seeds 0 and 1), pulled toward the other's predictions every step after one
epoch of burn-in, against the same two models trained alone (weight 0: no exchange).

    python benchmarks/ddp_compression.py                 # ~15 min on 2 CPU cores
    python benchmarks/ddp_compression.py --quick         # smoke test
    python benchmarks/ddp_compression.py --timing-only   # redo the timing phase, reuse cached accuracy runs

Writes benchmarks/results/ddp_compression.{json,md}; each run's figures are cached under runs/ddp_compression/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from modelpress.core.io import atomic_write
from modelpress.measure import markdown_table, write_json

RESULTS = Path(__file__).parent / "results"
EXCHANGES = [("allreduce (fp32)", None, 1), ("TernGrad", "terngrad", 1), ("PowerSGD rank 1", "powersgd", 1),
             ("PowerSGD rank 4", "powersgd", 4)]


def log(line: str) -> None:
    print(line, flush=True)


def pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


# ----- worker side: runs on every rank under torchrun ------------------------------------------------

def worker(spec: dict) -> None:
    import torch

    from modelpress.data import load_dataset
    from modelpress.distributed import is_main_process
    from modelpress.measure import evaluate_accuracy
    from modelpress.models import build_model
    from modelpress.train import TrainConfig, train

    torch.set_num_threads(1)
    splits = load_dataset("fashion-mnist", seed=0, limit=spec["limit"])
    config = TrainConfig(epochs=spec["epochs"], batch_size=128, lr=0.05, weight_decay=5e-4, seed=spec["seed"],
                         grad_compression=spec.get("compression"), powersgd_rank=spec.get("rank", 1))
    if spec["kind"] == "codistill":
        return codistill_worker(spec, splits, config)
    torch.manual_seed(spec["seed"])
    model = build_model(spec["arch"], splits.input_shape, splits.num_classes)
    started = time.perf_counter()
    result = train(model, splits, config, progress=False)
    wall = time.perf_counter() - started
    if is_main_process():
        write_json(spec["out"], {
            "spec": {k: v for k, v in spec.items() if k != "out"},
            "accuracy": evaluate_accuracy(model, splits.x_test, splits.y_test).accuracy,
            "bytes_per_step": [h["comm_bytes_per_step"] for h in result.history],
            "epoch_seconds": [h["seconds"] for h in result.history],
            "wall_seconds": wall, "params": sum(p.numel() for p in model.parameters()),
        })


def codistill_worker(spec: dict, splits, config) -> None:
    from modelpress.distributed import is_main_process
    from modelpress.distributed.codistill import CodistillConfig, codistill, peer_predictions
    from modelpress.models import build_model

    steps_per_epoch = -(-len(splits.y_train) // config.batch_size)
    cfg = CodistillConfig(weight=spec["weight"], temperature=1.0, burn_in_steps=steps_per_epoch, train=config)
    out = codistill(lambda: build_model(spec["arch"], splits.input_shape, splits.num_classes), splits, cfg,
                    progress=False)
    logits = peer_predictions(out.model, splits.x_test)  # (W, N, C)
    preds = logits.argmax(-1)  # (W, N)
    if is_main_process():
        y = splits.y_test
        ensemble = logits.softmax(-1).mean(0).argmax(-1)  # (N,)
        write_json(spec["out"], {
            "spec": {k: v for k, v in spec.items() if k != "out"},
            "rank_accuracies": [float((p == y).float().mean()) for p in preds],
            "ensemble_accuracy": float((ensemble == y).float().mean()),
            "agreement": float((preds[0] == preds[1]).float().mean()),
            "exchanges": out.exchanges, "bytes_per_exchange": out.bytes_per_exchange,
            "epoch_seconds": [h["seconds"] for h in out.history.history],
        })


# ----- driver side ------------------------------------------------------------------------------------

def run_spec(spec: dict, runs: Path, *, fresh: bool = False, cached_only: bool = False) -> dict:
    """Launch one 2-process run (or read its cached figures)."""
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = runs / f"{spec['kind']}-{spec['arch'].replace(':', '_')}-{key}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    if cached_only:
        raise SystemExit(f"--timing-only needs the cached run {path}; run the full benchmark first")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", __file__, "--worker",
               json.dumps({**spec, "out": str(path)})]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"run {spec} failed:\n{done.stderr[-4000:]}")
    log(f"  {spec['kind']} {spec['arch']} {spec.get('compression') or spec.get('weight', '')}: "
        f"{time.perf_counter() - started:.0f}s")
    return json.loads(path.read_text())


def accuracy_rows(args, runs: Path) -> list[dict]:
    rows = []
    for label, arch, epochs in args.models:
        base = None
        for name, compression, rank in EXCHANGES:
            spec = {"kind": "ddp", "arch": arch, "epochs": epochs, "limit": args.limit, "seed": 0,
                    "compression": compression, "rank": rank}
            r = run_spec(spec, runs, cached_only=args.timing_only)
            steady = r["bytes_per_step"][-1]
            base = base or (r["accuracy"], steady)
            rows.append({"model": label, "gradients": name, "accuracy": round(r["accuracy"], 4),
                         "vs fp32 (pt)": round(100 * (r["accuracy"] - base[0]), 2),
                         "bytes/step": int(round(steady)), "vs fp32": f"1/{base[1] / steady:.1f}" if steady < base[1] else "1",
                         "mean bytes/step": int(round(statistics.fmean(r["bytes_per_step"]))), "epochs": epochs})
    return rows


def timing_rows(args, runs: Path) -> list[dict]:
    """Seconds per epoch, rounds interleaved (a fresh run each time), medians; ratios to allreduce."""
    seconds: dict[tuple[str, str], list[float]] = {}
    log(f"timing phase: {pressure()}")
    for round_ in range(args.rounds):
        for label, arch, _ in args.models:
            for name, compression, rank in EXCHANGES:
                spec = {"kind": "ddp", "arch": arch, "epochs": args.timing_epochs, "limit": args.limit, "seed": 0,
                        "compression": compression, "rank": rank, "round": round_}
                r = run_spec(spec, runs / "timing", fresh=True)
                seconds.setdefault((label, name), []).extend(r["epoch_seconds"][1:] or r["epoch_seconds"])
    log(f"after timing: {pressure()}")
    rows = []
    for (label, name), values in seconds.items():
        median = statistics.median(values)
        rows.append({"model": label, "gradients": name, "s/epoch": round(median, 2),
                     "vs fp32": round(median / statistics.median(seconds[(label, EXCHANGES[0][0])]), 2), "n": len(values)})
    return rows


def codistill_rows(args, runs: Path) -> list[dict]:
    rows = []
    label, arch, epochs = args.models[0]
    for name, weight in (("each trained alone", 0.0), ("codistilled", 1.0)):
        spec = {"kind": "codistill", "arch": arch, "epochs": epochs, "limit": args.limit, "seed": 0, "weight": weight}
        r = run_spec(spec, runs, cached_only=args.timing_only)
        rows.append({"model": f"{label} x2 ranks", "training": name,
                     "rank 0 acc": round(r["rank_accuracies"][0], 4), "rank 1 acc": round(r["rank_accuracies"][1], 4),
                     "mean acc": round(statistics.fmean(r["rank_accuracies"]), 4),
                     "ensemble acc": round(r["ensemble_accuracy"], 4), "agreement": round(r["agreement"], 4),
                     "bytes/exchange": int(r["bytes_per_exchange"]), "exchanges": r["exchanges"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2k examples, 1-2 epochs, one timing round")
    parser.add_argument("--timing-only", action="store_true", help="redo only the timing phase (accuracy runs cached)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (default 2)")
    parser.add_argument("--timing-epochs", type=int, default=2, help="epochs per timing run; the first is dropped")
    parser.add_argument("--runs", default="runs/ddp_compression")
    parser.add_argument("--out", default=str(RESULTS / "ddp_compression"))
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(json.loads(args.worker))
        return 0
    args.limit = 2000 if args.quick else 10_000
    args.models = [("MLP 500-300", "mlp:500-300", 2 if args.quick else 6), ("LeNet-5", "lenet5", 1 if args.quick else 4)]
    if args.quick:
        args.rounds, args.timing_epochs = 1, 2
    runs = Path(args.runs)
    started = time.perf_counter()
    log(f"cpu pressure at start: {pressure()}")
    accuracy = accuracy_rows(args, runs)
    codistilled = codistill_rows(args, runs)
    timing = timing_rows(args, runs)
    command = "python benchmarks/ddp_compression.py" + (" --quick" if args.quick else "")
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "pressure_end": pressure()}
    text = "\n".join([
        "### Gradient exchange under DDP (2 processes, gloo)\n",
        markdown_table(accuracy, ["model", "gradients", "accuracy", "vs fp32 (pt)", "bytes/step", "vs fp32",
                                  "mean bytes/step", "epochs"]),
        "### Seconds per epoch (separate timing runs, interleaved, medians)\n",
        markdown_table(timing, ["model", "gradients", "s/epoch", "vs fp32", "n"]),
        "### Codistillation across 2 ranks (each rank its own model)\n",
        markdown_table(codistilled, ["model", "training", "rank 0 acc", "rank 1 acc", "mean acc", "ensemble acc",
                                     "agreement", "bytes/exchange", "exchanges"]),
    ])
    footer = (f"\nData: Fashion-MNIST, {args.limit} training examples, 10k test. SGD (momentum 0.9, lr 0.05, cosine), "
              f"global batch 128 (64 per rank), seed 0, one run each (codistillation: batch 128 on each rank, both ranks on the same batches). Bytes/step: gradient payload one rank hands to the "
              f"collectives per optimiser step, last epoch (PowerSGD's first 10 steps are plain allreduce; "
              f"'mean' includes them). Timings on a shared 2-core machine (cpu pressure at end: "
              f"{machine['pressure_end']}); rerun with --timing-only on a quiet machine.\n"
              f"`{command}` ({(time.perf_counter() - started) / 60:.0f} min)\n")
    with atomic_write(f"{args.out}.md") as tmp:
        tmp.write_text(text + footer)
    write_json(f"{args.out}.json", {"command": command, "machine": machine, "accuracy": accuracy, "timing": timing,
                                    "codistillation": codistilled})
    print(text + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
