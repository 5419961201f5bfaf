"""The distillation family on Fashion-MNIST: one teacher, two students, every method, three seeds.

Tables written to benchmarks/results/distillation_family.{json,md}:

1. Methods: a ``vgg_mini:16`` teacher (8 conv + 2 fc, BatchNorm) taught to a small CNN (``cnn:16-32-64``)
   and to ``mobilenetv2_tiny``: the student alone, Hinton KD, logit regression, FitNets, attention
   transfer, FSP, early-stopped KD, a teacher assistant and deep mutual learning. Mean and spread of
   test accuracy over seeds; same epochs for every row of a student.
2. "Do deep convolutional nets need to be deep (or even convolutional)?": a shallow CNN (one conv
   layer + a wide fc layer) and a one-hidden-layer MLP, trained alone and mimicking the teacher's logits.
3. Born-again networks in the form of the seeds' DenseNet table: baseline, BAN-1..3, ensembles.
4. The omitted class: distil into an MLP on a transfer set without one class, then fit that class's bias.

    python benchmarks/distillation_family.py            # ~1 h on 2 CPU threads
    python benchmarks/distillation_family.py --quick    # smoke test, ~3 min

Every finished run is cached under runs/distillation_family/ (models and one JSON per run), so an
interrupted benchmark picks up where it stopped. The data: a seeded 10,000-example slice of the
Fashion-MNIST training file (the transfer set), 5,000 for validation, the full 10,000 test images.
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
from typing import Callable

import torch
from torch import nn

from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, load_dataset
from modelpress.distill import DistillConfig, StoredTeacher, distill, precompute_teacher
from modelpress.measure import count_params, evaluate_accuracy, markdown_table, write_json
from modelpress.models import build_model, load_model, save_model
from modelpress.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Setup:
    """Everything a row depends on; its hash names the cache folder."""

    teacher: str = "vgg_mini:16"
    teacher_epochs: int = 15
    students: tuple[tuple[str, dict], ...] = (("cnn:16-32-64", {}), ("mobilenetv2_tiny", {"width": 0.5, "last_channels": 128}))
    assistant: str = "cnn:32-64-128"
    epochs: int = 8
    mobilenet_epochs: int = 6
    mobilenet_rows: tuple[str, ...] = ("alone", "hinton", "logits", "fitnets", "attention", "early-stopped KD",
                                       "teacher assistant")
    shallow: tuple[str, ...] = ("shallow_cnn:16-128", "mlp:1024")
    born_again: str = "cnn:16-32-64"
    omitted_student: str = "mlp:800-800"
    omitted_class: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    limit: int | None = 10_000
    limit_test: int | None = None
    temperature: float = 4.0
    alpha: float = 0.9
    lr: float = 0.05
    weight_decay: float = 5e-4

    def key(self) -> str:
        """Names the cache folder after what every cell depends on; runs inside are named by row, student
        and seed, so adding seeds, rows or students reuses the finished ones."""
        shared = {k: v for k, v in self.__dict__.items() if k not in ("students", "mobilenet_rows", "shallow", "seeds")}
        return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def train_config(self, epochs: int, seed: int, **overrides) -> TrainConfig:
        return TrainConfig(epochs=epochs, lr=self.lr, weight_decay=self.weight_decay, seed=seed, **overrides)


class Bench:
    """The shared state: data, teacher, its stored outputs, and the cache of finished runs."""

    def __init__(self, setup: Setup, splits: DataSplits, folder: Path) -> None:
        self.setup, self.splits, self.folder = setup, splits, folder
        (folder / "runs").mkdir(parents=True, exist_ok=True)
        self.teacher = self.cached_model("teacher", self.train_teacher)
        self.teacher.eval()
        self.store = precompute_teacher(self.teacher, splits.x_train)

    def train_teacher(self) -> nn.Module:
        seed_everything(0)
        teacher = build_model(self.setup.teacher, self.splits.input_shape, self.splits.num_classes)
        train(teacher, self.splits, self.setup.train_config(self.setup.teacher_epochs, 0, jitter=1), log=log,
              checkpoint_path=self.folder / "teacher.ckpt", resume=True, description="teacher")
        return teacher

    def cached_model(self, name: str, make: Callable[[], nn.Module]) -> nn.Module:
        path = self.folder / f"{name}.mpk"
        if path.exists():
            return load_model(path)
        model = make()
        save_model(model, path)
        return model

    def run(self, row: str, student: str, seed: int, make: Callable[[], nn.Module | dict]) -> dict:
        """Train one (row, student, seed) cell, or read it from the cache."""
        path = self.folder / "runs" / f"{_slug(row)}__{_slug(student)}__s{seed}.json"
        if path.exists():
            return json.loads(path.read_text())
        log(f"--- {row} / {student} / seed {seed}")
        started = time.perf_counter()
        seed_everything(seed)
        made = make()
        extra = made if isinstance(made, dict) else {"model": made}
        model = extra.pop("model")
        result = {"row": row, "student": student, "seed": seed, "params": count_params(model),
                  "accuracy": self.accuracy(model),
                  "train_seconds": round(time.perf_counter() - started, 1), **extra}
        log(f"    accuracy {result['accuracy']:.4f}")
        write_json(path, result)
        return result

    def accuracy(self, model: nn.Module) -> float:
        """Test accuracy in [0, 1]."""
        return evaluate_accuracy(model, self.splits.x_test, self.splits.y_test).accuracy

    def student(self, arch: str, options: dict | None = None) -> nn.Module:
        return build_model(arch, self.splits.input_shape, self.splits.num_classes, **(options or {}))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# ----- the methods table -------------------------------------------------------------------------

def method_rows(bench: Bench, arch: str, options: dict, epochs: int, seed: int) -> dict[str, Callable[[], nn.Module | dict]]:
    """Each row trains a fresh student (``arch``) for ``epochs`` epochs from seed ``seed``."""
    from modelpress.distill.attention import AttentionConfig, attention_transfer
    from modelpress.distill.features import match_layers
    from modelpress.distill.fsp import FSPConfig, fsp_distill
    from modelpress.distill.hints import HintConfig, fitnets
    from modelpress.distill.mutual import MutualConfig, mutual_learning
    from modelpress.distill.schemes import teacher_assistant_chain

    s, splits, teacher = bench.setup, bench.splits, bench.teacher
    tc = s.train_config(epochs, seed)
    kd = DistillConfig(temperature=s.temperature, alpha=s.alpha, train=tc)
    stored = StoredTeacher(bench.store)
    # the hint and FSP losses sum squared errors over whole feature maps: their gradients dwarf cross-entropy's,
    # and SGD at the student's step size diverges; Adam is blind to that scale
    stage1 = replace(tc, epochs=2, optimizer="adam", lr=1e-3)

    def fresh() -> nn.Module:
        seed_everything(seed)
        return bench.student(arch, options)

    def alone():
        model = fresh()
        train(model, splits, tc, progress=False, log=log)
        return model

    def hints():
        student = fresh()
        pairs = match_layers(student, teacher, splits.x_train[:2])
        s_layer, t_layer = pairs[len(pairs) // 2]
        fitnets(student, teacher, splits, HintConfig(s_layer, t_layer, stage1=stage1, kd=kd), progress=False)
        return {"model": student, "layers": f"{s_layer} <- {t_layer}"}

    def attention():
        student = fresh()
        pairs = tuple(match_layers(student, teacher, splits.x_train[:2]))
        # beta = 1000 on small maps gives early steps large enough to kill ReLUs at lr 0.05: clip them
        config = AttentionConfig(pairs=pairs, kd=replace(kd, alpha=0.0, train=replace(tc, grad_clip=5.0)))
        attention_transfer(student, teacher, splits, config, progress=False)
        return {"model": student, "layers": ", ".join(f"{a} <- {b}" for a, b in pairs)}

    def fsp():
        student = fresh()
        # stage inputs and outputs at 14x14 and 7x7: 16x32 and 32x64 flow matrices in both nets
        config = FSPConfig(student_pairs=(("features.1", "features.2"), ("features.3", "features.4")),
                           teacher_pairs=(("features.2", "features.4"), ("features.5", "features.7")),
                           stage1=stage1, stage2=tc)
        fsp_distill(student, teacher, splits, config, progress=False)
        return student

    def assistant():
        seed_everything(seed)
        helper = bench.student(s.assistant)
        result = teacher_assistant_chain(teacher, [helper], fresh(), splits, kd, progress=False)
        return {"model": result.student, "assistant_accuracy": bench.accuracy(result.assistants[0])}

    def mutual():
        peers = [fresh(), bench.student(arch, options)]
        # the seeds' Algorithm 1 starts the pull after a burn-in; from random initialisation the peers otherwise
        # agree on their confident early mistakes (measured: 0.82 instead of 0.88 with no burn-in)
        burn_in = -(-len(splits.y_train) // tc.batch_size)  # one epoch of steps
        result = mutual_learning(peers, splits, MutualConfig(temperature=1.0, burn_in_steps=burn_in, train=tc), progress=False)
        return {"model": result.peers[0], "cohort_accuracy": bench.accuracy(result.cohort),
                "peer_accuracies": [bench.accuracy(p) for p in result.peers]}

    return {
        "alone": alone,
        "hinton": lambda: distill(fresh(), stored, splits, kd, progress=False).student,
        "logits": lambda: distill(fresh(), stored, splits, replace(kd, method="logits", alpha=1.0, train=replace(
            tc, optimizer="adam", lr=1e-3)), progress=False).student,
        "fitnets": hints,
        "attention": attention,
        "FSP": fsp,
        "early-stopped KD": lambda: distill(fresh(), stored, splits, replace(kd, kd_epochs=max(1, epochs // 2)), progress=False).student,
        "teacher assistant": assistant,
        "mutual learning": mutual,
    }


ROW_NOTES = {
    "alone": "cross-entropy on hard labels",
    "hinton": "soft targets T={T}, alpha={alpha}",
    "logits": "L2 on logits, no labels (Ba & Caruana); Adam 1e-3",
    "fitnets": "2 hint epochs (Adam 1e-3; student up to the guided layer + conv regressor), then KD with alpha annealed to 0",
    "attention": "CE + beta=1000 attention maps at every shared resolution (Zagoruyko & Komodakis); gradient clipped at 5",
    "FSP": "2 epochs (Adam 1e-3) matching FSP matrices (14x14, 7x7 stages), then CE",
    "early-stopped KD": "KD for the first half of the epochs, then hard labels only (Cho & Hariharan)",
    "teacher assistant": "teacher -> {assistant} -> student, each by KD",
    "mutual learning": "2 peers trained together, each pulled to the other after a 1-epoch burn-in (no teacher); row = peer 1",
}


def summarise(results: list[dict], key: str = "accuracy") -> dict:
    values = [r[key] for r in results]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def methods_table(bench: Bench) -> tuple[list[dict], list[dict]]:
    s = bench.setup
    rows, raw = [], []
    for arch, options in s.students:
        is_mobilenet = arch.startswith("mobilenet")
        epochs = s.mobilenet_epochs if is_mobilenet else s.epochs
        names = [n for n in ROW_NOTES if not is_mobilenet or n in s.mobilenet_rows]
        label = arch + (f" {options}" if options else "")
        for name in names:
            runs = [bench.run(name, label, seed, method_rows(bench, arch, options, epochs, seed)[name]) for seed in s.seeds]
            raw += runs
            stats = summarise(runs)
            rows.append({"student": label, "method": name, "accuracy": f"{stats['mean']:.4f} ± {stats['std']:.4f}",
                         "mean": stats["mean"], "std": stats["std"], "seeds": stats["n"], "params": runs[0]["params"],
                         "epochs": epochs, "note": ROW_NOTES[name].format(T=s.temperature, alpha=s.alpha, assistant=s.assistant)})
    alone = {r["student"]: r["mean"] for r in rows if r["method"] == "alone"}
    for r in rows:
        r["vs alone (pt)"] = round(100 * (r["mean"] - alone[r["student"]]), 2)
    return rows, raw


# ----- shallow students, born-again, omitted class --------------------------------------------------

def shallow_table(bench: Bench) -> list[dict]:
    s, splits = bench.setup, bench.splits
    rows = []
    for arch in s.shallow:
        for mode in ("alone", "mimic (logits)"):
            def make(seed, arch=arch, mode=mode):
                model = bench.student(arch)
                tc = s.train_config(s.epochs, seed)
                if mode == "alone":
                    train(model, splits, tc, progress=False, log=log)
                    return model
                config = DistillConfig(method="logits", alpha=1.0, train=replace(tc, optimizer="adam", lr=1e-3))
                return distill(model, StoredTeacher(bench.store), splits, config, progress=False).student

            runs = [bench.run(f"shallow {mode}", arch, seed, lambda seed=seed, make=make: make(seed)) for seed in s.seeds]
            stats = summarise(runs)
            rows.append({"student": arch, "training": mode, "accuracy": f"{stats['mean']:.4f} ± {stats['std']:.4f}",
                         "mean": stats["mean"], "std": stats["std"], "params": runs[0]["params"], "epochs": s.epochs})
    return rows


def born_again_table(bench: Bench) -> list[dict]:
    from modelpress.distill.schemes import born_again

    s, splits = bench.setup, bench.splits
    per_seed = []
    for seed in s.seeds:
        path = bench.folder / "runs" / f"born_again__s{seed}.json"
        if path.exists():
            per_seed.append(json.loads(path.read_text()))
            continue
        log(f"--- born-again / {s.born_again} / seed {seed}")

        def baseline(seed=seed) -> nn.Module:
            seed_everything(seed)
            model = bench.student(s.born_again)
            train(model, splits, s.train_config(s.epochs, seed), progress=False, log=log)
            return model

        base = bench.cached_model(f"born_again_base_s{seed}", baseline)
        # BANs learn from the previous generation's soft targets only (alpha = 1, T = 1), as Furlanello et al.
        config = DistillConfig(temperature=1.0, alpha=1.0, train=s.train_config(s.epochs, seed))
        result = born_again(base, splits, config, generations=3, checkpoint_dir=bench.folder / f"ban_s{seed}", progress=False)
        acc = bench.accuracy
        record = {"seed": seed, "baseline": acc(base), **{f"BAN-{k + 1}": acc(m) for k, m in enumerate(result.generations)},
                  "ensemble BAN-1..2": acc(result.ensemble(2)), "ensemble BAN-1..3": acc(result.ensemble(3)),
                  "ensemble baseline + BAN-1..3": acc(result.ensemble(3, include_teacher=True))}
        write_json(path, record)
        per_seed.append(record)
    names = [k for k in per_seed[0] if k != "seed"]
    return [{"model": name, "accuracy": f"{summarise(per_seed, name)['mean']:.4f} ± {summarise(per_seed, name)['std']:.4f}",
             "mean": summarise(per_seed, name)["mean"], "error (%)": round(100 * (1 - summarise(per_seed, name)["mean"]), 2)}
            for name in names]


def omitted_class_rows(bench: Bench) -> list[dict]:
    from modelpress.distill.omitted import omitted_class_experiment, without_class, fit_class_bias, apply_class_bias_, omitted_class_report

    s, splits = bench.setup, bench.splits
    cls = s.omitted_class
    path = bench.folder / "runs" / "omitted_class.json"
    if path.exists():
        return json.loads(path.read_text())["rows"]
    log(f"--- omitted class {cls} ({CLASS_NAMES[cls]})")
    tc = s.train_config(s.epochs, 0)
    seed_everything(0)
    distilled = omitted_class_experiment(bench.student(s.omitted_student), bench.teacher, splits, cls,
                                         DistillConfig(temperature=s.temperature, alpha=s.alpha, train=tc))
    seed_everything(0)
    alone = bench.student(s.omitted_student)
    train(alone, without_class(splits, cls), tc, progress=False, log=log)
    before = omitted_class_report(alone, splits.x_test, splits.y_test, cls)
    offset = fit_class_bias(alone, cls, splits.x_val, splits.y_val)
    apply_class_bias_(alone, cls, offset)
    after = omitted_class_report(alone, splits.x_test, splits.y_test, cls)
    rows = []
    for name, result in (("distilled from the teacher", distilled), ("trained alone", {"before": before, "after": after, "bias_offset": offset})):
        for stage in ("before", "after"):
            r = result[stage]
            rows.append({"student": f"{s.omitted_student} {name}", "bias": "fitted" if stage == "after" else "as trained",
                         "bias offset": round(result["bias_offset"], 2) if stage == "after" else 0.0,
                         f"class {cls} right": f"{r['class_correct']}/{r['n_class']}", "class accuracy": round(r["class_accuracy"], 4),
                         "test errors": r["errors"], "test accuracy": round(r["accuracy"], 4)})
    write_json(path, {"rows": rows})
    return rows


# ----- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a slice of the data, 1-2 epochs, 1 seed")
    parser.add_argument("--only", choices=["teacher", "methods", "shallow", "born-again", "omitted"], action="append",
                        help="run only these parts (repeatable); the tables are written only when all ran")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", default="runs/distillation_family")
    parser.add_argument("--out", default=str(RESULTS / "distillation_family"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    setup = Setup()
    if args.quick:
        setup = replace(setup, teacher_epochs=2, epochs=1, mobilenet_epochs=1, seeds=(0,), limit=1000, limit_test=1000,
                        students=(("cnn:8-16-32", {}), ("mobilenetv2_tiny", {"width": 0.25, "last_channels": 64})),
                        teacher="vgg_mini:8", assistant="cnn:16-32-64", born_again="cnn:8-16-32", omitted_student="mlp:64")
        args.out = str(Path(args.runs) / "quick")
    splits = load_dataset("fashion-mnist", seed=0, limit=setup.limit, limit_test=setup.limit_test)
    log(splits.describe())
    folder = Path(args.runs) / setup.key()
    bench = Bench(setup, splits, folder)
    teacher_accuracy = bench.accuracy(bench.teacher)
    log(f"teacher {setup.teacher}: test accuracy {teacher_accuracy:.4f}, {count_params(bench.teacher):,} params")
    parts = set(args.only or ["methods", "shallow", "born-again", "omitted"])
    methods, raw = methods_table(bench) if "methods" in parts else ([], [])
    shallow = shallow_table(bench) if "shallow" in parts else []
    ban = born_again_table(bench) if "born-again" in parts else []
    omitted = omitted_class_rows(bench) if "omitted" in parts else []
    if args.only:
        return 0

    command = "python benchmarks/distillation_family.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    teacher_row = {"student": f"teacher {setup.teacher}", "method": "trained alone", "accuracy": f"{teacher_accuracy:.4f}",
                   "params": count_params(bench.teacher), "epochs": setup.teacher_epochs, "note": "jitter 1 pixel"}
    sections = [
        "### Methods (test accuracy, mean ± std over seeds)\n",
        markdown_table([teacher_row] + methods, ["student", "method", "accuracy", "vs alone (pt)", "params", "epochs", "note"]),
        "\n### Do deep conv nets need to be deep? (shallow students mimicking the teacher's logits)\n",
        markdown_table(shallow, ["student", "training", "accuracy", "params", "epochs"]),
        f"\n### Born-again networks ({setup.born_again}, mean over seeds)\n",
        markdown_table(ban, ["model", "accuracy", "error (%)"]),
        f"\n### Omitted class: no '{CLASS_NAMES[setup.omitted_class]}' (class {setup.omitted_class}) in the transfer set\n",
        markdown_table(omitted, list(omitted[0]) if omitted else []),
    ]
    footer = (f"\nData: Fashion-MNIST, {splits.describe()}. Seeds {list(setup.seeds)} (initialisation and shuffling; one split, "
              f"one teacher). SGD lr {setup.lr}, cosine, weight decay {setup.weight_decay}, batch 128 unless the note says "
              f"otherwise; FitNets and FSP add 2 stage-1 epochs. Machine: {machine}.\nCommand: `{command.strip()}`\n")
    text = "\n".join(sections) + footer
    print("\n" + text)
    write_json(f"{args.out}.json", {"command": command.strip(), "machine": machine, "setup": setup.__dict__,
                                     "data": splits.describe(), "teacher_accuracy": teacher_accuracy, "methods": methods,
                                     "runs": raw, "shallow": shallow, "born_again": ban, "omitted_class": omitted})
    Path(f"{args.out}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
