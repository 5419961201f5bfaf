"""Deployable speed on Fashion-MNIST: is each compressed form really smaller AND faster on this CPU?

For the 1200-1200 MLP, LeNet-5 and ``vgg_mini:16``: the original; structured pruning (half of every
prunable layer's channels/neurons by L1 norm, then fine-tuning); low rank (Tucker-2 of convolutions to half
the FLOPs and SVD of Linear layers at 90% energy; the MLP's SVD to half the FLOPs; then fine-tuning); depthwise-separable convolutions distilled from the
original; binary and ternary weights trained from the original (stored at 1-2 bits per weight in a .mpz
file); int8 in ONNX Runtime (dynamic and static); and the combination of structured pruning with static
int8. Each row: test accuracy, parameters, FLOPs, bytes of the file that holds that form, and latency at
batch 1 and 256 in PyTorch and in ONNX Runtime, measured side by side in one run (rounds interleaved, medians).

    python benchmarks/deployable_speed.py              # ~25 min on 2 CPU threads
    python benchmarks/deployable_speed.py --quick      # smoke test

Writes benchmarks/results/deployable_speed.{json,md}; trained forms are cached under runs/deployable_speed/.
Timings need a quiet machine: the script prints /proc/pressure/cpu before and after the timing phase.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, load_dataset
from modelpress.distill import DistillConfig, distill
from modelpress.encode import load_compressed, save_compressed
from modelpress.export import export_onnx, load_onnx
from modelpress.factorize import FactorizeConfig, factorize_, separable_student
from modelpress.measure import count_flops, count_params, evaluate_accuracy, markdown_table, measure_latency, write_json
from modelpress.measure.onnx_latency import measure_onnx_latency
from modelpress.models import build_model, load_model, save_model
from modelpress.prune import StructuredConfig, structured_prune
from modelpress.quantize import (BinaryConfig, ClipLatent, Int8Config, TernaryConfig, binarize_, finalize_binary_,
                                 quantize_int8, ternarize_)
from modelpress.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Setup:
    models: tuple[tuple[str, str, int], ...] = (("MLP 1200-1200", "mlp:1200-1200", 10), ("LeNet-5", "lenet5", 8),
                                                ("vgg_mini:16", "vgg_mini:16", 10))
    limit: int | None = 10_000
    limit_test: int | None = None
    lr: float = 0.05
    weight_decay: float = 5e-4
    finetune_epochs: int = 3
    finetune_lr: float = 0.01
    structured_amount: float = 0.5
    conv_flop_budget: float = 0.5
    mlp_flop_budget: float = 0.5
    svd_energy: float = 0.9
    separable_epochs: int = 5
    calibration: int = 512

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Forms:
    """Trains (or reads from the cache) every compressed form of one model; each is a file on disk."""

    def __init__(self, setup: Setup, splits: DataSplits, folder: Path, arch: str, epochs: int) -> None:
        self.setup, self.splits, self.folder, self.arch = setup, splits, folder, arch
        folder.mkdir(parents=True, exist_ok=True)
        self.example = splits.x_train[:256]
        self.original = self.cached("original", lambda: self.train_original(epochs))

    def config(self, epochs: int, lr: float, **overrides) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=lr, weight_decay=self.setup.weight_decay, **overrides)

    def cached(self, name: str, make: Callable[[], nn.Module]) -> nn.Module:
        path = self.folder / f"{name}.mpk"
        if path.exists():
            return load_model(path)
        log(f"--- {self.arch}: {name}")
        seed_everything(0)
        model = make()
        save_model(model, path)
        return model.eval()

    def train_original(self, epochs: int) -> nn.Module:
        model = build_model(self.arch, self.splits.input_shape, self.splits.num_classes)
        train(model, self.splits, self.config(epochs, self.setup.lr), progress=False, log=log)
        return model

    def finetune(self, model: nn.Module) -> nn.Module:
        train(model, self.splits, self.config(self.setup.finetune_epochs, self.setup.finetune_lr), progress=False, log=log)
        return model

    def structured(self) -> nn.Module:
        model = copy.deepcopy(self.original)
        report = structured_prune(model, StructuredConfig(amount=self.setup.structured_amount, criterion="l1"), self.example[:2])
        log(f"    structured: params {report.params_before:,} -> {report.params_after:,}, "
            f"FLOPs {report.flops_before:,} -> {report.flops_after:,}")
        return self.finetune(model)

    def low_rank(self) -> nn.Module:
        model = copy.deepcopy(self.original)
        if any(isinstance(m, nn.Conv2d) for m in model.modules()):
            report = factorize_(model, FactorizeConfig(method="tucker", flop_budget=self.setup.conv_flop_budget), self.example[:2])
            log(f"    tucker-2: {len(report.factorized)} convs, FLOPs {report.flops_before:,} -> {report.flops_after:,}")
            svd = FactorizeConfig(method="svd", energy=self.setup.svd_energy)  # the fc layers hold the parameters
        else:
            svd = FactorizeConfig(method="svd", flop_budget=self.setup.mlp_flop_budget)
        report = factorize_(model, svd, self.example[:2])
        log(f"    svd: {len(report.factorized)} linears, params {report.params_before:,} -> {report.params_after:,}")
        return self.finetune(model)

    def separable(self) -> nn.Module:
        student = separable_student(self.original, example_input=self.example)
        # fresh depthwise/pointwise pairs take large first steps: LeNet-5's diverged at lr 0.05 without clipping
        config = DistillConfig(temperature=4.0, alpha=0.9,
                               train=self.config(self.setup.separable_epochs, self.setup.lr, grad_clip=1.0))
        return distill(student, self.original, self.splits, config, progress=False, log=log).student

    def low_bit(self, kind: str) -> Path:
        """Binary (BWN, per-layer mean scale) or ternary (TWN) weights trained from the original, in a .mpz file."""
        path = self.folder / f"{kind}.mpz"
        if path.exists():
            return path
        log(f"--- {self.arch}: {kind}")
        seed_everything(0)
        model = copy.deepcopy(self.original)
        binarize_(model, BinaryConfig()) if kind == "binary" else ternarize_(model, TernaryConfig())
        train(model, self.splits, self.config(self.setup.finetune_epochs, self.setup.finetune_lr), callbacks=[ClipLatent()],
              progress=False, log=log)
        finalize_binary_(model)
        save_compressed(model, path)
        return path

    def int8(self, name: str, source: nn.Module, mode: str) -> Path:
        path = self.folder / f"{name}.onnx"
        if not path.exists():
            g = torch.Generator().manual_seed(0)
            calibration = self.splits.x_train[torch.randperm(len(self.splits.x_train), generator=g)[: self.setup.calibration]]
            quantize_int8(source, path, Int8Config(mode=mode), calibration if mode != "dynamic" else None)
        return path


def collect_rows(name: str, forms: Forms) -> list[dict]:
    """Every form of one model: (row name, PyTorch module or None, ONNX file, file holding the form, FLOP source)."""
    splits = forms.splits
    structured = forms.cached("structured", forms.structured)
    rows = [("original", "original", forms.original), ("structured pruning 50% + fine-tune", "structured", structured),
            ("low rank (Tucker-2 / SVD) + fine-tune", "low_rank", forms.cached("low_rank", forms.low_rank))]
    if any(isinstance(m, nn.Conv2d) for m in forms.original.modules()):
        rows.append(("depthwise-separable, distilled", "separable", forms.cached("separable", forms.separable)))
    out = []
    for label, cache_name, module in rows:
        onnx = forms.folder / f"{cache_name}.onnx"
        export_onnx(module, onnx)  # always: a retrained form must not meet a stale file
        out.append({"model": name, "form": label, "module": module, "onnx": onnx,
                    "file": forms.folder / f"{cache_name}.mpk", "flops_of": module})
    for kind in ("binary", "ternary"):
        mpz = forms.low_bit(kind)
        module = load_compressed(mpz)[0]
        label = "binary weights (BWN)" if kind == "binary" else "ternary weights (TWN)"
        out.append({"model": name, "form": f"{label} + training", "module": module, "onnx": None,
                    "file": mpz, "flops_of": module, "note": "float kernels: no bit-packed CPU kernels, so no speed-up"})
    for mode in ("dynamic", "static"):
        path = forms.int8(f"int8_{mode}", forms.original, mode)
        out.append({"model": name, "form": f"int8 {mode} (ONNX Runtime)", "module": None, "onnx": path, "file": path,
                    "flops_of": forms.original})
    path = forms.int8("structured_int8_static", structured, "static")
    out.append({"model": name, "form": "structured 50% + int8 static (ONNX Runtime)", "module": None, "onnx": path,
                "file": path, "flops_of": structured})
    for row in out:
        evaluated = row["module"] if row["module"] is not None else load_onnx(row["onnx"], threads=torch.get_num_threads())
        row["accuracy"] = evaluate_accuracy(evaluated, splits.x_test, splits.y_test).accuracy
        row["params"] = count_params(row["flops_of"])
        row["flops"] = count_flops(row["flops_of"], splits.input_shape)
        row["bytes"] = row["file"].stat().st_size
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def time_rows(rows: list[dict], input_shape: tuple[int, ...], threads: int, rounds: int) -> None:
    """Median over ``rounds`` interleaved rounds of each form's median latency, so drift hits every row alike."""
    samples: dict[int, dict[str, list[float]]] = {i: {} for i in range(len(rows))}
    for r in range(rounds):
        log(f"timing round {r + 1}/{rounds}")
        for i, row in enumerate(rows):
            if row["module"] is not None:
                for batch in (1, 256):
                    samples[i].setdefault(f"pt_ms_b{batch}", []).append(measure_latency(row["module"], input_shape, batch).median_ms)
            if row["onnx"] is not None:
                for key, value in measure_onnx_latency(row["onnx"], input_shape, threads=threads).items():
                    if key.startswith("latency_ms_b"):
                        samples[i].setdefault(f"ort_ms_b{key.removeprefix('latency_ms_b')}", []).append(value)
    for i, row in enumerate(rows):
        row.update({k: statistics.median(v) for k, v in samples[i].items()})


def finish_rows(rows: list[dict]) -> None:
    original = rows[0]
    for row in rows:
        row["flop reduction"] = round(original["flops"] / row["flops"], 2)
        for runtime in ("pt", "ort"):
            key = f"{runtime}_ms_b256"
            if key in row and key in original:
                row[f"speed-up {runtime} b256"] = round(original[key] / row[key], 2)
        if "ort_ms_b256" in row and "pt_ms_b256" in original:
            row["speed-up vs PyTorch fp32 b256"] = round(original["pt_ms_b256"] / row["ort_ms_b256"], 2)


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--runs", default="runs/deployable_speed")
    parser.add_argument("--out", default=str(RESULTS / "deployable_speed"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = Setup()
    if args.quick:
        setup = replace(setup, models=(("MLP 64-64", "mlp:64-64", 1), ("LeNet-5", "lenet5", 1)), limit=1000, limit_test=500,
                        finetune_epochs=1, separable_epochs=1, calibration=64)
        args.out, args.rounds = str(Path(args.runs) / "quick"), 1
    splits = load_dataset("fashion-mnist", seed=0, limit=setup.limit, limit_test=setup.limit_test)
    log(splits.describe())
    folder = Path(args.runs) / setup.key()
    rows = []
    for name, arch, epochs in setup.models:
        rows.append(collect_rows(name, Forms(setup, splits, folder / _slug(arch), arch, epochs)))
    pressure_before = cpu_pressure()
    started = time.perf_counter()
    for model_rows in rows:
        time_rows(model_rows, splits.input_shape, args.threads, args.rounds)
        finish_rows(model_rows)
    pressure_after = cpu_pressure()
    flat = [{k: v for k, v in row.items() if k not in ("module", "flops_of")} | {"onnx": str(row["onnx"]) if row["onnx"] else None,
             "file": row["file"].name} for model_rows in rows for row in model_rows]
    columns = ["model", "form", "accuracy", "params", "flops", "flop reduction", "bytes", "pt_ms_b1", "pt_ms_b256",
               "ort_ms_b1", "ort_ms_b256", "speed-up pt b256", "speed-up ort b256", "speed-up vs PyTorch fp32 b256"]
    command = "python benchmarks/deployable_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {args.threads} threads (PyTorch and ONNX Runtime), torch {torch.__version__}"
    footer = (f"\nData: {splits.describe()}. Latency: median ms per forward at batch 1 / 256 over {args.rounds} interleaved "
              f"rounds of medians, on {machine}; CPU pressure before timing `{pressure_before}`, after `{pressure_after}` "
              f"({time.perf_counter() - started:.0f} s of timing). `speed-up pt/ort b256` is against the original in the same "
              f"runtime; `speed-up vs PyTorch fp32` compares an ONNX Runtime form with the original in PyTorch. "
              f"`flop reduction` is the limit a speed-up from fewer operations can approach; int8 gains come from cheaper "
              f"operations instead. Bytes: the file holding the form (.mpk float32, .mpz for binary/ternary, .onnx for int8).\n"
              f"Command: `{command.strip()}`\n")
    table = markdown_table(flat, columns)
    print("\n" + table + footer)
    write_json(f"{args.out}.json", {"command": command.strip(), "machine": machine, "setup": setup.__dict__, "rows": flat,
                                    "cpu_pressure_before": pressure_before, "cpu_pressure_after": pressure_after})
    Path(f"{args.out}.md").write_text(table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
