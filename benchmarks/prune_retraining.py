"""How much does retraining recover after pruning LeNet-300-100 to Han et al.'s sparsities on Fashion-MNIST?

Three ways to retrain, each over three seeds, from the same reference as ``deep_compression.py``:
the same retraining without pruning (a control: does retraining alone move the error?), Han's plain
retraining on the labels, and retraining against the reference's soft targets as well (``self_distill``).
Errors are before weight sharing.

    python benchmarks/prune_retraining.py          # ~10 min on 2 CPU threads

Writes benchmarks/results/prune_retraining.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from deep_compression import RECIPES, SELF_DISTILL, _train_reference, cached_model, error_percent, log  # noqa: E402

from modelpress.data import load_dataset  # noqa: E402
from modelpress.measure import markdown_table, write_json  # noqa: E402
from modelpress.models import load_model  # noqa: E402
from modelpress.pipeline import DeepCompressionConfig, prune_and_retrain  # noqa: E402
from modelpress.prune import PruneConfig  # noqa: E402
from modelpress.train import TrainConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="runs/deep_compression/full", help="where deep_compression.py keeps its reference")
    parser.add_argument("--out", default=str(RESULTS / "prune_retraining"))
    args = parser.parse_args(argv)

    recipe = RECIPES["lenet300_100"]
    data = load_dataset("fashion-mnist", seed=0, val_size=5000)
    ref_path = Path(args.runs) / f"{recipe.arch}-ref.mpk"
    torch.manual_seed(0)
    reference = cached_model(ref_path, lambda: _train_reference(recipe, data, 0))
    ref_error = error_percent(reference, data.x_test, data.y_test)
    log(f"reference: {ref_error:.2f}% test error")

    ways = {
        "retraining without pruning (control)": (PruneConfig(sparsity=0.0), None),
        "pruned, retrained on labels (Han)": (PruneConfig(sparsity=0.0, layer_sparsity=recipe.sparsity), None),
        "pruned, retrained with self-distillation": (PruneConfig(sparsity=0.0, layer_sparsity=recipe.sparsity), SELF_DISTILL),
    }
    rows = []
    for way, (prune, self_distill) in ways.items():
        errors = []
        for seed in (int(s) for s in args.seeds.split(",")):
            config = DeepCompressionConfig(
                prune=prune, prune_steps=3, self_distill=self_distill,
                prune_retrain=TrainConfig(epochs=recipe.retrain_epochs, lr=recipe.retrain_lr, weight_decay=1e-4, seed=seed))
            model = prune_and_retrain(load_model(ref_path), data, config)
            errors.append(error_percent(model, data.x_test, data.y_test))
            log(f"{way}, seed {seed}: {errors[-1]:.2f}%")
        rows.append({"retraining": way, "test_errors_percent": ", ".join(f"{e:.2f}" for e in errors),
                     "mean_error_percent": statistics.mean(errors), "mean_loss_points": statistics.mean(errors) - ref_error})

    table = markdown_table(rows, ["retraining", "test_errors_percent", "mean_error_percent", "mean_loss_points"],
                           ["Retraining (3 x 10 epochs, lr 0.02)", "Test error by seed (%)", "Mean (%)", "Loss vs reference (points)"])
    write_json(f"{args.out}.json", {"reference_error_percent": ref_error, "rows": rows, "sparsity": recipe.sparsity,
                                    "self_distill": {"temperature": SELF_DISTILL.temperature, "alpha": SELF_DISTILL.alpha}})
    text = (f"# Retraining after pruning LeNet-300-100 on {data.name}\n\nReference: {ref_error:.2f}% test error. "
            f"Sparsities {recipe.sparsity} (Han et al.), three pruning steps, before weight sharing.\n\n{table}\n"
            "Command: `python benchmarks/prune_retraining.py`\n")
    Path(f"{args.out}.md").write_text(text)
    log(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
