"""A recipe: YAML data (never code) parsed into typed stage options, checked whole before any work starts.

Layout of a recipe file::

    name: hinton-kd               # optional; default: the file name
    seed: 0
    data: {name: digits, limit: 1000}
    measure: {latency: true}
    objective: {metric: val_accuracy, max_bytes: 200000}   # what `modelpress tune` maximises
    stages:
      - {kind: train, name: teacher, model: "mlp:1200-1200", dropout: 0.5, epochs: 20}
      - kind: distill
        student: "mlp:800-800"
        temperature: {tune: [1, 20], log: true, default: 4}

Each stage has a ``kind`` (see :mod:`modelpress.recipes.schema`), an optional unique ``name``
(default: its kind) and ``input`` (the earlier stage whose model it takes; default: the one before).
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from modelpress.core.errors import ConfigError
from modelpress.recipes.fields import Tunable, parse_options
from modelpress.recipes.schema import STAGE_KINDS, TERMINAL_KINDS, DataSection, MeasureSection, ObjectiveSection

TOP_LEVEL = ("name", "seed", "data", "measure", "objective", "stages")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class StageSpec:
    """One validated stage: its position (from 1), ``kind``, ``name``, the names of the stages it reads
    (``input``, and ``teacher`` for distillation), typed ``options`` and the ``tunables`` among them."""

    index: int
    kind: str
    name: str
    input: str | None
    options: Any
    tunables: dict[str, Tunable] = field(default_factory=dict)
    teacher: str | None = None

    @property
    def label(self) -> str:
        return f"recipe stage {self.index} '{self.name}':"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``raw`` is the parsed YAML (tunable forms included); ``base_dir`` resolves
    relative ``load`` paths."""

    name: str
    seed: int
    data: DataSection
    measure: MeasureSection
    objective: ObjectiveSection
    stages: tuple[StageSpec, ...]
    raw: dict
    base_dir: Path

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def tunables(self) -> dict[str, tuple[StageSpec, str, Tunable]]:
        """Every tunable option as ``"stage.field" -> (stage, field, Tunable)``, in recipe order."""
        return {f"{s.name}.{f}": (s, f, t) for s in self.stages for f, t in s.tunables.items()}

    def with_values(self, values: dict[str, Any]) -> "Recipe":
        """This recipe with tunable options fixed to ``values`` (``"stage.field" -> value``), validated again."""
        raw = copy.deepcopy(self.raw)
        unknown = set(values) - set(self.tunables())
        if unknown:
            raise ConfigError(f"not tunable options of this recipe: {sorted(unknown)}")
        for key, value in values.items():
            stage, name, _ = self.tunables()[key]
            raw["stages"][stage.index - 1][name] = value
        return parse_recipe(raw, base_dir=self.base_dir)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and validate a YAML recipe file (``yaml.safe_load``: plain data only, no tags that run code).

    Raises:
        ConfigError: the file is missing or not YAML, or any part of it is invalid; the message names
            the stage, the field and what was expected.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"recipe {path} is not a UTF-8 text file (byte {err.start} cannot be decoded)") from None
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": path.stem, **raw}
    return parse_recipe(raw, base_dir=path.parent)


def parse_recipe(raw: Any, *, base_dir: str | os.PathLike[str] = ".") -> Recipe:
    """Validate a recipe given as plain data (what ``yaml.safe_load`` returns). See :func:`load_recipe`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a recipe is a mapping with keys {', '.join(TOP_LEVEL)}; got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ConfigError(f"recipe: unknown top-level key {unknown[0]!r}; known: {', '.join(TOP_LEVEL)}")
    name = raw.get("name", "recipe")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"recipe: 'name' must be letters, digits, '-' or '_'; got {name!r}")
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"recipe: 'seed' must be an integer >= 0, got {seed!r}")
    data = _section(DataSection, raw.get("data"), "data", required=True)
    data = replace(data, name=_resolve_data_name(data.name, Path(base_dir)))
    if data.val_size is not None and data.val_size >= 1 and data.val_size != int(data.val_size):
        raise ConfigError(f"recipe data: field 'val_size' must be a count (a whole number) or a fraction in (0, 1), "
                          f"got {data.val_size}")
    measure = _section(MeasureSection, raw.get("measure"), "measure")
    objective = _section(ObjectiveSection, raw.get("objective"), "objective")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError("recipe: 'stages' must be a non-empty list of stages")
    stages: list[StageSpec] = []
    for index, item in enumerate(stages_raw, start=1):
        stages.append(_parse_stage(index, item, stages, Path(base_dir)))
    _check_architectures(stages, data.name)
    if objective.stage is not None and objective.stage not in [s.name for s in stages]:
        raise ConfigError(f"recipe objective: field 'stage' must name a stage ({', '.join(s.name for s in stages)}), "
                          f"got {objective.stage!r}")
    return Recipe(name, seed, data, measure, objective, tuple(stages), copy.deepcopy(raw), Path(base_dir))


def _section(cls: type, raw: Any, key: str, required: bool = False):
    if raw is None and not required:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe: '{key}' must be a mapping, e.g. {key}: {{...}}; got {raw!r}")
    options, tunables = parse_options(cls, raw, f"recipe {key}:")
    if tunables:
        raise ConfigError(f"recipe {key}: only stage options can be tuned")
    return options


def _resolve_data_name(name: str, base_dir: Path) -> str:
    """A built-in data set's name as given; a folder as an absolute path, relative ones read from the recipe's folder.

    Resolved here, once, so that the run loads, and the stage hashes name, the folder that was checked.
    """
    from modelpress.data import dataset_names

    if name in dataset_names():
        return name
    for folder in (base_dir / name).expanduser(), Path(name).expanduser():
        if folder.is_dir():
            return str(folder.resolve())
    raise ConfigError(f"recipe data: field 'name' must be one of: {', '.join(dataset_names())} or a folder of "
                      f"MNIST-layout files, got {name!r}")


def _parse_stage(index: int, item: Any, earlier: list[StageSpec], base_dir: Path) -> StageSpec:
    if not isinstance(item, dict) or "kind" not in item:
        raise ConfigError(f"recipe stage {index}: a stage is a mapping with a 'kind' ({', '.join(STAGE_KINDS)}); got {item!r}")
    kind = item["kind"]
    name = item.get("name", kind)
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"recipe stage {index}: field 'name' must be letters, digits, '-' or '_', got {name!r}")
    where = f"recipe stage {index} '{name}':"
    if not isinstance(kind, str) or kind not in STAGE_KINDS:
        raise ConfigError(f"{where} field 'kind' must be one of: {', '.join(STAGE_KINDS)}, got {kind!r}")
    if any(s.name == name for s in earlier):
        raise ConfigError(f"{where} the name {name!r} is already used by an earlier stage; give this stage its own 'name'")
    cls = STAGE_KINDS[kind]
    cls = cls.for_raw(item, where) if hasattr(cls, "for_raw") else cls  # distill: the stage class of its method
    options, tunables = parse_options(cls, item, where, skip=("kind", "name", "input"))
    source = _source(kind, item, options, earlier, where)
    teacher = source if kind in ("distill", "tree") else None
    if kind == "load":
        path = Path(options.path).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ConfigError(f"{where} field 'path' must be an existing model file, got {options.path!r} (looked for {path})")
    for arch in (getattr(options, "model", None), getattr(options, "student", None)):
        if arch is not None:
            _check_arch(arch, where)
    return StageSpec(index, kind, name, None if teacher else source, options, tunables, teacher)


def _source(kind: str, item: dict, options, earlier: list[StageSpec], where: str) -> str | None:
    """The earlier stage this one reads: ``input`` (``teacher`` for distill), else the stage before."""
    if kind in ("train", "load", "tree") and "input" in item:
        raise ConfigError(f"{where} field 'input' does not apply: a {kind} stage makes its model itself"
                          + (" (field 'teacher' names the stage whose model labels its rows)" if kind == "tree" else ""))
    if kind in ("train", "load") or (kind == "tree" and options.teacher is None):
        return None
    key = "teacher" if kind in ("distill", "tree") else "input"
    if kind == "distill" and "input" in item:
        raise ConfigError(f"{where} a distill stage reads its teacher: use field 'teacher', not 'input'")
    wanted = options.teacher if key == "teacher" else item.get("input")
    if wanted is None:
        if not earlier:
            raise ConfigError(f"{where} needs a model to work on: put a train or load stage before it")
        source = earlier[-1]
    else:
        matches = [s for s in earlier if s.name == wanted]
        if not matches:
            raise ConfigError(f"{where} field {key!r} must name an earlier stage "
                              f"({', '.join(s.name for s in earlier) or 'none yet'}), got {wanted!r}")
        source = matches[0]
    if source.kind in TERMINAL_KINDS:
        raise ConfigError(f"{where} stage '{source.name}' writes a file no later stage can read as a model "
                          f"({'a tree' if source.kind == 'tree' else 'ONNX'}): read an earlier stage with field {key!r}")
    return source.name


#: One example's shape and the class count of each built-in set, to build every architecture of a recipe
#: once while checking it (MNIST-layout sets and folders: 28x28 images, 10 classes).
PROBE_SHAPES = {"digits": ((1, 8, 8), 10), "breast-cancer": ((30,), 2), "wine": ((13,), 3), "mnist1d": ((40,), 10)}


def _check_architectures(stages: list[StageSpec], data_name: str) -> None:
    """Build each stage's architecture on the data's shape, so a bad spec (``mlp:abc``) fails before any work."""
    from modelpress.core.errors import ModelpressError
    from modelpress.models import build_model

    shape, classes = PROBE_SHAPES.get(data_name, ((1, 28, 28), 10))
    for stage in stages:
        for field_name in ("model", "student"):
            arch = getattr(stage.options, field_name, None)
            if arch is None:
                continue
            try:
                build_model(arch, shape, classes)
            except ModelpressError as err:
                raise ConfigError(f"recipe stage {stage.index} '{stage.name}': field '{field_name}': {err}") from None


def _check_arch(arch: str, where: str) -> None:
    from modelpress.models import MODELS

    if arch.partition(":")[0] not in MODELS:
        raise ConfigError(f"{where} unknown architecture {arch!r}; known: {', '.join(MODELS.names())}")
