"""One declaration per option: a method's frozen config dataclass is the only place its options live.

Each field of a config is declared with :func:`opt` (a scalar: its type, bounds, choices, help, whether
a search may tune it) or :func:`nested` (another config inside this one, e.g. the training loop's
``TrainConfig`` inside ``DistillConfig``). Everything else is derived from that declaration:

- :func:`flat_fields` lists the options a user can set as one flat namespace (nested configs' fields
  appear under their prefix), which is what the CLI turns into flags (:mod:`modelpress.cli.options`)
  and what a recipe stage accepts as fields (:mod:`modelpress.recipes.fields`);
- :func:`build` makes the config from flat values, the same function for Python, CLI and recipes, so
  the same options give the same config (and so the same run) whichever way they were given;
- :func:`to_dict` / :func:`from_dict` round-trip a config through plain JSON;
- :func:`check_declared` validates every field against its declaration, naming the field.

Example:
    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     rate: float = opt(0.1, lo=0, lo_open=True, help="step size")
    >>> build(Demo, {"rate": 0.5})
    Demo(rate=0.5)
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from enum import Enum
from typing import Any, Iterator, Mapping

from modelpress.core.errors import ConfigError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
TYPES = ("number", "integer", "text", "bool", "choice", "texts")


@dataclass(frozen=True)
class Opt:
    """What one field accepts.

    Args:
        type: ``number``, ``integer``, ``text``, ``bool``, ``choice`` (one of ``choices``) or ``texts``
            (a tuple of texts; repeatable on the command line).
        lo, hi: bounds of numbers and integers (``None``: unbounded); ``lo_open`` / ``hi_open`` exclude them.
        choices: the allowed values of a ``choice`` (an Enum class gives its members' values).
        optional: ``None`` (null in a recipe) is accepted too.
        tunable: ``modelpress tune`` may search it.
        help: what the value means (``--help``, recipe errors).
        flag: the command-line spelling when it is not the field name with dashes.
        metavar: the placeholder ``--help`` shows.
        shared: one value for every copy of this field in nested configs (the seed), not one per prefix.
        expose: ``False`` keeps the field out of CLI flags and recipe fields (set from Python only).
    """

    type: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple = ()
    optional: bool = False
    tunable: bool = False
    help: str = ""
    flag: str | None = None
    metavar: str | None = None
    shared: bool = False
    expose: bool = True
    enum: type | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ConfigError(f"option type must be one of {', '.join(TYPES)}; got {self.type!r}")
        if isinstance(self.choices, type) and issubclass(self.choices, Enum):
            object.__setattr__(self, "enum", self.choices)
            object.__setattr__(self, "choices", tuple(m.value for m in self.choices))

    def describe(self) -> str:
        """What is expected, in words: ``a number in [0, 1)``, ``one of: sgd, adam``, ..."""
        if self.type == "choice":
            text = "one of: " + ", ".join(str(c) for c in self.choices)
        elif self.type == "bool":
            text = "true or false"
        elif self.type in ("text", "texts"):
            text = ("a text" if self.type == "text" else "a list of texts") + (f" ({self.help})" if self.help else "")
        else:
            noun = "a number" if self.type == "number" else "an integer"
            if self.lo is not None and self.hi is not None:
                text = f"{noun} in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                text = f"{noun} {'>' if self.lo_open else '>='} {_num(self.lo)}"
            elif self.hi is not None:
                text = f"{noun} {'<' if self.hi_open else '<='} {_num(self.hi)}"
            else:
                text = noun
        return text + (" or null" if self.optional else "")

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (plain JSON, or the field's Python type) is acceptable as it is."""
        if value is None:
            return self.optional
        if isinstance(value, Enum):
            value = value.value
        if self.type == "bool":
            return isinstance(value, bool)
        if self.type == "text":
            return isinstance(value, str) and bool(value.strip())
        if self.type == "texts":
            return isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value)
        if self.type == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "integer" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return False
        return not (self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)))

    def has_type(self, value: Any) -> bool:
        """Whether ``value`` is of this field's type, bounds aside (a config's own checks judge those)."""
        if value is None or self.type in ("bool", "text", "texts", "choice"):
            return self.accepts(value)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            self.type == "number" or isinstance(value, int))

    def coerce(self, value: Any) -> Any:
        """An accepted value in its field's Python type (integers given for a number become floats,
        a choice of an Enum its member, a list of texts a tuple)."""
        if value is None:
            return None
        if self.type == "number":
            return float(value)
        if self.type == "texts":
            return tuple(value)
        if self.enum is not None and not isinstance(value, Enum):
            return self.enum(value)
        return value

    def to_json(self, value: Any) -> Any:
        """The plain JSON form of a value of this field."""
        if isinstance(value, Enum):
            return value.value
        return list(value) if isinstance(value, tuple) else value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def opt(default: Any = REQUIRED, type: str = "number", **kwargs) -> Any:
    """A dataclass field whose metadata holds an :class:`Opt` (``default=REQUIRED``: must be given)."""
    return field(default=default, metadata={"opt": Opt(type, **kwargs)})


@dataclass(frozen=True)
class Nested:
    """A config inside a config: its fields join the flat namespace as ``prefix + name``.

    ``expose`` (field names) limits which of them are offered to users; the rest keep the nested
    default's values.
    """

    cls: type
    prefix: str = ""
    expose: tuple[str, ...] | None = None


def nested(cls: type, prefix: str = "", *, expose: tuple[str, ...] | None = None, **defaults) -> Any:
    """A field holding a ``cls`` config, by default ``cls(**defaults)``."""
    return field(default_factory=lambda: cls(**defaults), metadata={"nested": Nested(cls, prefix, expose)})


@dataclass(frozen=True)
class FlatField:
    """One user-settable option: its flat ``name``, the attribute ``path`` to it, its declaration and default."""

    name: str
    path: tuple[str, ...]
    opt: Opt
    default: Any

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def flag(self) -> str:
        return "--" + (self.opt.flag or self.name.replace("_", "-"))


def is_options(cls: Any) -> bool:
    """Whether ``cls`` (a type or an instance) is a config declared with :func:`opt` / :func:`nested`."""
    return is_dataclass(cls) and any("opt" in f.metadata or "nested" in f.metadata for f in fields(cls))


def _default_of(f) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return REQUIRED


def _walk(cls: type, default: Any, prefix: str, path: tuple[str, ...], expose) -> Iterator[FlatField]:
    for f in fields(cls):
        value = getattr(default, f.name) if default is not None else _default_of(f)
        if "nested" in f.metadata:
            inner: Nested = f.metadata["nested"]
            if expose is None or f.name in expose:
                yield from _walk(inner.cls, value, prefix + inner.prefix, path + (f.name,), inner.expose)
        elif "opt" in f.metadata:
            o: Opt = f.metadata["opt"]
            if o.expose and (expose is None or f.name in expose):
                yield FlatField(f.name if o.shared else prefix + f.name, path + (f.name,), o, value)


def flat_fields(cls: type) -> list[FlatField]:
    """Every option a user may set on ``cls``, nested configs flattened, each name once.

    Raises:
        ConfigError: two different options would share one flat name (a declaration bug).
    """
    seen: dict[str, FlatField] = {}
    for item in _walk(cls, None, "", (), None):
        first = seen.setdefault(item.name, item)
        if first is not item and not (item.opt.shared and first.opt == item.opt):
            raise ConfigError(f"{cls.__name__}: options {'.'.join(first.path)} and {'.'.join(item.path)} "
                              f"both flatten to {item.name!r}")
    return list(seen.values())


def build(cls: type, values: Mapping[str, Any], *, where: str = "") -> Any:
    """``cls`` from flat ``values`` (names as :func:`flat_fields` gives them; absent ones keep their defaults).

    Values are coerced to the field types (``"sgd"`` to ``OptimizerName.SGD``, lists to tuples); the
    config's own ``__post_init__`` validates them. Errors start with ``where``.

    Raises:
        ConfigError: an unknown name, a missing required field, or a value the config refuses.
    """
    known = {item.name for item in flat_fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    try:
        return _build(cls, None, values, "", None)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def _build(cls: type, base: Any, values: Mapping[str, Any], prefix: str, expose) -> Any:
    kwargs = {}
    for f in fields(cls):
        if "nested" in f.metadata:
            inner: Nested = f.metadata["nested"]
            start = getattr(base, f.name) if base is not None else _default_of(f)
            if expose is None or f.name in expose:
                kwargs[f.name] = _build(inner.cls, start, values, prefix + inner.prefix, inner.expose)
            elif base is not None:
                kwargs[f.name] = start
        elif "opt" in f.metadata:
            o: Opt = f.metadata["opt"]
            name = f.name if o.shared else prefix + f.name
            if o.expose and (expose is None or f.name in expose) and name in values:
                if not o.has_type(values[name]):  # bounds are left to the config, whose messages say more
                    raise ConfigError(f"{name} must be {o.describe()}; got {values[name]!r}")
                kwargs[f.name] = o.coerce(values[name])
            elif _default_of(f) is REQUIRED and base is None:
                raise ConfigError(f"{name} is required: {o.describe()}")
    return replace(base, **kwargs) if base is not None else cls(**kwargs)


def flatten(config: Any) -> dict[str, Any]:
    """The flat, plain-JSON values of every user-settable option of ``config`` (inverse of :func:`build`)."""
    out = {}
    for item in flat_fields(type(config)):
        value = config
        for name in item.path:
            value = getattr(value, name)
        out[item.name] = item.opt.to_json(value)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """Every declared field of ``config`` as plain JSON, nested configs as nested dicts."""
    out = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if "nested" in f.metadata:
            out[f.name] = to_dict(value)
        elif "opt" in f.metadata:
            out[f.name] = f.metadata["opt"].to_json(value)
    return out


def from_dict(cls: type, raw: Mapping[str, Any], *, where: str = "") -> Any:
    """The config :func:`to_dict` gave ``raw`` for; unknown keys and bad values are refused, naming the field."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}{cls.__name__} wants a mapping; got {type(raw).__name__}")
    declared = {f.name: f for f in fields(cls) if "opt" in f.metadata or "nested" in f.metadata}
    unknown = sorted(set(raw) - set(declared))
    if unknown:
        raise ConfigError(f"{where}unknown field {unknown[0]!r} of {cls.__name__}; known: {', '.join(sorted(declared))}")
    kwargs = {}
    for name, value in raw.items():
        f = declared[name]
        if "nested" in f.metadata:
            kwargs[name] = from_dict(f.metadata["nested"].cls, value, where=f"{where}{name}.")
            continue
        o: Opt = f.metadata["opt"]
        if not o.accepts(value):
            raise ConfigError(f"{where}{name} must be {o.describe()}; got {value!r}")
        kwargs[name] = o.coerce(value)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}{err}") from None


def check_declared(config: Any) -> None:
    """Validate every :func:`opt` field of ``config`` against its declaration (call from ``__post_init__``).

    Raises:
        ConfigError: ``"<field> must be <what it accepts>; got <value>"``.
    """
    for f in fields(config):
        o = f.metadata.get("opt")
        if o is not None:
            value = getattr(config, f.name)
            if not o.accepts(value):
                raise ConfigError(f"{f.name} must be {o.describe()}; got {value!r}")
