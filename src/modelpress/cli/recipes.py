"""``modelpress run``, ``report`` and ``tune``: recipe files run, reported and searched (``cli/main.py`` only assembles the parser)."""

from __future__ import annotations

import argparse

from modelpress.core.errors import ModelpressError


class RunInterrupted(ModelpressError):
    """``modelpress run`` stopped by Ctrl-C; its run folder holds what finished and the last checkpoint."""

EPILOG_RUN = """examples:
  modelpress run examples/hinton_kd.yaml -o runs/hinton        # interrupted? the same command resumes
  modelpress report runs/hinton                                 # runs/hinton/report.html and report.md
  modelpress tune examples/hinton_kd.yaml --trials 20 -o runs/hinton-tune
  modelpress tune recipe.yaml --trials 10 -o runs/t --storage postgresql://host/db --study kd   # several machines
"""


def register(sub) -> None:
    """Add the ``run``, ``report`` and ``tune`` sub-commands to ``sub`` (an argparse sub-parsers object)."""
    p = sub.add_parser("run", help="run a recipe's stages into a run folder (resumes after an interruption)",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run a YAML recipe (train or load -> distil -> prune -> quantize -> encode -> export), "
                                   "keeping each stage's model and metrics in RUNDIR. Run it again to resume: finished "
                                   "stages are kept, an unfinished one continues from its last checkpoint.")
    p.add_argument("recipe", metavar="RECIPE", help="a recipe file (YAML); see examples/")
    p.add_argument("-o", "--output", required=True, metavar="RUNDIR", help="the run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-stage lines")
    p.add_argument("--json", action="store_true", help="print every stage's metrics as one JSON object")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("report", help="an HTML page (and Markdown) of a run or tune folder",
                       description="Write a self-contained HTML report of a run folder: the stage-by-stage table, "
                                   "accuracy against size with the Pareto front, per-layer sparsity and bit-width, "
                                   "weight histograms; and the same as Markdown beside it.")
    p.add_argument("rundir", metavar="RUNDIR")
    p.add_argument("-o", "--output", default=None, metavar="REPORT.html", help="default RUNDIR/report.html")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("tune", help="search a recipe's tunable options with Optuna (TPE, median pruning)",
                       epilog=EPILOG_RUN, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Search the options a recipe marks {tune: [lo, hi]} or {choices: [...]}, maximising the "
                                   "last stage's validation accuracy (less the recipe's objective.max_bytes penalty). "
                                   "Writes RUNDIR/best_recipe.yaml and tune.json; each trial runs in RUNDIR/trials/N.")
    p.add_argument("recipe", metavar="RECIPE")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="trials to run now (added to the study's)")
    p.add_argument("-o", "--output", required=True, metavar="RUNDIR")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="an Optuna storage URL shared by several machines (default sqlite:///RUNDIR/study.db)")
    p.add_argument("--study", default=None, metavar="NAME", help="study name (default: the recipe's name)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="start no trial after S seconds")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_tune)


def _log(args: argparse.Namespace):
    import sys

    if args.quiet:
        return lambda line: None
    return lambda line: print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> dict:
    """``modelpress run``: every stage of the recipe, resumed where an earlier run stopped."""
    from modelpress.measure import markdown_table
    from modelpress.recipes import load_recipe, run_recipe

    recipe = load_recipe(args.recipe)  # the whole recipe is checked before any work starts
    try:
        result = run_recipe(recipe, args.output, progress=False if args.quiet else None, log=_log(args))
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; run `modelpress run {args.recipe} -o {args.output}` again to resume "
                           "(finished stages are kept, the current one continues from its last checkpoint)") from None
    from modelpress.distributed import is_main_process

    if not is_main_process():  # under torchrun rank 0 alone reports
        return None
    rows = [{"stage": e["name"], "kind": e["kind"], **e["metrics"]} for e in result.stages]
    if not args.json and not args.quiet:
        print(markdown_table(rows, ["stage", "kind", "accuracy", "params", "nonzero_params", "bytes", "flops"],
                             ["Stage", "Kind", "Test accuracy", "Params", "Non-zero", "Bytes", "FLOPs"]), end="")
    return {"rundir": str(result.rundir), "stages": [{k: v for k, v in row.items() if k != "layers"} for row in rows]}


def cmd_report(args: argparse.Namespace) -> dict:
    """``modelpress report``: the HTML page and its Markdown twin."""
    from modelpress.recipes import write_report

    html_path, md_path = write_report(args.rundir, args.output)
    if not args.json:
        print(f"wrote {html_path} and {md_path}")
    return {"html": str(html_path), "markdown": str(md_path)}


def cmd_tune(args: argparse.Namespace) -> dict:
    """``modelpress tune``: an Optuna study over the recipe's tunable options."""
    from modelpress.recipes import load_recipe, tune_recipe

    recipe = load_recipe(args.recipe)
    result = tune_recipe(recipe, args.output, trials=args.trials, storage=args.storage, study_name=args.study,
                         timeout=args.timeout, progress=False, log=_log(args))
    if not args.json and not args.quiet and result.best_trial is not None:
        print(f"best trial {result.best_trial}: objective {result.best_value:.4f}")
        for key, value in result.best_params.items():
            print(f"  {key}: {value}")
        print(f"best recipe: {result.best_recipe}")
    return {"study": result.study_name, "storage": result.storage, "best_trial": result.best_trial,
            "best_value": result.best_value, "best_params": result.best_params,
            "best_recipe": str(result.best_recipe) if result.best_recipe else None, "trials": result.trials}

