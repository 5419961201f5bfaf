"""Reproduce the seeds' MNIST distillation table (Hinton et al. 2015, Sec. 3) on Fashion-MNIST.

Rows: a 784-1200-1200-10 teacher (dropout, input dropout, max-norm, 2-pixel jitter); a 784-800-800-10
student trained alone with vanilla backprop; the same student distilled from the teacher's soft targets
plus hard labels (Hinton); by logit regression (Ba & Caruana); and from an ensemble of teachers.

    python benchmarks/hinton.py                 # full run, ~25 min on 2 CPU threads
    python benchmarks/hinton.py --quick         # smoke test on a slice

Writes benchmarks/results/hinton.json and hinton.md. Trained models are cached in runs/hinton/ so an
interrupted run picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from modelpress.data import load_dataset
from modelpress.demo import HintonRecipe, SEEDS_MNIST_ERRORS, distill_student, train_student_alone, train_teacher
from modelpress.distill import EnsembleTeacher
from modelpress.measure import evaluate_accuracy, markdown_table, measure_model, write_json
from modelpress.models import load_model, save_model
from modelpress.train import TrainConfig

RESULTS = Path(__file__).parent / "results"


def log(line: str) -> None:
    print(line, flush=True)


def cached(path: Path, make):
    """Load a model trained by an earlier (interrupted) run, or train it and save it."""
    if path.exists():
        print(f"reusing {path}", flush=True)
        return load_model(path), None, path
    started = time.perf_counter()
    model = make()
    seconds = time.perf_counter() - started
    save_model(model, path)
    return model, seconds, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--ensemble", type=int, default=3, help="teachers in the ensemble row")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/hinton", help="cache of trained models")
    parser.add_argument("--quick", action="store_true", help="a slice of the data and 2 epochs, for smoke tests")
    parser.add_argument("--out", default=str(RESULTS / "hinton"), help="output path without extension")
    args = parser.parse_args(argv)

    torch.set_num_threads(torch.get_num_threads())
    recipe = HintonRecipe(
        teacher_train=replace(HintonRecipe().teacher_train, epochs=args.teacher_epochs, seed=args.seed),
        student_train=replace(HintonRecipe().student_train, epochs=args.student_epochs, seed=args.seed),
        temperature=args.temperature, alpha=args.alpha,
    )
    if args.quick:
        recipe = replace(recipe.quick(), teacher_train=replace(recipe.teacher_train, epochs=2),
                         student_train=replace(recipe.student_train, epochs=2))
    splits = load_dataset(args.data, seed=args.seed, limit=recipe.limit, limit_test=recipe.limit_test)
    print(splits.describe(), flush=True)
    runs = Path(args.runs) / ("quick" if args.quick else f"{args.data}-s{args.seed}-t{args.teacher_epochs}-s{args.student_epochs}")
    runs.mkdir(parents=True, exist_ok=True)

    rows, models = [], {}

    def add(name: str, model, seconds, path: Path, note: str = "") -> None:
        row = {"model": name, "train_seconds": None if seconds is None else round(seconds, 1), "note": note,
               **measure_model(model, splits.x_test, splits.y_test, path=path)}
        rows.append(row)
        models[name] = model
        print(f"{name}: {row['errors']} errors of {row['n']}", flush=True)

    teachers = []
    for k in range(max(1, args.ensemble)):
        r = replace(recipe, teacher_train=replace(recipe.teacher_train, seed=args.seed + k))
        teacher, seconds, path = cached(runs / f"teacher_{k}.mpk", lambda: train_teacher(splits, r, log=log))
        teachers.append(teacher)
        if k == 0:
            add("teacher", teacher, seconds, path, "1200-1200, dropout 0.5/0.2, max-norm 4, jitter 2")
    student, seconds, path = cached(runs / "student_alone.mpk", lambda: train_student_alone(splits, recipe, log=log))
    add("student alone", student, seconds, path, "800-800, vanilla backprop")
    student, seconds, path = cached(runs / "student_hinton.mpk", lambda: distill_student(splits, teachers[0], recipe, log=log))
    add("student distilled (Hinton)", student, seconds, path, f"soft targets T={recipe.temperature}, alpha={recipe.alpha}")
    student, seconds, path = cached(runs / "student_logits.mpk",
                              lambda: distill_student(splits, teachers[0], recipe, method="logits", alpha=1.0, lr=0.005, log=log))
    add("student distilled (logit regression)", student, seconds, path, "Ba & Caruana: L2 on logits, no labels")
    if len(teachers) > 1:
        ensemble = EnsembleTeacher(teachers)
        wrapped = _EnsembleModule(ensemble)
        acc = evaluate_accuracy(wrapped, splits.x_test, splits.y_test)
        rows.append({"model": f"ensemble of {len(teachers)} teachers", "errors": acc.errors, "n": acc.n,
                     "accuracy": acc.accuracy, "params": sum(r["params"] for r in rows[:1]) * len(teachers),
                     "note": "mean of member probabilities (not deployed; params are the sum)"})
        student, seconds, path = cached(runs / "student_ensemble.mpk", lambda: distill_student(splits, ensemble, recipe, log=log))
        add("student distilled from the ensemble", student, seconds, path, f"soft targets T={recipe.temperature}, alpha={recipe.alpha}")

    teacher_errors, alone_errors = rows[0]["errors"], rows[1]["errors"]
    for row in rows:
        if row["model"].startswith("student distilled"):
            gap = alone_errors - teacher_errors
            row["gap_recovered"] = (alone_errors - row["errors"]) / gap if gap > 0 else None
    seeds_rows = [{"model": "seeds (MNIST): teacher", "errors": SEEDS_MNIST_ERRORS["teacher"], "n": 10000},
                  {"model": "seeds (MNIST): student alone", "errors": SEEDS_MNIST_ERRORS["student alone"], "n": 10000},
                  {"model": "seeds (MNIST): student distilled", "errors": SEEDS_MNIST_ERRORS["student distilled"], "n": 10000,
                   "gap_recovered": (146 - 74) / (146 - 67)}]
    columns = ["model", "errors", "n", "accuracy", "gap_recovered", "params", "bytes", "latency_ms_b1", "latency_ms_b256", "train_seconds"]
    table = markdown_table(rows + seeds_rows, columns)
    command = "python benchmarks/hinton.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    footer = (f"\nFashion-MNIST test set ({splits.describe()}); seed {args.seed}; teacher {recipe.teacher_train.epochs} epochs, "
              f"students {recipe.student_train.epochs} epochs. Latency: median ms per forward at batch 1 / 256 on {machine}. "
              f"gap_recovered = (student alone - distilled) / (student alone - teacher) errors.\nCommand: `{command.strip()}`\n")
    print("\n" + table + footer)
    result = {"command": command.strip(), "machine": machine, "data": splits.describe(), "recipe": {
        "teacher": recipe.teacher_arch, "teacher_options": recipe.teacher_options, "teacher_train": recipe.teacher_train.to_json(),
        "student": recipe.student_arch, "student_train": recipe.student_train.to_json(),
        "temperature": recipe.temperature, "alpha": recipe.alpha}, "rows": rows, "seeds_rows": seeds_rows}
    write_json(f"{args.out}.json", result)
    Path(f"{args.out}.md").write_text(table + footer)
    return 0


class _EnsembleModule(torch.nn.Module):
    """Lets an EnsembleTeacher be evaluated like a model (its log-mixture is the logits)."""

    def __init__(self, ensemble: EnsembleTeacher) -> None:
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x):
        return self.ensemble(x)


if __name__ == "__main__":
    sys.exit(main())
