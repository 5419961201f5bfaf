"""Deep Compression end to end on tiny data: the file on disk is what the result reports."""

from dataclasses import replace

import pytest
import torch

from modelpress.core.errors import ConfigError
from modelpress.distill import DistillConfig
from modelpress.encode import load_compressed, read_manifest
from modelpress.encode.report import budget_rows, byte_budget
from modelpress.models import build_model
from modelpress.pipeline import DeepCompressionConfig, deep_compress
from modelpress.prune import PruneConfig
from modelpress.quantize import QuantizeConfig
from modelpress.train import TrainConfig, train


def trained_mlp(splits, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp:64-32", splits.input_shape, splits.num_classes)
    train(model, splits, TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=seed), progress=False)
    return model


def test_three_stages_write_a_file_whose_size_and_accuracy_are_reported(tiny_splits, tmp_path):
    splits = tiny_splits
    model = trained_mlp(splits)
    config = DeepCompressionConfig(prune=PruneConfig(sparsity=0.8), prune_steps=2,
                                   prune_retrain=TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0),
                                   quantize=QuantizeConfig(bits_fc=4),
                                   quantize_retrain=TrainConfig(epochs=1, batch_size=32, lr=0.001, schedule="constant", seed=0))
    result = deep_compress(model, splits, config, tmp_path / "m.mpz", progress=False)

    assert result.compressed["bytes"] == (tmp_path / "m.mpz").stat().st_size
    assert result.reference["accuracy"] > 0.8 and result.compressed["accuracy"] > 0.8
    assert result.pruned["rate_dense_over_kept"] > 3  # 80% of the weights gone, biases kept
    summary = result.summary_rows()
    assert summary[-1]["rate"] == pytest.approx(result.reference["dense_bytes"] / result.compressed["bytes"])
    assert summary[-1]["rate"] > 8

    # every weight layer is in the per-layer table, with at most 2^4 shared values
    assert [row["layer"] for row in result.layers] == [f"{name}.weight" for name in result.histograms]
    for weights, centroids in result.histograms.values():
        assert centroids.size <= 16 and weights.size > centroids.size

    # the byte budget adds up to the file, and no stream beats its entropy
    budget = byte_budget(result.stream_stats, result.compressed["bytes"])
    assert budget_rows(budget)[-1]["bytes"] == result.compressed["bytes"] and budget["overhead"] > 0
    for stream in ("labels", "indices"):
        assert budget[f"{stream}_entropy"] <= budget[f"{stream}_bytes"] == min(budget[f"{stream}_huffman"], budget[f"{stream}_ans"])

    # the file loads back into the very weights the pipeline ended with
    loaded, _, _ = load_compressed(tmp_path / "m.mpz")
    for (name, a), (_, b) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert torch.equal(a, b), name
    distinct = torch.unique(loaded.state_dict()[result.layers[0]["layer"]])
    assert len(distinct) <= 17  # 16 centroids and the pruned zero


def test_threshold_pruning_grows_step_by_step_and_bad_steps_are_refused(tiny_splits, tmp_path):
    splits = tiny_splits
    one_shot = deep_compress(trained_mlp(splits), splits,
                             DeepCompressionConfig(prune=PruneConfig(criterion="threshold", quality=1.0), prune_retrain=None,
                                                   quantize_retrain=None), tmp_path / "a.mpz", progress=False)
    kept = one_shot.pruned["kept_params"]
    assert 0.2 < kept / one_shot.reference["params"] < 0.7  # |w| <= 1 std removes about 2/3 of a bell curve
    with pytest.raises(ConfigError, match="prune_steps"):
        DeepCompressionConfig(prune_steps=0)


def test_self_distillation_learns_from_the_uncompressed_model(tiny_splits, tmp_path):
    model = trained_mlp(tiny_splits)
    reference_logits = model(tiny_splits.x_test).detach()
    config = DeepCompressionConfig(prune=PruneConfig(sparsity=0.7),
                                   prune_retrain=TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0),
                                   quantize_retrain=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-4, seed=0),
                                   self_distill=DistillConfig(temperature=2.0, alpha=0.9))
    result = deep_compress(model, tiny_splits, config, tmp_path / "kd.mpz", progress=False)
    assert result.compressed["accuracy"] > 0.8
    agreement = (result.loaded_model(tiny_splits.x_test).argmax(1) == reference_logits.argmax(1)).float().mean()
    assert agreement > 0.9


def test_an_ensemble_of_trainings_teaches_the_retraining(tiny_splits):
    import copy

    from modelpress.distill import DistillationObjective
    from modelpress.distill.teachers import EnsembleTeacher
    from modelpress.pipeline import prune_and_retrain

    model, other = trained_mlp(tiny_splits), trained_mlp(tiny_splits, seed=1)
    config = DeepCompressionConfig(prune=PruneConfig(sparsity=0.7),
                                   prune_retrain=TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0, restore_best=False),
                                   self_distill=DistillConfig(temperature=2.0, alpha=1.0))
    before = [copy.deepcopy(model), copy.deepcopy(other)]
    alone = prune_and_retrain(copy.deepcopy(model), tiny_splits, config)
    # the model being pruned is itself a member: its copy is taken before pruning starts
    taught = prune_and_retrain(model, tiny_splits, config, teacher=[model, other])
    by_hand = prune_and_retrain(copy.deepcopy(before[0]), tiny_splits, config,
                                objective=DistillationObjective(EnsembleTeacher(before), config.self_distill))
    for name, value in taught.state_dict().items():
        assert torch.equal(value, by_hand.state_dict()[name]), name
    assert not all(torch.equal(v, alone.state_dict()[k]) for k, v in taught.state_dict().items())
    assert all(torch.equal(v, before[1].state_dict()[k]) for k, v in other.state_dict().items())  # teachers untouched
    with pytest.raises(ConfigError, match="teacher ensemble is empty"):
        prune_and_retrain(other, tiny_splits, config, teacher=[])


def test_float16_halves_biases_and_centroids_and_the_file_holds_the_rounded_model(tiny_splits, tmp_path):
    import copy

    model = trained_mlp(tiny_splits)
    config = DeepCompressionConfig(prune=PruneConfig(sparsity=0.8), prune_retrain=None, quantize_retrain=None)
    full = deep_compress(copy.deepcopy(model), tiny_splits, config, tmp_path / "fp32.mpz", progress=False)
    half = deep_compress(model, tiny_splits, replace(config, float16=True), tmp_path / "fp16.mpz", progress=False)
    biases = 64 + 32 + tiny_splits.num_classes
    centroids = sum(e["centroids"] for e in read_manifest(tmp_path / "fp16.mpz")[0]["tensors"] if e["kind"] == "shared")
    assert full.compressed["bytes"] - half.compressed["bytes"] >= 2 * (biases + centroids) - 24
    for name, tensor in half.loaded_model.state_dict().items():
        assert torch.equal(tensor, tensor.half().float()), name
        if name.endswith("bias"):
            assert not torch.equal(tensor, full.loaded_model.state_dict()[name]), name
    assert abs(half.compressed["accuracy"] - full.compressed["accuracy"]) < 0.02


def test_bad_index_bits_are_refused_before_any_training():
    with pytest.raises(ConfigError, match=r"index_bits_fc must be in \[1, 16\]; got 0"):
        DeepCompressionConfig(index_bits_fc=0)
    with pytest.raises(ConfigError, match=r"index_bits_conv must be in \[1, 16\]; got 40"):
        DeepCompressionConfig(index_bits_conv=40)
    with pytest.raises(ConfigError, match=r"layer_sparsity\['net.1'\] must be in \[0, 1\)"):
        PruneConfig(layer_sparsity={"net.1": 1.0})


def test_gradual_pruning_reaches_every_layer_target_inside_one_retraining_run(tiny_splits, tmp_path):
    from modelpress.pipeline.gradual import ScaledGradualPruning

    model = trained_mlp(tiny_splits)
    targets = {"net.1": 0.9, "net.3": 0.8, "net.5": 0.5}
    config = DeepCompressionConfig(prune=PruneConfig(sparsity=0.0, layer_sparsity=targets), gradual=0.5,
                                   prune_retrain=TrainConfig(epochs=4, batch_size=32, lr=0.01, seed=0),
                                   quantize=QuantizeConfig(bits_fc=4),
                                   quantize_retrain=TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=1e-4, seed=0),
                                   self_distill=DistillConfig(temperature=2.0, alpha=0.9))
    result = deep_compress(model, tiny_splits, config, tmp_path / "g.mpz", progress=False)
    for name, target in targets.items():
        weight = result.loaded_model.get_submodule(name).weight
        assert abs(float((weight == 0).float().mean()) - target) < 0.01, name
    assert result.compressed["accuracy"] > 0.8

    # the ramp: nothing pruned at the start, cubic in between, the full targets from end_step on
    ramp = ScaledGradualPruning(PruneConfig(layer_sparsity=targets), end_step=100, every=10)
    assert ramp.fraction_at(0) == 0 and ramp.fraction_at(100) == ramp.fraction_at(400) == 1
    assert ramp.fraction_at(50) == pytest.approx(1 - 0.5**3)
    with pytest.raises(ConfigError, match="gradual"):
        DeepCompressionConfig(gradual=1.5)
    with pytest.raises(ConfigError, match="prune_retrain"):
        DeepCompressionConfig(gradual=0.5, prune_retrain=None)
