"""Any model as a teacher: born-again trees and mimic MLPs from forests and boosted ensembles.

On scikit-learn's bundled breast-cancer, wine and digits data, over repeated stratified 75/25 splits:
- a CART tree pruned by 5-fold CV;
- the teachers: a random forest (500 trees) and histogram gradient boosting;
- a born-again tree from each teacher (Breiman & Shang): one CART tree grown on the training rows plus
  20,000 MUNGE rows labelled by the teacher, and pruned to the subtree of lowest training error;
- a mimic MLP from each teacher (Bucila et al.): one hidden layer of 128, trained on the same transfer
  set's teacher probabilities;
- the same MLP trained on the labels alone.

Each row: test error (mean ± std over splits), size (tree nodes, parameters, pickled bytes of what
prediction needs), and predict() latency for 1 row and for 10,000 rows. Latency is measured side by
side on the first split (rounds interleaved, medians).

    python benchmarks/born_again_trees.py            # ~15 min on 2 CPU threads
    python benchmarks/born_again_trees.py --quick    # smoke test

Writes benchmarks/results/born_again_trees.{json,md}.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedShuffleSplit

from modelpress.data.tabular import SKLEARN_SETS
from modelpress.tabular.mimic import MimicMLPClassifier
from modelpress.tabular.proba_teacher import make_builtin_teacher
from modelpress.measure import markdown_table, write_json
from modelpress.measure.estimators import compare_classifiers
from modelpress.tabular.trees import BornAgainTreeClassifier, fit_cart

RESULTS = Path(__file__).parent / "results"
TEACHERS = {"RF": "random_forest", "GB": "gradient_boosting"}


def log(line: str) -> None:
    print(line, flush=True)


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SKLEARN_SETS[name])()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target)


def fit_all(x: np.ndarray, y: np.ndarray, seed: int, n_synthetic: int, epochs: int) -> dict:
    models = {"CART (CV-pruned)": fit_cart(x, y, seed=seed)}
    fit_seconds = {}
    for short, name in TEACHERS.items():
        start = time.perf_counter()
        teacher = make_builtin_teacher(name, seed).fit(x, y)
        models[f"teacher {short}"] = teacher
        fit_seconds[f"teacher {short}"] = time.perf_counter() - start
        common = dict(teacher=teacher, synthetic="munge", n_synthetic=n_synthetic, random_state=seed)
        start = time.perf_counter()
        models[f"born-again tree <- {short}"] = BornAgainTreeClassifier(**common).fit(x, y)
        fit_seconds[f"born-again tree <- {short}"] = time.perf_counter() - start
        start = time.perf_counter()
        models[f"mimic MLP <- {short}"] = MimicMLPClassifier(max_epochs=epochs, **common).fit(x, y)
        fit_seconds[f"mimic MLP <- {short}"] = time.perf_counter() - start
    models["MLP alone (labels)"] = MimicMLPClassifier(teacher=None, synthetic="none", max_epochs=epochs,
                                                      random_state=seed).fit(x, y)
    return {"models": models, "fit_seconds": fit_seconds}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_dataset(name: str, splits: int, n_synthetic: int, epochs: int) -> dict:
    x, y = load(name)
    per_model: dict[str, list[dict]] = {}
    timing: dict[str, dict] = {}
    splitter = StratifiedShuffleSplit(n_splits=splits, test_size=0.25, random_state=0)
    for split, (train, test) in enumerate(splitter.split(x, y)):
        start = time.perf_counter()
        fitted = fit_all(x[train], y[train], seed=split, n_synthetic=n_synthetic, epochs=epochs)
        rows = compare_classifiers(fitted["models"], x[test], y[test], latency=split == 0, seed=split)
        for row in rows:
            row["fit_seconds"] = fitted["fit_seconds"].get(row["model"])
            per_model.setdefault(row["model"], []).append(row)
        if split == 0:
            timing = {row["model"]: {"ms_1_row": row["ms_1_row"], "ms_batch": row["ms_batch"]} for row in rows}
        log(f"{name} split {split}: " + ", ".join(f"{r['model']} {100 * r['error']:.1f}%" for r in rows)
            + f" ({time.perf_counter() - start:.0f} s)")
    summary = []
    for model, rows in per_model.items():
        error, std = mean_std([100 * r["error"] for r in rows])
        summary.append({"data": name, "model": model, "error_pct": error, "error_std": std,
                        "nodes": _mean_or_none([r["nodes"] for r in rows]), "params": _mean_or_none([r["params"] for r in rows]),
                        "bytes": _mean_or_none([r["bytes"] for r in rows]), **timing[model]})
    return {"data": name, "rows": x.shape[0], "features": x.shape[1], "classes": int(len(np.unique(y))),
            "summary": summary, "per_split": per_model}


def _mean_or_none(values: list) -> float | None:
    return None if any(v is None for v in values) else int(round(statistics.fmean(values)))


def seeds_table(results: list[dict]) -> list[dict]:
    """The seeds' Table 2 layout: BA-CART vs CART error and the decrease, beside the ensemble and the MLPs.

    "gap closed" measures how much of the error gap between one CART tree and the ensemble a single
    student closes: (CART - student) / (CART - ensemble); above 1 the student beats the ensemble.
    """
    rows = []
    for result in results:
        by_model = {row["model"]: row["error_pct"] for row in result["summary"]}
        cart = by_model["CART (CV-pruned)"]
        for short in TEACHERS:
            ba, teacher = by_model[f"born-again tree <- {short}"], by_model[f"teacher {short}"]
            mimic = by_model[f"mimic MLP <- {short}"]
            gap = cart - teacher
            rows.append({"data": result["data"], "teacher": short, "BA-CART": f"{ba:.2f}", "CART": f"{cart:.2f}",
                         "decrease": f"{100 * (cart - ba) / cart:.0f}%" if cart else "", "ensemble": f"{teacher:.2f}",
                         "mimic MLP": f"{mimic:.2f}", "MLP alone": f"{by_model['MLP alone (labels)']:.2f}",
                         "BA gap closed": f"{(cart - ba) / gap:.2f}" if gap > 0 else "",
                         "MLP gap closed": f"{(cart - mimic) / gap:.2f}" if gap > 0 else ""})
    return rows


def render(payload: dict) -> str:
    summary = [dict(row, error=f"{row['error_pct']:.2f} ± {row['error_std']:.2f}") for row in payload["summary"]]
    md = ["# Any model as a teacher: born-again trees and mimic MLPs", "",
          "## The seeds' Table 2 layout (test error %, mean over splits)", "",
          markdown_table(payload["seeds_table"], ["data", "teacher", "BA-CART", "CART", "decrease", "ensemble", "BA gap closed",
                                                  "mimic MLP", "MLP gap closed", "MLP alone"]),
          "", "decrease = (CART - BA-CART) / CART, as in the seeds' table. gap closed = (CART - student) / (CART - ensemble): "
          "the share of the single tree's gap to the ensemble that one student closes (above 1: better than the ensemble). "
          "MLP alone: the mimic's network and training on the true labels, no teacher.",
          "", "## Every model", "",
          markdown_table(summary, ["data", "model", "error", "nodes", "params", "bytes", "ms_1_row", "ms_batch"]),
          "", payload["note"], f"Command: `{payload['command']}`", ""]
    return "\n".join(md)


def cpu_pressure() -> str:
    path = Path("/proc/pressure/cpu")
    return path.read_text().splitlines()[0] if path.exists() else "n/a"


def retime(args) -> int:
    """Refit split 0 of each data set (same seeds, so the same models) and replace the saved latencies."""
    import json

    torch.set_num_threads(args.threads)
    payload = json.loads((RESULTS / "born_again_trees.json").read_text())
    before = cpu_pressure()
    for result in payload["datasets"]:
        x, y = load(result["data"])
        train, test = next(StratifiedShuffleSplit(n_splits=1, test_size=0.25, random_state=0).split(x, y))
        fitted = fit_all(x[train], y[train], seed=0, n_synthetic=args.n_synthetic, epochs=args.epochs)
        timed = {row["model"]: row for row in compare_classifiers(fitted["models"], x[test], y[test], seed=0)}
        for row in result["summary"]:
            row["ms_1_row"], row["ms_batch"] = timed[row["model"]]["ms_1_row"], timed[row["model"]]["ms_batch"]
        log(f"{result['data']}: re-timed")
    payload["summary"] = [row for result in payload["datasets"] for row in result["summary"]]
    payload["note"] = payload["note"].split(" CPU pressure at start")[0] + (
        f" Re-timed with --latency-only; CPU pressure before: {before}; after: {cpu_pressure()}.")
    write_json(RESULTS / "born_again_trees.json", payload)
    (RESULTS / "born_again_trees.md").write_text(render(payload))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 split, 2,000 synthetic rows, 20 epochs")
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--n-synthetic", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--data", default="breast-cancer,wine,digits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown from the saved JSON")
    parser.add_argument("--latency-only", action="store_true",
                        help="refit the first split's models and re-time them (on a quiet machine); errors stay as saved")
    args = parser.parse_args(argv)
    if args.latency_only:
        return retime(args)
    if args.render_only:
        import json

        payload = json.loads((RESULTS / "born_again_trees.json").read_text())
        payload["seeds_table"] = seeds_table(payload["datasets"])
        write_json(RESULTS / "born_again_trees.json", payload)
        (RESULTS / "born_again_trees.md").write_text(render(payload))
        return 0
    if args.quick:
        args.splits, args.n_synthetic, args.epochs = 1, 2000, 20
    torch.set_num_threads(args.threads)
    pressure = cpu_pressure()
    results = [run_dataset(name, args.splits, args.n_synthetic, args.epochs) for name in args.data.split(",")]
    summary = [row for result in results for row in result["summary"]]
    seeds = seeds_table(results)
    command = "python benchmarks/born_again_trees.py" + (" --quick" if args.quick else "")
    note = (f"{args.splits} stratified 75/25 splits; {args.n_synthetic:,} MUNGE rows (p 0.5, s 1); MLPs: one hidden layer "
            f"of 128, Adam 1e-3, at most {args.epochs} epochs with early stopping on 10% held-out transfer rows. "
            f"Error: % of the test rows, mean ± std over splits. bytes: pickled size of what predict() needs. "
            f"Latency: median ms per predict() call on the first split, all models interleaved; {args.threads} torch "
            f"threads, {platform.machine()}, CPU pressure at start: {pressure}.")
    payload = {"summary": summary, "seeds_table": seeds, "datasets": results, "note": note, "command": command,
               "python": sys.version.split()[0], "torch": torch.__version__}
    name = "born_again_trees" + ("_quick" if args.quick else "")
    write_json(RESULTS / f"{name}.json", payload)
    md = render(payload)
    (RESULTS / f"{name}.md").write_text(md)
    log(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
