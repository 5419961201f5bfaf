"""run_recipe: stages run into a run folder, are measured, and resume after an interruption without redoing work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from modelpress.core.errors import ConfigError
from modelpress.recipes import parse_recipe, read_index, run_recipe
from modelpress.recipes import runner as runner_module


def _quiet(line: str) -> None:
    pass


def _weights(path) -> dict:
    return load_file(str(path))


@pytest.mark.slow
def test_a_run_keeps_every_stage_output_and_metrics(tiny_raw, tmp_path):
    result = run_recipe(parse_recipe(tiny_raw), tmp_path / "run", log=_quiet)
    index = read_index(tmp_path / "run")
    assert [e["status"] for e in index["stages"]] == ["done"] * 4
    assert [e["folder"] for e in index["stages"]] == ["stage_1_teacher", "stage_2_prune", "stage_3_quantize", "stage_4_encode"]
    for entry in index["stages"]:
        folder = tmp_path / "run" / entry["folder"]
        assert (folder / entry["output"]).is_file() and not list(folder.glob("*.ckpt*"))  # checkpoints go once done
        assert json.loads((folder / "metrics.json").read_text())["metrics"] == entry["metrics"]
    assert (tmp_path / "run" / "recipe.yaml").is_file()
    teacher, pruned, shared, encoded = (e["metrics"] for e in index["stages"])
    assert teacher["nonzero_params"] == teacher["params"]
    # 70% of every layer's weights removed (biases stay)
    assert all(abs(row["sparsity"] - 0.7) < 0.01 for row in pruned["layers"])
    assert all(row["bits"] <= 4 for row in shared["layers"])  # at most 16 shared values per layer
    assert encoded["bytes"] < shared["bytes"] / 4  # the .mpz file is far smaller than the .mpk
    assert encoded["accuracy"] == pytest.approx(shared["accuracy"])  # the file decodes to the same weights
    assert result.final == encoded
    assert 0.0 <= encoded["accuracy"] <= 1.0 and encoded["val_accuracy"] is not None


def _counting(monkeypatch, kind: str) -> list:
    calls = []
    original = runner_module.STAGE_RUNNERS[kind]

    def counted(*args, **kwargs):
        calls.append(kind)
        return original(*args, **kwargs)

    monkeypatch.setitem(runner_module.STAGE_RUNNERS, kind, counted)
    return calls


def test_interrupted_after_stage_1_resumes_without_redoing_it(tiny_raw, tmp_path, monkeypatch):
    """Kill the run as stage 2 starts, run again: stage 1 is not redone and the result equals an uninterrupted run."""
    recipe = parse_recipe(tiny_raw)
    reference = run_recipe(recipe, tmp_path / "reference", log=_quiet)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setitem(runner_module.STAGE_RUNNERS, "prune", interrupt)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, tmp_path / "run", log=_quiet)
    index = read_index(tmp_path / "run")
    assert [e["status"] for e in index["stages"]] == ["done", "running", "pending", "pending"]
    teacher_file = tmp_path / "run" / "stage_1_teacher" / "model.mpk"
    mtime = teacher_file.stat().st_mtime_ns

    trained = _counting(monkeypatch, "train")
    resumed = run_recipe(recipe, tmp_path / "run", log=_quiet)
    assert trained == [] and teacher_file.stat().st_mtime_ns == mtime
    assert [e["metrics"]["accuracy"] for e in resumed.stages] == [e["metrics"]["accuracy"] for e in reference.stages]
    for a, b in zip(_weights(tmp_path / "run" / "stage_3_quantize" / "model.mpk").items(),
                    _weights(tmp_path / "reference" / "stage_3_quantize" / "model.mpk").items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert (tmp_path / "run" / "stage_4_encode" / "model.mpz").read_bytes() == \
        (tmp_path / "reference" / "stage_4_encode" / "model.mpz").read_bytes()


class _StopAfter:
    """A training callback that interrupts a run after a given epoch, as Ctrl-C would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch, model, metrics):
        if epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_inside_a_stage_continues_from_its_checkpoint(tiny_raw, tmp_path):
    """Stopped after epoch 2 of 3 of the teacher: the rerun trains only epoch 3 and ends bit-identical."""
    tiny_raw["stages"] = tiny_raw["stages"][:2]
    recipe = parse_recipe(tiny_raw)
    run_recipe(recipe, tmp_path / "reference", log=_quiet)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "run", log=_quiet, callbacks=(_StopAfter(2),))
    checkpoint = tmp_path / "run" / "stage_1_teacher" / "train.ckpt"
    assert checkpoint.is_file()
    epochs_seen = []

    class Count:
        def on_epoch_start(self, epoch, model):
            epochs_seen.append(epoch)

    run_recipe(recipe, tmp_path / "run", log=_quiet, callbacks=(Count(),))
    assert epochs_seen[0] == 2  # the teacher resumed at its third epoch (prune's retraining follows from 0)
    for stage in ("stage_1_teacher", "stage_2_prune"):
        ours, theirs = _weights(tmp_path / "run" / stage / "model.mpk"), _weights(tmp_path / "reference" / stage / "model.mpk")
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_changed_finished_stage_is_refused_and_an_added_stage_runs(tiny_raw, tmp_path, monkeypatch):
    tiny_raw["stages"] = tiny_raw["stages"][:2]
    run_recipe(parse_recipe(tiny_raw), tmp_path / "run", log=_quiet)
    changed = json.loads(json.dumps(tiny_raw))
    changed["stages"][1]["sparsity"] = 0.5
    with pytest.raises(ConfigError, match=r"finished stage 2 'prune' of a different recipe \(sparsity: 0\.7 -> 0\.5\)"):
        run_recipe(parse_recipe(changed), tmp_path / "run", log=_quiet)
    changed["stages"][0]["epochs"] = 4  # the teacher changes: so does the hash of everything after it
    with pytest.raises(ConfigError, match="finished stage 1 'teacher'"):
        run_recipe(parse_recipe(changed), tmp_path / "run", log=_quiet)
    trained = _counting(monkeypatch, "train")
    pruned = _counting(monkeypatch, "prune")
    tiny_raw["stages"].append({"kind": "encode"})
    result = run_recipe(parse_recipe(tiny_raw), tmp_path / "run", log=_quiet)
    assert trained == [] and pruned == [] and result.stages[-1]["output"] == "model.mpz"


def test_a_deleted_stage_folder_is_redone(tiny_raw, tmp_path, monkeypatch):
    import shutil

    tiny_raw["stages"] = tiny_raw["stages"][:2]
    run_recipe(parse_recipe(tiny_raw), tmp_path / "run", log=_quiet)
    shutil.rmtree(tmp_path / "run" / "stage_2_prune")
    pruned = _counting(monkeypatch, "prune")
    run_recipe(parse_recipe(tiny_raw), tmp_path / "run", log=_quiet)
    assert pruned == ["prune"]


def test_stage_cache_shares_identical_stages_between_runs(tiny_raw, tmp_path, monkeypatch):
    tiny_raw["stages"] = tiny_raw["stages"][:2]
    run_recipe(parse_recipe(tiny_raw), tmp_path / "a", log=_quiet, cache_dir=tmp_path / "cache")
    trained = _counting(monkeypatch, "train")
    tiny_raw["stages"][1]["sparsity"] = 0.5
    result = run_recipe(parse_recipe(tiny_raw), tmp_path / "b", log=_quiet, cache_dir=tmp_path / "cache")
    assert trained == []  # the teacher came from the cache
    assert (tmp_path / "b" / "stage_1_teacher" / "model.mpk").read_bytes() == (tmp_path / "a" / "stage_1_teacher" / "model.mpk").read_bytes()
    assert abs(result.stages[1]["metrics"]["layers"][0]["sparsity"] - 0.5) < 0.01


def test_an_encode_stage_in_float16_writes_a_smaller_file_of_the_rounded_model(tiny_raw, tmp_path):
    from modelpress.encode import load_compressed, read_manifest

    plain = run_recipe(parse_recipe(tiny_raw), tmp_path / "a", log=_quiet, cache_dir=tmp_path / "cache")
    tiny_raw["stages"][-1]["float16"] = True
    half = run_recipe(parse_recipe(tiny_raw), tmp_path / "b", log=_quiet, cache_dir=tmp_path / "cache")
    path = tmp_path / "b" / "stage_4_encode" / "model.mpz"
    manifest, _ = read_manifest(path)
    assert {e.get("dtype", e.get("centroid_dtype")) for e in manifest["tensors"]} == {"float16"}
    assert plain.final["bytes"] - half.final["bytes"] >= 2 * (48 + 10)  # the biases alone, 2 bytes each
    assert all(torch.equal(t, t.half().float()) for t in load_compressed(path)[0].state_dict().values())
    assert abs(half.final["accuracy"] - plain.final["accuracy"]) <= 0.02


def test_distill_structured_prune_factorize_and_onnx_stages(tmp_path):
    """The other stage kinds run end to end on the same API the CLI uses."""
    raw = {"data": {"name": "digits", "limit": 240, "limit_test": 120}, "measure": {"latency": True},
           "stages": [
               {"kind": "train", "name": "teacher", "model": "mlp:64", "epochs": 2, "lr": 0.1},
               {"kind": "distill", "name": "student", "student": "mlp:24", "epochs": 2, "temperature": 3.0},
               {"kind": "prune", "mode": "structured", "sparsity": 0.5, "retrain_epochs": 1},
               {"kind": "factorize", "input": "teacher", "method": "svd", "energy": 0.8, "finetune_epochs": 1},
               {"kind": "int8", "input": "student", "mode": "dynamic"},
               {"kind": "export", "input": "prune"},
           ]}
    index = {e["name"]: e for e in run_recipe(parse_recipe(raw), tmp_path / "run", log=_quiet).stages}
    assert index["student"]["metrics"]["params"] < index["teacher"]["metrics"]["params"]
    assert index["prune"]["metrics"]["params"] < index["student"]["metrics"]["params"]  # channels really removed
    assert index["factorize"]["metrics"]["flops"] < index["teacher"]["metrics"]["flops"]
    assert index["int8"]["output"] == "model.int8.onnx" and index["int8"]["info"]["int8_weight_tensors"] >= 1
    assert index["int8"]["metrics"]["params"] == index["student"]["metrics"]["params"]  # counted on the float model
    assert index["export"]["metrics"]["accuracy"] == pytest.approx(index["prune"]["metrics"]["accuracy"], abs=0.01)
    assert index["export"]["metrics"]["latency_ms_b1"] > 0


def test_tree_stages_from_an_ensemble_and_from_an_earlier_network(tmp_path):
    """ensemble -> tree: a born-again tree saved as JSON, measured like any stage (nodes for params)."""
    from modelpress.tabular.trees import load_tree

    raw = {"data": {"name": "digits", "limit": 300, "limit_test": 120}, "measure": {"latency": True},
           "stages": [{"kind": "tree", "name": "forest-tree", "n_synthetic": 400, "max_leaf_nodes": 24},
                      {"kind": "train", "name": "net", "model": "mlp:32", "epochs": 2, "lr": 0.1},
                      {"kind": "tree", "name": "net-tree", "teacher": "net", "n_synthetic": 400, "max_depth": 6}]}
    index = {e["name"]: e for e in run_recipe(parse_recipe(raw), tmp_path / "run", log=_quiet).stages}
    forest = index["forest-tree"]
    tree = load_tree(tmp_path / "run" / forest["folder"] / "tree.json")
    assert forest["metrics"]["nodes"] == forest["info"]["tree_nodes"] == tree.node_count <= 2 * 24 - 1
    assert forest["info"]["ensemble_nodes"] > 10 * forest["metrics"]["nodes"]
    assert 0.0 <= forest["info"]["fidelity"] <= 1.0 and forest["metrics"]["latency_ms_b256"] > 0
    assert index["net-tree"]["info"]["teacher"] == "net" and "ensemble_nodes" not in index["net-tree"]["info"]
    assert index["net-tree"]["metrics"]["accuracy"] > 0.2  # far above chance (0.1): it learned the network's labels
    with pytest.raises(ConfigError, match="writes a file no later stage can read as a model"):
        parse_recipe(raw | {"stages": raw["stages"] + [{"kind": "prune", "input": "net-tree"}]})


def test_a_prune_stage_can_spread_its_weights_by_sensitivity(tmp_path):
    raw = {"data": {"name": "digits", "limit": 240, "limit_test": 120},
           "stages": [{"kind": "train", "name": "net", "model": "mlp:32", "epochs": 2, "lr": 0.1},
                      {"kind": "prune", "criterion": "sensitivity", "sparsity": 0.8, "retrain_epochs": 1}]}
    index = {e["name"]: e for e in run_recipe(parse_recipe(raw), tmp_path / "run", log=_quiet).stages}
    allocation = index["prune"]["info"]["sparsity_per_layer"]
    layers = {row["layer"]: row for row in index["prune"]["metrics"]["layers"]}
    assert set(allocation) == {"net.1", "net.3"}
    assert len({round(s, 2) for s in allocation.values()}) > 1  # not one sparsity for all
    kept = sum(row["weights"] * (1 - row["sparsity"]) for row in layers.values())
    assert kept <= 0.2 * sum(row["weights"] for row in layers.values()) + 1
