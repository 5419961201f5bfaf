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
import hashlib
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
from modelpress.measure import markdown_table, measure_model, write_json
from modelpress.models import load_model, save_model

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
    parser.add_argument("--teacher-dropout", type=float, default=0.2)
    parser.add_argument("--teacher-input-dropout", type=float, default=0.0)
    parser.add_argument("--jitter", type=int, default=1, help="teacher input jitter in pixels")
    parser.add_argument("--max-norm", type=float, default=0.0, help="teacher max-norm constraint (0: none)")
    parser.add_argument("--conv-teacher-epochs", type=int, default=15, help="LeNet-5 teacher row (0: skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="runs/hinton", help="cache of trained models")
    parser.add_argument("--quick", action="store_true", help="a slice of the data and 2 epochs, for smoke tests")
    parser.add_argument("--out", default=str(RESULTS / "hinton"), help="output path without extension")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = HintonRecipe(
        teacher_options={"dropout": args.teacher_dropout, "input_dropout": args.teacher_input_dropout},
        teacher_train=replace(HintonRecipe().teacher_train, epochs=args.teacher_epochs, seed=args.seed,
                              jitter=args.jitter, max_norm=args.max_norm or None),
        student_train=replace(HintonRecipe().student_train, epochs=args.student_epochs, seed=args.seed),
        temperature=args.temperature, alpha=args.alpha,
    )
    if args.quick:
        recipe = replace(recipe.quick(), teacher_train=replace(recipe.teacher_train, epochs=2),
                         student_train=replace(recipe.student_train, epochs=2))
    splits = load_dataset(args.data, seed=args.seed, limit=recipe.limit, limit_test=recipe.limit_test)
    print(splits.describe(), flush=True)
    recipe_json = {"teacher": recipe.teacher_arch, "teacher_options": recipe.teacher_options,
                   "teacher_train": recipe.teacher_train.to_json(), "student": recipe.student_arch,
                   "student_train": recipe.student_train.to_json(), "temperature": recipe.temperature,
                   "alpha": recipe.alpha, "limit": recipe.limit, "data": args.data}
    # cached models are reused only by a run with exactly the same recipe
    key = hashlib.sha256(json.dumps(recipe_json, sort_keys=True).encode()).hexdigest()[:12]
    runs = Path(args.runs) / key
    runs.mkdir(parents=True, exist_ok=True)

    # Train (or reuse) everything first, then measure every row side by side at the end, so the latency
    # ratios come from one quiet stretch rather than from whenever each model happened to finish.
    trained: list[dict] = []

    def entry(name: str, made, note: str, teacher_row: str | None = None) -> None:
        model, seconds, path = made
        trained.append({"model": name, "module": model, "path": path, "note": note, "teacher_row": teacher_row,
                        "train_seconds": None if seconds is None else round(seconds, 1)})

    teachers = []
    for k in range(max(1, args.ensemble)):
        r = replace(recipe, teacher_train=replace(recipe.teacher_train, seed=args.seed + k))
        made = cached(runs / f"teacher_{k}.mpk", lambda r=r: train_teacher(splits, r, log=log))
        teachers.append(made[0])
        if k == 0:
            entry("teacher", made, f"{recipe.teacher_arch}, {recipe.teacher_options}, jitter {recipe.teacher_train.jitter}, "
                                   f"max-norm {recipe.teacher_train.max_norm}")
    soft = f"T={recipe.temperature}, alpha={recipe.alpha}"
    entry("student alone", cached(runs / "student_alone.mpk", lambda: train_student_alone(splits, recipe, log=log)),
          f"{recipe.student_arch}, vanilla backprop")
    entry("student distilled (Hinton)",
          cached(runs / "student_hinton.mpk", lambda: distill_student(splits, teachers[0], recipe, log=log)),
          f"soft + hard targets, {soft}", "teacher")
    entry("student distilled (Hinton, jittered transfer set)",
          cached(runs / "student_hinton_jitter.mpk", lambda: distill_student(splits, teachers[0], recipe, log=log, jitter=1)),
          f"teacher run on each 1-pixel-shifted batch, {soft}", "teacher")
    entry("student distilled (logit regression)",
          cached(runs / "student_logits.mpk",
                 lambda: distill_student(splits, teachers[0], recipe, method="logits", alpha=1.0, log=log,
                                          optimizer="adam", lr=1e-3)),
          "Ba & Caruana: L2 on logits, no labels; Adam 1e-3 (SGD diverges)", "teacher")
    if len(teachers) > 1:
        ensemble = EnsembleTeacher(teachers)
        trained.append({"model": f"ensemble of {len(teachers)} teachers", "module": _EnsembleModule(ensemble), "path": None,
                        "note": "mean of member probabilities; bytes = float32 parameters of all members"})
        entry("student distilled from the ensemble",
              cached(runs / "student_ensemble.mpk", lambda: distill_student(splits, ensemble, recipe, log=log)),
              f"soft + hard targets, {soft}", trained[-1]["model"])
    if args.conv_teacher_epochs:
        conv = replace(recipe, teacher_arch="lenet5", teacher_options={},
                       teacher_train=replace(recipe.teacher_train, epochs=args.conv_teacher_epochs, max_norm=None, jitter=1))
        made = cached(runs / "conv_teacher.mpk", lambda: train_teacher(splits, conv, log=log))
        entry("conv teacher (LeNet-5)", made, f"{args.conv_teacher_epochs} epochs, jitter 1")
        entry("student distilled from the conv teacher",
              cached(runs / "student_conv.mpk", lambda: distill_student(splits, made[0], recipe, log=log)),
              f"a deep conv net into an MLP (Urban et al.'s question), {soft}", "conv teacher (LeNet-5)")

    rows = []
    for item in trained:
        row = {"model": item["model"], "train_seconds": item.get("train_seconds"), "note": item["note"],
               **measure_model(item["module"], splits.x_test, splits.y_test, path=item["path"])}
        rows.append(row)
        print(f"{row['model']}: {row['errors']} errors of {row['n']}", flush=True)
    errors = {row["model"]: row["errors"] for row in rows}
    for row, item in zip(rows, trained):
        if item.get("teacher_row"):
            gap = errors["student alone"] - errors[item["teacher_row"]]
            row["gap_recovered"] = (errors["student alone"] - row["errors"]) / gap if gap > 0 else None
            row["teacher_row"] = item["teacher_row"]
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
              f"gap_recovered = (student alone - distilled) / (student alone - its teacher) errors.\nCommand: `{command.strip()}`\n")
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
        self.members = torch.nn.ModuleList(ensemble.members)  # so parameters are counted

    def forward(self, x):
        return self.ensemble(x)


if __name__ == "__main__":
    sys.exit(main())
