"""``run_recipe``: run a recipe's stages into a run folder, measure each, and resume after an interruption.

Under ``torchrun`` every rank runs every stage (training stages train one model together); rank 0
alone prepares and cleans the stage folders and writes the index, and the ranks meet at a barrier
before and after each stage, so no rank reads a file another is still writing or deletes one it is
writing.

Run folder layout::

    RUNDIR/recipe.yaml              the recipe as last run
    RUNDIR/run.json                 the index, rewritten atomically after every stage (status, hash, metrics)
    RUNDIR/stage_<i>_<name>/        model.mpk | model.mpz | model.onnx, metrics.json, stage.json,
                                    and *.ckpt while the stage trains (removed when it finishes)

A stage's hash covers its kind, options, the data, the seed and the hashes of the stages it reads (a
loaded file's content too). Running again skips every finished stage whose hash is unchanged, continues
an unfinished one from its checkpoint, and refuses to go on when a finished stage's hash changed, since
its result no longer belongs to the recipe.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import yaml

from modelpress.core.errors import ConfigError, ModelFileError
from modelpress.core.io import atomic_write
from modelpress.core.options import flatten
from modelpress.data import load_dataset
from modelpress.distributed import barrier, init_distributed, is_main_process
from modelpress.measure import write_json
from modelpress.recipes.context import StageContext, read_model
from modelpress.recipes.measuring import measure_stage
from modelpress.recipes.recipe import Recipe, StageSpec
from modelpress.recipes.stages_compress import run_encode, run_export, run_factorize, run_int8, run_prune, run_quantize
from modelpress.recipes.stages_models import run_distill, run_load, run_train
from modelpress.recipes.stages_trees import run_tree

STAGE_RUNNERS = {"train": run_train, "load": run_load, "distill": run_distill, "prune": run_prune,
                 "quantize": run_quantize, "encode": run_encode, "factorize": run_factorize, "int8": run_int8,
                 "export": run_export, "tree": run_tree}
INDEX_FORMAT = "modelpress-run"


@dataclass
class RunResult:
    """A finished run: its folder and the index entry of every stage (``status``, ``metrics``, ``output`` ...)."""

    rundir: Path
    stages: list[dict]

    @property
    def final(self) -> dict:
        """The last stage's metrics."""
        return self.stages[-1]["metrics"]


def stage_folder(rundir: Path, stage: StageSpec) -> Path:
    return rundir / f"stage_{stage.index}_{stage.name}"


def stage_hashes(recipe: Recipe) -> dict[str, str]:
    """Stage name -> sha256 of what determines its result (see the module docstring)."""
    hashes: dict[str, str] = {}
    data = asdict(recipe.data)
    for stage in recipe.stages:
        content = {"kind": stage.kind, "options": flatten(stage.options), "data": data, "seed": recipe.seed,
                   "input": hashes.get(stage.input), "teacher": hashes.get(stage.teacher)}
        if stage.kind == "load":
            path = Path(stage.options.path).expanduser()
            path = path if path.is_absolute() else recipe.base_dir / path
            content["file_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        hashes[stage.name] = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return hashes


def read_index(rundir: str | Path) -> dict:
    """The run index ``RUNDIR/run.json``.

    Raises:
        ModelFileError: there is none, or it is not a modelpress run index.
    """
    path = Path(rundir) / "run.json"
    if not path.is_file():
        raise ModelFileError(f"{rundir} is not a modelpress run folder (no run.json): run `modelpress run RECIPE -o {rundir}` first")
    try:
        index = json.loads(path.read_text())
    except ValueError as err:  # not JSON, or not even UTF-8 text
        raise ModelFileError(f"{path} is corrupt: {err}") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ModelFileError(f"{path} is not a modelpress run index")
    return index


def _previous(rundir: Path) -> list[dict]:
    return read_index(rundir)["stages"] if (rundir / "run.json").is_file() else []


def _check_resumable(recipe: Recipe, rundir: Path, old: list[dict], hashes: dict[str, str]) -> None:
    """Refuse when a finished stage on disk no longer matches the recipe's stage at its place."""
    for stage in recipe.stages:
        if stage.index > len(old):
            return
        entry = old[stage.index - 1]
        if entry["status"] != "done" or not (rundir / entry["folder"] / entry["output"]).is_file():
            continue
        if entry["name"] != stage.name or entry["hash"] != hashes[stage.name]:
            changed = _changed_options(entry.get("options", {}), flatten(stage.options)) if entry["name"] == stage.name else ""
            raise ConfigError(
                f"{rundir} holds finished stage {stage.index} '{entry['name']}' of a different recipe "
                f"({changed or 'it, its inputs, the data or the seed changed'}); use a new run folder, or delete "
                f"{rundir / entry['folder']} and the stage folders after it to redo them")


def _changed_options(old: dict, new: dict) -> str:
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(diffs)


def run_recipe(recipe: Recipe, rundir: str | Path, *, progress: bool | None = False, callbacks: tuple = (),
               log: Callable[[str], None] | None = None, cache_dir: str | Path | None = None,
               on_stage_end: Callable[[StageSpec, dict], None] | None = None) -> RunResult:
    """Run every stage of ``recipe`` into ``rundir``, or resume a run there.

    Args:
        recipe: a validated :class:`~modelpress.recipes.recipe.Recipe` (tunable options at their defaults).
        rundir: the run folder (created). Finished stages found there are kept, not redone.
        progress: progress bars of training (``None``: only on a terminal).
        callbacks: extra training callbacks passed to every training run.
        log: receives one line per stage (default: stderr).
        cache_dir: a folder of finished stages by hash, shared between runs (``tune`` uses it so trials
            that differ only in later stages do not redo the earlier ones).
        on_stage_end: called with each stage and its metrics once they are known.

    Returns:
        A :class:`RunResult`.

    Raises:
        ConfigError: a finished stage in ``rundir`` belongs to a different recipe.
        ModelpressError: a stage failed; finished stages stay on disk and a rerun continues from there.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    rundir = Path(rundir)
    hashes = stage_hashes(recipe)
    old = _previous(rundir)
    _check_resumable(recipe, rundir, old, hashes)
    init_distributed()  # under torchrun: join the group now, so only rank 0 writes from the start
    main = is_main_process()
    if not main:
        log = lambda line: None  # noqa: E731
    if main:
        rundir.mkdir(parents=True, exist_ok=True)
        with atomic_write(rundir / "recipe.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(recipe.raw, sort_keys=False))
    barrier()
    entries = [_entry(stage, hashes[stage.name], old, rundir) for stage in recipe.stages]
    index = {"format": INDEX_FORMAT, "version": 1, "recipe": recipe.name, "data": recipe.data.name, "seed": recipe.seed,
             "stages": entries}
    splits = None
    for stage, entry in zip(recipe.stages, entries):
        folder = stage_folder(rundir, stage)
        if entry["status"] != "done" and not _from_cache(cache_dir, entry, folder):
            if splits is None:
                d = recipe.data
                val_size = int(d.val_size) if d.val_size is not None and d.val_size >= 1 else d.val_size
                splits = load_dataset(d.name, seed=recipe.seed, val_size=val_size, limit=d.limit, limit_test=d.limit_test)
            _run_stage(recipe, stage, entry, index, rundir, splits, progress, callbacks, log, entries)
            _to_cache(cache_dir, entry, folder)
        else:
            entry["metrics"] = json.loads((folder / "metrics.json").read_text())["metrics"]
            entry["status"] = "done"
            log(f"stage {stage.index}/{len(recipe.stages)} '{stage.name}' ({stage.kind}): finished earlier, kept; "
                f"test accuracy {entry['metrics']['accuracy']:.4f}")
        if main:
            write_json(rundir / "run.json", index)
        if on_stage_end is not None:
            on_stage_end(stage, entry["metrics"])
    return RunResult(rundir, entries)


def _entry(stage: StageSpec, digest: str, old: list[dict], rundir: Path) -> dict:
    entry = {"index": stage.index, "name": stage.name, "kind": stage.kind, "hash": digest, "status": "pending",
             "folder": f"stage_{stage.index}_{stage.name}", "output": "", "input": stage.input, "teacher": stage.teacher,
             "options": flatten(stage.options), "tuned": sorted(stage.tunables), "metrics": {}, "info": {}, "seconds": None}
    if stage.index <= len(old):
        before = old[stage.index - 1]
        if before["status"] == "done" and before["hash"] == digest and (rundir / before["folder"] / before["output"]).is_file():
            entry |= {k: before[k] for k in ("status", "output", "info", "seconds") if k in before}
    return entry


def _run_stage(recipe: Recipe, stage: StageSpec, entry: dict, index: dict, rundir: Path, splits, progress, callbacks,
               log, entries: list[dict]) -> None:
    folder = stage_folder(rundir, stage)
    marker = folder / "stage.json"
    entry["status"] = "running"
    if is_main_process():
        if folder.exists() and (not marker.is_file() or json.loads(marker.read_text()).get("hash") != entry["hash"]):
            shutil.rmtree(folder)  # a partial stage of other settings: its checkpoint must not be resumed
        folder.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"hash": entry["hash"], "kind": stage.kind, "name": stage.name})
        write_json(rundir / "run.json", index)
    barrier()
    by_name = {e["name"]: e for e in entries}

    def output_of(name: str) -> Path:
        return rundir / by_name[name]["folder"] / by_name[name]["output"]

    ctx = StageContext(splits=splits, seed=recipe.seed, folder=folder, load=lambda name: read_model(output_of(name)),
                       output_of=output_of, progress=progress, callbacks=tuple(callbacks), base_dir=recipe.base_dir,
                       recipe_name=recipe.name, stage_name=stage.name)
    log(f"stage {stage.index}/{len(recipe.stages)} '{stage.name}' ({stage.kind}) ...")
    started = time.perf_counter()
    out = STAGE_RUNNERS[stage.kind](stage.options, ctx, stage.teacher or stage.input)
    metrics = measure_stage(out, splits, latency=recipe.measure.latency)
    entry |= {"output": out.path.name, "metrics": metrics, "info": out.info, "seconds": time.perf_counter() - started}
    barrier()  # every rank's outputs and rank 0's last checkpoint are written
    if is_main_process():
        write_json(folder / "metrics.json", {"stage": stage.name, "kind": stage.kind, "metrics": metrics, "info": out.info})
        for checkpoint in folder.rglob("*.ckpt*"):  # born-again keeps one per generation in a subfolder
            checkpoint.unlink()
    barrier()
    entry["status"] = "done"
    m = metrics
    size = f"{m['nodes']:,} tree nodes" if "nodes" in m else f"{m['params']:,} params ({m['nonzero_params']:,} non-zero)"
    log(f"stage {stage.index}/{len(recipe.stages)} '{stage.name}' ({stage.kind}): test accuracy {m['accuracy']:.4f}, "
        f"{size}, {m['bytes']:,} bytes [{entry['seconds']:.1f} s]")


def _from_cache(cache_dir, entry: dict, folder: Path) -> bool:
    """Copy a stage finished by an earlier run with the same hash from ``cache_dir``; whether one was there."""
    if cache_dir is None:
        return False
    cached = Path(cache_dir) / entry["hash"]
    if not (cached / "stage.json").is_file() or not (cached / "metrics.json").is_file():
        return False
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(cached, folder)
    saved = json.loads((cached / "stage.json").read_text())
    entry |= {"output": saved["output"], "info": json.loads((cached / "metrics.json").read_text())["info"],
              "seconds": 0.0}
    return True


def _to_cache(cache_dir, entry: dict, folder: Path) -> None:
    if cache_dir is None:
        return
    cached = Path(cache_dir) / entry["hash"]
    if cached.exists():
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Its own temporary folder, so tune workers sharing the cache never copy into each other's.
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    shutil.copytree(folder, tmp, dirs_exist_ok=True)
    write_json(tmp / "stage.json", {"hash": entry["hash"], "output": entry["output"]})
    try:
        tmp.rename(cached)  # complete or absent: a half-copied stage is never found
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not cached.exists():  # not another worker's identical copy: a real failure
            raise
