"""Blending an LSTM into a CNN on MNIST-1D: the seeds' Geras et al. (2016) results table, reproduced small.

Rows (each trained from several seeds on one MNIST-1D sample): logistic regression and an MLP (the published
baselines' kinds), ``gru:64``, ``lstm:64``, the CNN ``cnn1d`` (3 x 25 channels, stride 2), the blend
``gamma p_LSTM + (1 - gamma) p_CNN`` (gamma chosen on validation), a CNN distilled from the blend (the
seeds' "LSTM -> CNN blending"), CNNs distilled from the LSTM alone and from a CNN (a self-distillation
control: is any gain the LSTM's knowledge, or distillation itself?), and a CNN distilled from the blend on
extra unlabelled generated examples (Bucila et al.'s transfer set). Distilled rows use the seeds'
loss ``lambda * soft CE + (1 - lambda) * hard CE``; (T, lambda) is chosen per seed on validation from a
small grid. Each row: test error (%) mean and std over seeds, parameters, FLOPs, latency per batch at
batch 1 and 256 measured side by side (interleaved rounds, medians), and execution time relative to the CNN.

    python benchmarks/sequence_blend.py                  # ~10 min on 2 busy CPU threads
    python benchmarks/sequence_blend.py --quick          # smoke test, ~1 min
    python benchmarks/sequence_blend.py --latency-only   # re-time the cached models (e.g. on a quiet machine)

Writes benchmarks/results/sequence_blend.{json,md}; models and per-run JSON are cached under
runs/sequence_blend/, so an interrupted run resumes and added seeds reuse finished ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, load_dataset
from modelpress.data.synthetic import generate_mnist1d
from modelpress.distill import DistillConfig, blend_teacher, choose_gamma, distill, precompute_teacher
from modelpress.measure import count_flops, count_params, evaluate_accuracy, markdown_table, measure_latency, write_json
from modelpress.models import build_model, load_model, save_model
from modelpress.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
TIMED = ("logistic regression", "MLP", "GRU", "LSTM", "CNN", "LSTM+CNN blend (teacher)", "LSTM -> CNN blending")


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Setup:
    data_seed: int = 0
    seeds: tuple[int, ...] = (0, 1, 2)
    logreg: str = "mlp"  # no hidden layer: a linear softmax classifier
    mlp: str = "mlp:100-100"
    gru: str = "gru:64"
    lstm: str = "lstm:64"
    cnn: str = "cnn1d"
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 100
    grad_clip: float = 1.0
    kd_grid: tuple[tuple[float, float], ...] = ((1.0, 0.5), (4.0, 0.9))  # (T, lambda); (1, .5): the seeds' loss
    transfer_examples: int = 4000  # unlabelled generated examples for the transfer-set row
    limit: int | None = None

    def key(self) -> str:
        shared = {k: v for k, v in self.__dict__.items() if k != "seeds"}
        return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, optimizer="adam", lr=self.lr, batch_size=self.batch_size,
                           grad_clip=self.grad_clip, seed=seed)


class Bench:
    def __init__(self, setup: Setup, splits: DataSplits, folder: Path) -> None:
        self.setup, self.splits, self.folder = setup, splits, folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, row: str, seed: int, suffix: str) -> Path:
        return self.folder / f"{''.join(c if c.isalnum() else '_' for c in row)}__s{seed}{suffix}"

    def model(self, row: str, seed: int) -> nn.Module:
        path = self.path(row, seed, ".mpk")
        if not path.exists():
            raise SystemExit(f"{path} is not cached: run without --latency-only first")
        return load_model(path).eval()

    def run(self, row: str, seed: int, make) -> dict:
        """Train one (row, seed) cell, or read it from the cache; ``make() -> (model, extra dict)``."""
        json_path = self.path(row, seed, ".json")
        if json_path.exists():
            return json.loads(json_path.read_text())
        log(f"--- {row} / seed {seed}")
        started = time.perf_counter()
        seed_everything(seed)
        model, extra = make()
        if hasattr(model, "modelpress_spec"):  # the blend is rebuilt from its members, not saved
            save_model(model, self.path(row, seed, ".mpk"))
        s = self.splits
        result = {"row": row, "seed": seed, "val_error": 100 * (1 - evaluate_accuracy(model, s.x_val, s.y_val).accuracy),
                  "test_error": 100 * (1 - evaluate_accuracy(model, s.x_test, s.y_test).accuracy),
                  "params": count_params(model), "flops": count_flops(model, s.input_shape),
                  "train_seconds": round(time.perf_counter() - started, 1), **extra}
        log(f"    test error {result['test_error']:.2f}%")
        write_json(json_path, result)
        return result

    def trained(self, arch: str, seed: int):
        model = build_model(arch, self.splits.input_shape, self.splits.num_classes)
        train(model, self.splits, self.setup.train_config(seed), progress=False)
        return model, {}

    def distilled(self, teacher: nn.Module, seed: int, splits: DataSplits | None = None, alpha: float | None = None):
        """A fresh CNN per (T, lambda) of the grid, taught by ``teacher``; keep the best on validation."""
        splits = splits or self.splits
        store = precompute_teacher(teacher, splits.x_train)
        best, grid = None, []
        for temperature, lam in self.setup.kd_grid:
            seed_everything(seed)
            student = build_model(self.setup.cnn, splits.input_shape, splits.num_classes)
            config = DistillConfig(temperature=temperature, alpha=lam if alpha is None else alpha,
                                   train=self.setup.train_config(seed))
            distill(student, store, splits, config, progress=False)
            val = evaluate_accuracy(student, splits.x_val, splits.y_val).accuracy
            grid.append({"temperature": temperature, "lambda": config.alpha, "val_accuracy": val})
            if best is None or val > best[0]:
                best = (val, student, temperature, config.alpha)
        return best[1], {"temperature": best[2], "lambda": best[3], "kd_grid": grid}

    def with_transfer_set(self, teacher: nn.Module) -> DataSplits:
        """The training split plus unlabelled examples generated with another seed, labelled by ``teacher``
        (the labels only fill the hard-label slot; the row trains with lambda = 1, soft targets only)."""
        extra = torch.tensor(generate_mnist1d(self.setup.data_seed + 1000)[0][: self.setup.transfer_examples],
                             dtype=torch.float32)  # (N, 40), labels discarded
        with torch.no_grad():
            pseudo = teacher(extra).argmax(1)
        s = self.splits
        return replace(s, x_train=torch.cat([s.x_train, extra]), y_train=torch.cat([s.y_train, pseudo]))


def run_seed(bench: Bench, seed: int) -> list[dict]:
    s = bench.setup
    rows = [bench.run("logistic regression", seed, lambda: bench.trained(s.logreg, seed)),
            bench.run("MLP", seed, lambda: bench.trained(s.mlp, seed)),
            bench.run("GRU", seed, lambda: bench.trained(s.gru, seed)),
            bench.run("LSTM", seed, lambda: bench.trained(s.lstm, seed)),
            bench.run("CNN", seed, lambda: bench.trained(s.cnn, seed))]
    lstm, cnn = bench.model("LSTM", seed), bench.model("CNN", seed)
    choice = choose_gamma(lstm, cnn, bench.splits.x_val, bench.splits.y_val)
    teacher = blend_teacher(lstm, cnn, choice.gamma)
    rows.append(bench.run("LSTM+CNN blend (teacher)", seed, lambda: (teacher, {"gamma": choice.gamma,
                                                                            "gamma_scores": list(choice.scores)})))
    rows.append(bench.run("LSTM -> CNN blending", seed, lambda: bench.distilled(teacher, seed)))
    rows.append(bench.run("LSTM -> CNN", seed, lambda: bench.distilled(lstm, seed)))
    rows.append(bench.run("CNN -> CNN (self-distillation control)", seed, lambda: bench.distilled(cnn, seed)))
    rows.append(bench.run("LSTM -> CNN blending + transfer set", seed,
                          lambda: bench.distilled(teacher, seed, bench.with_transfer_set(teacher), alpha=1.0)))
    return rows


def time_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], rounds: int) -> dict[str, dict]:
    """Median over ``rounds`` interleaved rounds of each model's median latency (ms per batch)."""
    samples: dict[str, dict[int, list[float]]] = {name: {1: [], 256: []} for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            samples[name][1].append(measure_latency(model, input_shape, 1, repeats=50, max_seconds=2).median_ms)
            samples[name][256].append(measure_latency(model, input_shape, 256, warmup=2, repeats=10, max_seconds=3).median_ms)
    return {name: {"ms_b1": statistics.median(v[1]), "ms_b256": statistics.median(v[256])} for name, v in samples.items()}


def pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def summarize(results: list[dict], latency: dict[str, dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["row"] for r in results):
        runs = [r for r in results if r["row"] == name]
        errors = [r["test_error"] for r in runs]
        row = {"model": name, "test_error": statistics.mean(errors),
               "std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
               "val_error": statistics.mean(r["val_error"] for r in runs), "seeds": len(runs),
               "params": runs[0]["params"], "flops": runs[0]["flops"]}
        if "gamma" in runs[0]:
            row["chosen"] = "gamma " + ", ".join(f"{r['gamma']:g}" for r in runs)
        if "temperature" in runs[0]:
            row["chosen"] = "T, lambda " + "; ".join(f"{r['temperature']:g}, {r['lambda']:g}" for r in runs)
        timed = latency.get(name) or (latency.get("LSTM -> CNN blending") if "-> CNN" in name else None)
        if timed:
            row.update(timed)
        rows.append(row)
    cnn = next((r for r in rows if r["model"] == "CNN"), None)
    for row in rows:
        if cnn and "ms_b1" in row and "ms_b1" in cnn:
            row["time_b1"] = row["ms_b1"] / cnn["ms_b1"]
            row["time_b256"] = row["ms_b256"] / cnn["ms_b256"]
        row["error"] = f"{row['test_error']:.2f} ± {row['std']:.2f}"
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 1000 training examples")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and timing (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--latency-only", action="store_true", help="re-time the cached models and rewrite the tables")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = Setup(epochs=2, seeds=(0,), limit=1000, transfer_examples=500) if args.quick else Setup()
    if args.seeds:
        setup = replace(setup, seeds=tuple(args.seeds))
    splits = load_dataset("mnist1d", seed=setup.data_seed, limit=setup.limit)
    log(f"data: {splits.describe()}")
    bench = Bench(setup, splits, Path("runs/sequence_blend") / setup.key())
    results = []
    for seed in setup.seeds:
        if args.latency_only:
            results += [json.loads(p.read_text()) for p in sorted(bench.folder.glob(f"*__s{seed}.json"))]
        else:
            results += run_seed(bench, seed)
    order = {name: i for i, name in enumerate(dict.fromkeys(r["row"] for r in run_order(results)))}
    results.sort(key=lambda r: (order[r["row"]], r["seed"]))

    seed0 = setup.seeds[0]
    lstm, cnn = bench.model("LSTM", seed0), bench.model("CNN", seed0)
    gamma = next(r["gamma"] for r in results if r["row"] == "LSTM+CNN blend (teacher)" and r["seed"] == seed0)
    models = {name: (blend_teacher(lstm, cnn, gamma) if name == "LSTM+CNN blend (teacher)" else bench.model(name, seed0))
              for name in TIMED}
    before, started = pressure(), time.perf_counter()
    latency = time_models(models, splits.input_shape, 2 if args.quick else args.rounds)
    after, timing_seconds = pressure(), round(time.perf_counter() - started)

    rows = summarize(results, latency)
    columns = ["model", "error", "val_error", "params", "flops", "ms_b1", "ms_b256", "time_b1", "time_b256", "chosen"]
    headers = ["model", "test error % (mean ± std)", "val error %", "params", "FLOPs", "ms b1", "ms b256",
               "time vs CNN b1", "time vs CNN b256", "chosen on val"]
    command = "python benchmarks/sequence_blend.py" + (" --quick" if args.quick else "")
    sample = ("the standard 4000 train / 1000 test, 500 of the 4000 held out for validation" if setup.limit is None
              else f"a {setup.limit}-example slice of the training split")
    footer = (f"Data: {splits.describe()} (MNIST-1D generated with seed {setup.data_seed}: {sample}). {len(setup.seeds)} seeds ({', '.join(map(str, setup.seeds))}) "
              f"of initialisation and shuffling on that one sample; {setup.epochs} epochs of Adam (lr {setup.lr}, batch "
              f"{setup.batch_size}, gradient clip {setup.grad_clip}, cosine), best validation epoch kept. Distilled rows: "
              f"students `{setup.cnn}`, loss lambda soft CE(T) + (1 - lambda) hard CE, (T, lambda) chosen on validation "
              f"from {list(setup.kd_grid)}; the transfer-set row adds {setup.transfer_examples} unlabelled generated "
              "examples and uses soft targets only (lambda = 1). Latency: models of the first seed, median ms per "
              f"forward over {2 if args.quick else args.rounds} interleaved rounds, {args.threads} thread(s), "
              f"{platform.machine()}, torch {torch.__version__}; distilled CNNs share the CNN student's timing. "
              f"CPU pressure before timing `{before}`, after `{after}` ({timing_seconds} s). FLOPs: per example, "
              "multiply-adds x 2 (LSTM gate matmuls counted analytically).\n"
              f"Command: `{command}`" + (" then `--latency-only` to re-time" if not args.quick else ""))
    table = markdown_table(rows, columns, headers)
    out = bench.folder.parent if args.quick else RESULTS  # a smoke test does not overwrite the published table
    write_json(out / "sequence_blend.json", {"setup": {k: v for k, v in setup.__dict__.items()}, "data": splits.describe(),
                                          "rows": rows, "runs": results, "latency": latency, "pressure_before": before,
                                          "pressure_after": after, "threads": args.threads, "command": command,
                                          "python": sys.version.split()[0]})
    (out / "sequence_blend.md").write_text(table + "\n" + footer + "\n")
    print(table + "\n" + footer)
    return 0


def run_order(results: list[dict]) -> list[dict]:
    """Rows in the order the benchmark defines them (cached JSON files come back alphabetically)."""
    wanted = ["logistic regression", "MLP", "GRU", "LSTM", "CNN", "LSTM+CNN blend (teacher)", "LSTM -> CNN blending",
              "LSTM -> CNN", "CNN -> CNN (self-distillation control)", "LSTM -> CNN blending + transfer set"]
    return [{"row": name} for name in wanted if any(r["row"] == name for r in results)]


if __name__ == "__main__":
    raise SystemExit(main())
