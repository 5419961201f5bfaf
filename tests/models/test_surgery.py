"""Recorded architecture changes: a changed model saves and loads back through the spec alone."""

import pytest
import torch

from modelpress.core.errors import ConfigError, ModelFileError
from modelpress.models import build_model, load_model, save_model
from modelpress.models import surgery
from modelpress.models.surgery import record_surgery, replace_module


def _narrow_first_layer(model, name, width):
    """A stand-in structural change: the named Linear and the one after it get ``width`` units."""
    first = model.get_submodule(name)
    replace_module(model, name, torch.nn.Linear(first.in_features, width))
    parent, _, index = name.rpartition(".")
    following = model.get_submodule(f"{parent}.{int(index) + 2}")
    replace_module(model, f"{parent}.{int(index) + 2}", torch.nn.Linear(width, following.out_features))


def test_a_recorded_change_is_replayed_on_load(tmp_path, monkeypatch):
    monkeypatch.setitem(surgery.REPLAYS, "narrow", "unused:unused")
    monkeypatch.setattr(surgery, "_replay_function", lambda kind: _narrow_first_layer)
    model = build_model("mlp:32-16", (8,), 3)
    _narrow_first_layer(model, "net.1", 5)
    record_surgery(model, "narrow", name="net.1", width=5)
    assert model.modelpress_spec.surgery == ({"kind": "narrow", "name": "net.1", "width": 5},)
    path = save_model(model, tmp_path / "m.mpk")
    loaded = load_model(path)
    assert loaded.net[1].out_features == 5 and loaded.modelpress_spec == model.modelpress_spec
    x = torch.randn(4, 8)
    assert torch.equal(loaded(x), model.eval()(x))


def test_unknown_or_unserialisable_changes_are_refused(tmp_path):
    model = build_model("mlp:4", (3,), 2)
    with pytest.raises(ConfigError, match="unknown architecture change 'melt'"):
        record_surgery(model, "melt")
    with pytest.raises(ConfigError, match="JSON"):
        record_surgery(model, "svd", layer=object())
    spec = model.modelpress_spec
    from dataclasses import replace

    model.modelpress_spec = replace(spec, surgery=({"kind": "from-the-future"},))
    path = save_model(model, tmp_path / "future.mpk")
    with pytest.raises(ModelFileError, match="upgrade"):
        load_model(path)


def test_unchanged_models_write_no_surgery_field():
    assert "surgery" not in build_model("mlp:4", (3,), 2).modelpress_spec.to_json()
    with pytest.raises(ConfigError, match="no submodule"):
        replace_module(build_model("mlp:4", (3,), 2), "net.9", torch.nn.Identity())


def test_a_model_saved_while_pruned_loads_with_its_masks(tmp_path):
    from modelpress.prune import PruneConfig, prune_

    model = build_model("mlp:16", (8,), 3)
    prune_(model, PruneConfig(sparsity=0.5))
    loaded = load_model(save_model(model, tmp_path / "p.mpk"))
    x = torch.randn(4, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert torch.equal(loaded.net[1].weight_mask, model.net[1].weight_mask)  # the masks still hold: retraining keeps them
