"""TinyBERT-style distillation of the real pretrained all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M params) on
Debian's fortunes: general distillation on unlabelled fortunes, then task-specific distillation on a
fortune-category task, as the seeds describe for TinyBERT (13.3% of BERT-base's params, 10.6% of its time).

Rows: the teacher (MiniLM with a logistic-regression head on its frozen sentence embeddings); each student
after stage 1 (general distillation) with a logistic-regression head on its own frozen embeddings (the
student as a sentence-embedding model, scored like the teacher); each student after both stages (the task
model: stage 2 retrains the encoder for the logits, which moves its embeddings away from the teacher's);
and the first student's architecture trained on the task labels alone (the no-distillation baseline, same
initialisation). Columns: encoder params and share of the teacher's, params
without the word-embedding table, mean cosine similarity of student and teacher sentence embeddings on
held-out fortunes (student mapped by its learned last-layer projection), Spearman correlation of all
pairwise similarities, category accuracy on the task's test split, and CPU latency per batch of 1 and 32
texts (padded to max_len tokens), with the student's share of the teacher's time.

    python benchmarks/tinybert.py                    # ~30-60 min on 2 shared CPU cores
    python benchmarks/tinybert.py --quick            # smoke test, a few minutes
    python benchmarks/tinybert.py --latency-only     # re-time the cached students (on a quiet machine)
    python benchmarks/tinybert.py --general-texts 9000 --general-epochs 3   # a longer stage 1 (new cache)

Students are saved under runs/tinybert/<setup hash>/ as Hugging Face folders, so an interrupted run
resumes and --latency-only needs no training. Writes benchmarks/results/tinybert.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from modelpress.data.text import load_fortunes
from modelpress.text.text_io import load_student, save_student
from modelpress.text.text_task import compare_text_models, distill_encoder, fit_linear_head, train_with_labels
from modelpress.text.tinybert import TinyBERTConfig
from modelpress.text.transformer import Encoder, TextClassifier, load_encoder, make_student
from modelpress.measure import markdown_table, write_json
from modelpress.train import TrainConfig

RESULTS = Path(__file__).parent / "results"
CATEGORIES = ("computers", "food", "law", "politics", "science", "sports")


def log(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Setup:
    """Everything the trained students depend on; its hash names the cache folder."""

    students: tuple[tuple[int, int, int, str], ...] = ((3, 384, 12, "teacher_layers"), (4, 192, 6, "random"))
    categories: tuple[str, ...] = CATEGORIES
    max_per_category: int = 150
    general_texts: int = 2000
    heldout_texts: int = 300
    max_len: int = 48
    general_epochs: int = 1
    task_intermediate_epochs: int = 1
    task_prediction_epochs: int = 3
    baseline_epochs: int = 3
    lr: float = 3e-4
    batch_size: int = 32
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def tinybert(self) -> TinyBERTConfig:
        def stage(epochs: int) -> TrainConfig:
            return TrainConfig(epochs=epochs, batch_size=self.batch_size, optimizer="adamw", lr=self.lr,
                               weight_decay=0.01, grad_clip=1.0, seed=self.seed)
        return TinyBERTConfig(max_len=self.max_len, general=stage(self.general_epochs),
                              task_intermediate=stage(self.task_intermediate_epochs),
                              task_prediction=stage(self.task_prediction_epochs), seed=self.seed)


QUICK = Setup(students=((2, 384, 12, "teacher_layers"),), max_per_category=30, general_texts=64, heldout_texts=40,
              max_len=32, task_prediction_epochs=1, baseline_epochs=1)


def name_of(layers: int, hidden: int, heads: int, init: str) -> str:
    return f"L{layers}-H{hidden}-A{heads}-{'tinit' if init == 'teacher_layers' else 'rand'}"


def cpu_pressure() -> str:
    try:
        return Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return "unavailable"


def train_students(setup: Setup, teacher, task, general, folder: Path, resume: bool) -> None:
    """Train every student not yet saved under ``folder`` (and the baseline); each is saved when done."""
    for i, spec in enumerate(setup.students):
        name = name_of(*spec)
        out, out_general = folder / name, folder / f"{name}-general"
        if not (out / "modelpress_text.json").exists() or not (out_general / "modelpress_text.json").exists():
            log(f"== {name}: TinyBERT general + task distillation")
            started = time.perf_counter()
            student = make_student(teacher, num_layers=spec[0], hidden_size=spec[1], heads=spec[2], init=spec[3],
                                   seed=setup.seed)
            # finished stages are read back from their checkpoints in the work folder, not retrained
            result = distill_encoder(teacher, student, general, task, setup.tinybert(), workdir=folder / f"{name}.work",
                                     resume=resume, progress=False)
            save_student(out, result.student, categories=list(task.categories), projection=result.projections.last,
                         extra={"histories": result.histories, "teacher_head": result.teacher_head,
                                "train_seconds": time.perf_counter() - started})
            # the stage-1 student as an embedding model, scored on the task like the teacher: a
            # logistic-regression head on its frozen sentence embeddings
            general_enc = Encoder(result.general_student.encoder, teacher.tokenizer, f"{name} after stage 1")
            general_clf, head_info = fit_linear_head(general_enc, task, max_len=setup.max_len, seed=setup.seed)
            save_student(out_general, general_clf, categories=list(task.categories),
                         projection=result.general_projection, extra={"head": head_info})
        base = folder / f"{name}-labels-only"
        if i == 0 and setup.baseline_epochs and not (base / "modelpress_text.json").exists():
            log(f"== {name}: labels only (no distillation)")
            started = time.perf_counter()
            student = make_student(teacher, num_layers=spec[0], hidden_size=spec[1], heads=spec[2], init=spec[3],
                                   seed=setup.seed)
            clf = TextClassifier.from_encoder(student, task.num_classes)
            config = replace(setup.tinybert().task_prediction, epochs=setup.baseline_epochs)
            result = train_with_labels(clf, task, config, max_len=setup.max_len,
                                       checkpoint_path=folder / f"{name}.labels.ckpt", resume=resume, progress=False)
            save_student(base, clf, categories=list(task.categories),
                         extra={"history": result.history, "train_seconds": time.perf_counter() - started})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency-only", action="store_true",
                        help="measure and re-time the cached students (those trained so far); train nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training and timing (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    parser.add_argument("--general-texts", type=int, default=None, help="unlabelled fortunes for stage 1 (default 2000)")
    parser.add_argument("--general-epochs", type=int, default=None, help="stage 1 epochs (default 1)")
    parser.add_argument("--runs", default="runs/tinybert")
    parser.add_argument("--out", default=str(RESULTS / "tinybert"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = QUICK if args.quick else Setup()
    overrides = {k: v for k, v in (("general_texts", args.general_texts), ("general_epochs", args.general_epochs))
                 if v is not None}
    setup = replace(setup, **overrides)  # another setup, so another cache folder
    folder = Path(args.runs) / setup.key()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "setup.json").write_text(json.dumps(asdict(setup), indent=2) + "\n")

    teacher = load_encoder("minilm")
    task = load_fortunes(list(setup.categories), seed=setup.seed, max_per_category=setup.max_per_category)
    everything = load_fortunes(None, seed=setup.seed)  # splits nest: the task's test texts are in its test split
    general = random.Random(setup.seed).sample(everything.train_texts, min(setup.general_texts, len(everything.train_texts)))
    heldout = random.Random(setup.seed + 1).sample(everything.test_texts, min(setup.heldout_texts, len(everything.test_texts)))
    log(f"task: {len(task.train_texts)}/{len(task.val_texts)}/{len(task.test_texts)} texts in {task.num_classes} "
        f"categories; general distillation on {len(general)} unlabelled fortunes; {len(heldout)} held-out texts")
    if args.latency_only:
        missing = [name_of(*spec) for spec in setup.students if not (folder / name_of(*spec)).exists()]
        if len(missing) == len(setup.students):
            log(f"--latency-only: no student trained yet under {folder}; run without it first")
            return 2
        if missing:
            log(f"--latency-only: {missing} not trained yet; timing the others")
    else:
        train_students(setup, teacher, task, general, folder, resume=True)

    teacher_clf, head_info = fit_linear_head(teacher, task, max_len=setup.max_len, seed=setup.seed)
    students = {}
    for spec in setup.students:
        for suffix in ("-general", "", "-labels-only"):
            path = folder / f"{name_of(*spec)}{suffix}"
            if path.exists():
                loaded = load_student(path)
                students[path.name] = (loaded.classifier, loaded.projection)
    pressure_before = cpu_pressure()
    rows = compare_text_models(teacher_clf, students, task, heldout, max_len=setup.max_len, rounds=args.rounds)
    pressure_after = cpu_pressure()
    for row in rows:
        row["method"] = ("teacher: frozen MiniLM + LR head" if row["model"] == "teacher" else
                         "labels only" if row["model"].endswith("labels-only") else
                         "TinyBERT stage 1 + LR head" if row["model"].endswith("-general") else "TinyBERT stages 1+2")
    columns = ["model", "method", "layers", "hidden", "params", "params_share", "params_non_embedding", "cosine_mean",
               "spearman", "accuracy", "ms_b1", "ms_b32", "time_share_b1", "time_share_b32"]
    headers = ["model", "method", "layers", "hidden", "params", "share of params", "params w/o word emb.",
               "cosine to teacher", "Spearman (pairs)", "test acc.", "ms/batch 1", "ms/batch 32", "share of time b1",
               "share of time b32"]
    table = markdown_table(rows, columns, headers)
    majority = task.majority_accuracy()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s)"
    command = "python benchmarks/tinybert.py" + (" --quick" if args.quick else "") + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in overrides.items())
    footer = (f"\nTask: fortune category ({', '.join(task.categories)}), {len(task.train_texts)} train / "
              f"{len(task.val_texts)} val / {len(task.test_texts)} test texts; majority-class accuracy {majority:.3f}. "
              f"Teacher head: logistic regression (C={head_info['C']}) on frozen MiniLM embeddings. General distillation: "
              f"{len(general)} unlabelled fortunes x {setup.general_epochs} epoch(s); task: {setup.task_intermediate_epochs} "
              f"intermediate + {setup.task_prediction_epochs} prediction epoch(s); max {setup.max_len} tokens. Cosine and "
              f"Spearman on {len(heldout)} held-out fortunes no model trained on. Latency: median ms per sentence-embedding "
              f"forward over {args.rounds} interleaved rounds, batches padded to {setup.max_len} tokens, on {machine}; "
              f"CPU pressure before timing `{pressure_before}`, after `{pressure_after}` (a shared machine: re-time with "
              f"`{command} --latency-only` when quiet).\nCommand: `{command}`\n")
    print("\n" + table + footer)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(f"{args.out}.json", {"setup": asdict(setup), "rows": rows, "majority_accuracy": majority,
                                    "teacher_head": head_info, "cpu_pressure_before": pressure_before,
                                    "cpu_pressure_after": pressure_after, "threads": torch.get_num_threads(),
                                    "command": command})
    Path(f"{args.out}.md").write_text(table + footer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
