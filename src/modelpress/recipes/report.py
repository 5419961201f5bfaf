"""``write_report``: one self-contained HTML page (images inlined as base64 PNG) and a Markdown twin for a run
folder: the stage table, accuracy against size with the Pareto front, per-layer sparsity and bit-width
bars, and weight histograms. For a ``tune`` folder the table is the best trial's and the plot holds every
trial's stages."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from modelpress.core.errors import ModelFileError
from modelpress.core.io import atomic_write
from modelpress.measure import markdown_table
from modelpress.measure.plots import plot_weight_histograms
from modelpress.measure.run_plots import plot_accuracy_vs_size, plot_layer_bars
from modelpress.prune import effective_weight, prunable_layers
from modelpress.recipes.context import read_model
from modelpress.recipes.runner import read_index

COLUMNS = ["stage", "kind", "accuracy", "val_accuracy", "params", "nonzero_params", "bytes", "flops",
           "latency_ms_b1", "latency_ms_b256"]
HEADERS = ["Stage", "Kind", "Test accuracy", "Val accuracy", "Params", "Non-zero", "Bytes", "FLOPs",
           "Latency b1 (ms)", "Latency b256 (ms)"]
MAX_HISTOGRAMS = 8


def _runs(rundir: Path) -> tuple[dict, Path, list[tuple[str, dict, Path]], dict | None]:
    """The main run's index and folder, every run to plot ``(group, index, folder)``, and the tune summary."""
    tune_file = rundir / "tune.json"
    if not tune_file.is_file():
        index = read_index(rundir)
        return index, rundir, [("", index, rundir)], None
    try:
        tune = json.loads(tune_file.read_text())
    except ValueError as err:  # not JSON, or not even UTF-8 text
        raise ModelFileError(f"{tune_file} is corrupt: {err}") from None
    runs = []
    for folder in sorted((rundir / "trials").glob("*"), key=lambda p: int(p.name) if p.name.isdigit() else -1):
        if (folder / "run.json").is_file():
            runs.append((f"trial {folder.name}", read_index(folder), folder))
    if tune.get("best_trial") is None or not runs:
        raise ModelFileError(f"{rundir} holds a study with no finished trial: nothing to report yet")
    best = rundir / "trials" / str(tune["best_trial"])
    return read_index(best), best, runs, tune


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _histograms(folder: Path, entry: dict) -> dict:
    """Layer -> (weights, shared values or None) of a stage's PyTorch-readable model."""
    model = read_model(folder / entry["output"])
    layers = {}
    for name, module in prunable_layers(model).items():
        w = effective_weight(module).numpy()
        distinct = np.unique(w[w != 0])
        layers[name] = (w, distinct if distinct.size <= 256 and distinct.size <= int((w != 0).sum()) // 4 else None)
    return layers


def _same_architecture(layered: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The stages whose layers (names and sizes) are those of the last one: bars of another model's
    layers under the same name would compare different things."""
    if not layered:
        return {}
    last = [(r["layer"], r["weights"]) for r in list(layered.values())[-1]]
    return {name: rows for name, rows in layered.items() if [(r["layer"], r["weights"]) for r in rows] == last}


def write_report(rundir: str | Path, html_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.md`` (images in ``report_files/``) for a run folder.

    Args:
        rundir: a folder written by ``modelpress run`` or ``modelpress tune``.
        html_path: where the HTML goes (default ``RUNDIR/report.html``); the Markdown goes beside it.

    Returns:
        ``(html_path, md_path)``.

    Raises:
        ModelFileError: ``rundir`` is not a run folder, or a study there has no finished trial.
    """
    rundir = Path(rundir)
    index, folder, runs, tune = _runs(rundir)
    html_path = Path(html_path) if html_path else rundir / "report.html"
    md_path = html_path.with_suffix(".md")
    assets = html_path.parent / "report_files"
    assets.mkdir(parents=True, exist_ok=True)
    done = [e for e in index["stages"] if e["status"] == "done"]
    rows = [{"stage": e["name"], "kind": e["kind"], **e["metrics"]} for e in done]
    table = markdown_table(rows, COLUMNS, HEADERS)

    figures: list[tuple[str, Path, str]] = []  # (title, png, caption)
    points = [{"label": e["name"], "bytes": e["metrics"]["bytes"], "accuracy": e["metrics"]["accuracy"], "group": group,
               "annotate": tune is None or run_folder == folder}
              for group, run_index, run_folder in runs for e in run_index["stages"] if e["status"] == "done"]
    if points:
        front = plot_accuracy_vs_size(points, assets / "accuracy_vs_size.png", title=f"{index['recipe']} on {index['data']}")
        names = ", ".join(f"{points[i]['label']}" + (f" ({points[i]['group']})" if points[i]["group"] else "") for i in front)
        figures.append(("Accuracy against size", assets / "accuracy_vs_size.png",
                        f"Every stage{' of every trial' if tune else ''}; the red line is the Pareto front: {names}."))
    layered = _same_architecture({e["name"]: e["metrics"]["layers"] for e in done if e["metrics"].get("layers")})
    if layered:
        plot_layer_bars(layered, assets / "layers.png")
        figures.append(("Per-layer sparsity and bit-width", assets / "layers.png",
                        "The stages that share the last model's layers: fraction of zero weights, and the bits an index into each "
                        "layer's distinct values needs (32: ordinary float32 weights)."))
    for e in [e for e in done if e["output"].endswith((".mpk", ".mpz"))][-MAX_HISTOGRAMS:]:
        png = assets / f"hist_{e['index']}_{e['name']}.png"
        plot_weight_histograms(_histograms(folder / e["folder"], e), png)
        figures.append((f"Weight histograms: {e['name']}", png, "Non-zero weights per layer; red lines mark shared values."))

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"modelpress run: {index['recipe']}"
    intro = (f"Recipe `{index['recipe']}` on `{index['data']}` (seed {index['seed']}), run folder `{folder}`; "
             f"report written {when}. Accuracy on the test split; bytes of each stage's file; FLOPs per example; "
             f"latency is the median ms per batch on this machine's CPU ({rows[-1].get('threads', '?') if rows else '?'} threads), "
             f"timed when each stage finished, not side by side: compare latencies only from a quiet machine.")
    if tune:
        intro += (f" Study `{tune['study']}`: {len(tune['trials'])} trials, best trial {tune['best_trial']} "
                  f"(objective {tune['best_value']:.4f}) with {tune['best_params']}.")
    md = [f"# {title}", "", intro, "", table]
    for heading, png, caption in figures:
        md += [f"## {heading}", "", f"![{heading}]({png.relative_to(md_path.parent)})", "", caption, ""]
    with atomic_write(md_path) as tmp:
        tmp.write_text("\n".join(md))
    with atomic_write(html_path) as tmp:
        tmp.write_text(_html(title, intro, rows, figures))
    return html_path, md_path


def _html(title: str, intro: str, rows: list[dict], figures: list[tuple[str, Path, str]]) -> str:
    from modelpress.measure import format_value

    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADERS)
    body = "".join("<tr>" + "".join(f"<td>{esc(format_value(r.get(c)))}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    parts = [f"<h2>{esc(h)}</h2><figure><img src=\"{_png(p)}\" alt=\"{esc(h)}\"><figcaption>{esc(c)}</figcaption></figure>"
             for h, p, c in figures]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "th{background:#f2f2f2}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"
             "figcaption{font-size:13px;color:#555}")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body><h1>{esc(title)}</h1><p>{esc(intro)}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{''.join(parts)}</body></html>\n")
