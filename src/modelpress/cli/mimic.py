"""``modelpress mimic``: replace an ensemble trained on a CSV file by one tree and/or one small MLP."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from modelpress.core.errors import ConfigError, DataError

EPILOG = """examples:
  modelpress mimic patients.csv --label outcome --teacher gradient_boosting -o mimic-out/
  modelpress mimic loans.csv --label default --categorical region,product --drop id --teacher random_forest \\
      --student tree --max-depth 6 -o loans-tree/          # a tree a person can read: loans-tree/tree.rules.txt
  modelpress mimic data.csv --label y --teacher teacher.onnx -o out/    # any classifier exported to ONNX
  modelpress mimic data.csv --label y --teacher model.joblib --trust-pickle -o out/   # your own pickled sklearn model
"""

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")


def register(sub) -> None:
    p = sub.add_parser("mimic", help="distil any classifier (forest, boosting, file) into one tree and/or a small MLP",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Read a CSV file, fit or load a teacher, label real + synthetic rows with it (MUNGE), "
                                   "grow a born-again tree and/or train a mimic MLP, and compare them on held-out rows "
                                   "with the teacher and a CV-pruned CART tree: error, size and prediction latency.")
    p.add_argument("csv", metavar="DATA.csv", help="a CSV file with a header row")
    p.add_argument("--label", required=True, metavar="COLUMN", help="the label column")
    p.add_argument("--categorical", default="", metavar="A,B", help="feature columns holding categories")
    p.add_argument("--drop", default="", metavar="A,B", help="columns to ignore (ids, timestamps)")
    p.add_argument("--teacher", default="gradient_boosting", metavar="NAME|FILE",
                   help="random_forest, gradient_boosting (default), or a file: .onnx, .mpk, or a pickle with --trust-pickle")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a .pkl/.joblib teacher; unpickling runs code, so only for files you made yourself")
    p.add_argument("--student", default="tree,mlp", metavar="tree,mlp", help="which students to build (default both)")
    g = p.add_argument_group("synthetic rows")
    g.add_argument("--synthetic", choices=["munge", "smear", "none"], default="munge")
    g.add_argument("--n-synthetic", type=int, default=20000, metavar="N")
    g.add_argument("--p", type=float, default=0.5, help="MUNGE swap probability (default 0.5)")
    g.add_argument("--s", type=float, default=1.0, help="MUNGE local spread (default 1)")
    g = p.add_argument_group("students")
    g.add_argument("--max-depth", type=int, default=None, help="tree: depth limit, for readable rules")
    g.add_argument("--max-leaf-nodes", type=int, default=None, help="tree: leaf limit")
    g.add_argument("--hidden", default="128", metavar="H1-H2", help="MLP hidden widths (default 128)")
    g.add_argument("--epochs", type=int, default=100, help="MLP: most epochs (early stopping on held-out rows)")
    p.add_argument("--test-size", type=float, default=0.25, help="held-out share of rows for the comparison")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the students and the report")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_mimic)


def _load_teacher(spec: str, trust_pickle: bool):
    from modelpress.tabular.proba_teacher import BUILTIN_TEACHERS

    if spec in BUILTIN_TEACHERS:
        return spec
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--teacher {spec!r} is neither {' nor '.join(BUILTIN_TEACHERS)} nor an existing file")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from modelpress.export import load_onnx

        return load_onnx(path)
    if suffix in {".mpk", ".ckpt"}:
        from modelpress.models.io import load_model

        return load_model(path)
    if suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ConfigError(f"{path} is a pickle, and loading a pickle runs any code inside it; export the model to "
                              "ONNX, or pass --trust-pickle if you made the file yourself")
        import joblib

        return joblib.load(path)
    raise ConfigError(f"--teacher {path}: unknown file type {suffix!r}; use .onnx, .mpk, or a pickle with --trust-pickle")


def cmd_mimic(args) -> dict:
    import numpy as np
    from sklearn.model_selection import train_test_split

    from modelpress.data.csv_table import read_csv_table
    from modelpress.tabular.mimic import MimicMLPClassifier
    from modelpress.tabular.proba_teacher import as_proba_teacher, fit_teacher
    from modelpress.measure.estimators import compare_classifiers
    from modelpress.measure.report import markdown_table, write_json
    from modelpress.tabular.trees import BornAgainTreeClassifier, fit_cart, save_tree

    students = [s.strip() for s in args.student.split(",") if s.strip()]
    if not students or set(students) - {"tree", "mlp"}:
        raise ConfigError(f"--student takes tree, mlp or tree,mlp; got {args.student!r}")
    if not 0.0 < args.test_size < 1.0:
        raise ConfigError(f"--test-size must be in (0, 1), got {args.test_size}")
    hidden = tuple(int(h) for h in args.hidden.split("-")) if args.hidden else ()
    split = lambda text: [c.strip() for c in text.split(",") if c.strip()]  # noqa: E731
    table = read_csv_table(args.csv, args.label, categorical=split(args.categorical), drop=split(args.drop))
    counts = dict(zip(*np.unique(table.y, return_counts=True)))
    if min(counts.values()) < 2:
        raise DataError(f"{args.csv}: every class needs at least 2 rows for a held-out split; counts are {counts}")
    x_train, x_test, y_train, y_test = train_test_split(table.x, table.y, test_size=args.test_size, stratify=table.y,
                                                        random_state=args.seed)
    teacher = fit_teacher(_load_teacher(args.teacher, args.trust_pickle), x_train, y_train, args.seed)
    common = dict(teacher=teacher, synthetic=args.synthetic, n_synthetic=args.n_synthetic, p=args.p, s=args.s,
                  categorical_features=table.categorical_features, random_state=args.seed)
    models = {"teacher": teacher if hasattr(teacher, "predict") else as_proba_teacher(teacher, np.unique(y_train))}
    models["CART (CV-pruned)"] = fit_cart(x_train, y_train, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if "tree" in students:
        tree = BornAgainTreeClassifier(max_depth=args.max_depth, max_leaf_nodes=args.max_leaf_nodes, **common).fit(x_train, y_train)
        models["born-again tree"] = tree
        save_tree(tree, out / "tree.json", feature_names=table.feature_names, categories=table.categories)
        (out / "tree.rules.txt").write_text(tree.rules(table.feature_names))
    if "mlp" in students:
        mlp = MimicMLPClassifier(hidden_layer_sizes=hidden, max_epochs=args.epochs, verbose=not (args.quiet or args.json),
                                 **common).fit(x_train, y_train)
        models["mimic MLP"] = mlp
        from modelpress.export import export_onnx

        export_onnx(mlp.module_, out / "mlp.onnx", input_shape=(table.x.shape[1],))
        (out / "mlp.classes.json").write_text(json.dumps([c.item() if hasattr(c, "item") else c for c in mlp.classes_]))
    rows = compare_classifiers(models, x_test, y_test, seed=args.seed)
    columns = ["model", "error", "errors", "n", "nodes", "params", "bytes", "ms_1_row", "ms_batch"]
    table_md = markdown_table(rows, columns)
    note = (f"{args.csv}: {len(y_train)} training / {len(y_test)} held-out rows, {table.x.shape[1]} features, "
            f"{len(counts)} classes; teacher {args.teacher}; {args.synthetic} synthetic rows: {args.n_synthetic}. "
            "ms_batch: 10,000 rows.")
    (out / "report.md").write_text(f"# modelpress mimic\n\n{table_md}\n\n{note}\n")
    result = {"rows": rows, "note": note, "output": str(out)}
    write_json(out / "report.json", result)
    if not args.json:
        print(table_md)
        print(f"\n{note}\nwrote {out}/")
    return result
