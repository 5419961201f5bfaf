"""One API suite over everything registered, as scikit-learn's ``parametrize_with_checks`` runs one suite
over every estimator: each check runs on every declared config of the package and every zoo model, so a
new method or model is checked the moment it exists, without a test of its own having to remember.

Configs are found by importing every module of ``modelpress`` (those whose optional dependency is
missing are skipped) and keeping the dataclasses declared with :func:`modelpress.core.options.opt`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

import pytest
import torch

import modelpress
from modelpress.core.errors import ConfigError
from modelpress.core.options import build, flat_fields, flatten, from_dict, is_options, to_dict
from modelpress.models import build_model, load_model, save_model
from modelpress.models.zoo import MODELS


def _declared_configs() -> list[type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(modelpress.__path__, "modelpress."):
        if info.name.endswith("__main__"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra (transformers, ...) that this machine lacks
            continue
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and is_options(value):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[k] for k in sorted(found)]


CONFIGS = _declared_configs()


def _needs_no_input(cls: type) -> bool:
    return not any(item.required for item in flat_fields(cls))


def _example(cls: type):
    """The config at its defaults, or its ``example()`` where the defaults alone break a cross-field rule."""
    try:
        return cls()
    except ConfigError:
        if hasattr(cls, "example"):
            return cls.example()
        pytest.skip(f"{cls.__name__}'s defaults break one of its rules and it has no example()")


def test_the_suite_sees_the_package_configs():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"TrainConfig"} <= names, names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_declaration_is_consistent(cls):
    """Every flat option has one name, and its declared default is a value its declaration accepts."""
    items = flat_fields(cls)
    assert len({item.name for item in items}) == len(items)
    for item in items:
        if not item.required:
            assert item.opt.accepts(item.default), f"{cls.__name__}.{item.name}: default {item.default!r} " \
                                                    f"is not {item.opt.describe()}"


@pytest.mark.parametrize("cls", [c for c in CONFIGS if _needs_no_input(c)], ids=lambda c: c.__name__)
def test_config_round_trips(cls):
    """The defaults config survives to_dict -> from_dict and flatten -> build unchanged."""
    config = _example(cls)
    assert from_dict(cls, to_dict(config)) == config
    assert build(cls, flatten(config)) == config


def _bad_values(item):
    o = item.opt
    if o.type in ("number", "integer"):
        if o.lo is not None:
            yield o.lo - 1
        if o.hi is not None:
            yield o.hi + 1
        yield "not a number"
    elif o.type == "choice":
        yield "no-such-choice"
    elif o.type == "bool":
        yield "yes"


@pytest.mark.parametrize("cls", [c for c in CONFIGS if _needs_no_input(c)], ids=lambda c: c.__name__)
def test_bad_values_are_refused_naming_the_field(cls):
    """A value outside an option's declaration is a ConfigError whose message names the option."""
    good = flatten(_example(cls))
    for item in flat_fields(cls):
        for bad in _bad_values(item):
            with pytest.raises(ConfigError) as err:
                build(cls, good | {item.name: bad})
            assert item.path[-1] in str(err.value), (item.name, bad, str(err.value))


@pytest.mark.parametrize("cls", [c for c in CONFIGS if _needs_no_input(c)], ids=lambda c: c.__name__)
def test_unknown_options_are_refused(cls):
    with pytest.raises(ConfigError, match="unknown option 'no_such_option'"):
        build(cls, {"no_such_option": 1})
    with pytest.raises(ConfigError, match="unknown field 'no_such_option'"):
        from_dict(cls, {"no_such_option": 1})


@pytest.mark.parametrize("cls", [c for c in CONFIGS if _needs_no_input(c)], ids=lambda c: c.__name__)
def test_configs_are_frozen(cls):
    config = _example(cls)
    first = fields(config)[0].name
    with pytest.raises(Exception):
        setattr(config, first, getattr(config, first))


@pytest.mark.parametrize("cls", [c for c in CONFIGS if not _needs_no_input(c)], ids=lambda c: c.__name__)
def test_a_missing_required_option_is_named(cls):
    required = [item.name for item in flat_fields(cls) if item.required]
    with pytest.raises(ConfigError) as err:
        build(cls, {})
    assert any(name in str(err.value) for name in required), str(err.value)


# ----- every zoo model ----------------------------------------------------------------------------------------

def _zoo_cases():
    images, sequences = (1, 28, 28), (1, 40)
    small = {"mlp": "mlp:16", "cnn": "cnn:4-8", "shallow_cnn": "shallow_cnn:4-16", "vgg_mini": "vgg_mini:4",
             "lstm": "lstm:8", "gru": "gru:8", "cnn1d": "cnn1d:4-8"}
    for name in MODELS.names():
        shape = sequences if name in ("lstm", "gru", "cnn1d") else images
        yield pytest.param(small.get(name, name), shape, id=name)


@pytest.mark.parametrize("arch, shape", list(_zoo_cases()))
def test_every_zoo_model_builds_runs_and_round_trips(arch, shape, tmp_path):
    """Built, run on a batch (finite logits of the right shape), saved and loaded back to the same outputs."""
    torch.manual_seed(0)
    model = build_model(arch, shape, 10).eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    path = save_model(model, tmp_path / "m.mpk")
    loaded = load_model(path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), logits)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
