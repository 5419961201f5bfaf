"""Deep mutual learning / codistillation: the pull term, the objective's burn-in, the cohort, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.distill.mutual import Cohort, MutualConfig, MutualObjective, mutual_learning, mutual_pull
from modelpress.models import build_model
from modelpress.train import TrainConfig, load_checkpoint


def _mlp(splits, seed, hidden="16", classes=None):
    torch.manual_seed(seed)
    return build_model(f"mlp:{hidden}", splits.input_shape, classes or splits.num_classes)


def _config(epochs=2, restore_best=True, **options):
    return MutualConfig(train=TrainConfig(epochs=epochs, batch_size=32, seed=3, restore_best=restore_best), **options)


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1).mean()


@pytest.mark.parametrize("field,value", [("peers", 1), ("peers", 2.0), ("burn_in_steps", -1), ("temperature", 0.0),
                                         ("weight", -0.5), ("weight", float("nan")), ("train", {"epochs": 1})])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be"):
        MutualConfig(**{field: value})


def test_pull_is_the_temperature_scaled_kl_to_the_mean_of_the_others():
    torch.manual_seed(0)
    z, t = torch.randn(3, 5, 4) * 2, 2.0
    p = F.softmax(z / t, -1)  # (3, 5, 4)
    expected = sum(_kl((p.sum(0) - p[i]) / 2, p[i]) for i in range(3)) * t**2
    torch.testing.assert_close(mutual_pull(z, t), expected)
    assert mutual_pull(z[[0, 0, 0]], t).abs() < 1e-6  # peers that agree feel no pull
    with pytest.raises(ShapeError, match="at least 2 peers"):
        mutual_pull(z[:1])


def test_pull_gradient_treats_the_others_as_constants():
    torch.manual_seed(1)
    z, t = (torch.randn(3, 6, 5) * 2).requires_grad_(), 3.0
    mutual_pull(z, t).backward()
    q = F.softmax(z.detach() / t, -1)  # (3, 6, 5)
    others = torch.stack([(q.sum(0) - q[i]) / 2 for i in range(3)])
    # d/dz_i of T^2 KL(pbar || q_i) with pbar constant is T (q_i - pbar_{-i}) / B, and nothing else
    torch.testing.assert_close(z.grad, t * (q - others) / 6)

    # a peer already at the others' average gets no gradient from the pull
    z = torch.randn(3, 6, 5)
    z[0] = torch.log((F.softmax(z[1], -1) + F.softmax(z[2], -1)) / 2)
    z.requires_grad_()
    mutual_pull(z, 1.0).backward()
    assert z.grad[0].abs().max() < 1e-6 and z.grad[1].abs().max() > 1e-3


def test_cohort_forward_is_the_log_mean_probability(tiny_splits):
    peers = [_mlp(tiny_splits, s) for s in (0, 1, 2)]
    cohort = Cohort(peers)
    x = tiny_splits.x_train[:7]
    expected = torch.stack([F.softmax(p(x), -1) for p in peers]).mean(0)
    torch.testing.assert_close(cohort(x).exp(), expected)
    assert list(cohort.peers) == peers and cohort.member_logits(x).shape == (3, 7, 4)


def test_objective_is_plain_cross_entropy_until_burn_in_ends(tiny_splits):
    cohort = Cohort([_mlp(tiny_splits, 0), _mlp(tiny_splits, 1)])
    objective = MutualObjective(_config(weight=0.7, temperature=2.0, burn_in_steps=2))
    x, y = tiny_splits.x_train[:16], tiny_splits.y_train[:16]
    z = cohort.member_logits(x)
    ce = F.cross_entropy(z[0], y) + F.cross_entropy(z[1], y)
    for _ in range(2):
        torch.testing.assert_close(objective(cohort, x, y, None), ce)
    pull = mutual_pull(z, 2.0)
    assert pull > 1e-3
    torch.testing.assert_close(objective(cohort, x, y, None), ce + 0.7 * pull)
    assert int(objective.step) == 3 and "step" in objective.state_dict()


def _disagreement(peers, x):
    with torch.no_grad():
        p, q = (F.softmax(m(x), -1) for m in peers)
    return (_kl(p, q) + _kl(q, p)).item()


def test_mutual_learning_makes_peers_agree_more_than_independent_training(tiny_splits):
    results = {}
    for weight in (0.0, 2.0):
        peers = [_mlp(tiny_splits, 0), _mlp(tiny_splits, 1, hidden="8")]  # architectures may differ
        # the last epoch, not the best: the blobs are separable, so "best" is often the first epoch
        result = mutual_learning(peers, tiny_splits, _config(3, restore_best=False, weight=weight), progress=False)
        assert result.peers == peers and not any(p.training for p in peers)
        assert result.history.epochs_run == 3 and result.history.best_val_accuracy > 0.9
        results[weight] = _disagreement(peers, tiny_splits.x_test)
    assert results[2.0] < 0.5 * results[0.0], results


class _CrashAfter:
    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, epoch, model, metrics):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt


def test_resume_inside_burn_in_gives_the_same_weights(tiny_splits, tmp_path, monkeypatch):
    config = _config(3, burn_in_steps=12)  # 8 steps per epoch: burn-in ends inside epoch 2
    full = mutual_learning([_mlp(tiny_splits, 0), _mlp(tiny_splits, 1)], tiny_splits, config, progress=False)

    import modelpress.distill.mutual as mutual

    ckpt, real_train = tmp_path / "cohort.ckpt", mutual.train
    monkeypatch.setattr(mutual, "train", lambda *a, **k: real_train(*a, callbacks=[_CrashAfter(1)], **k))
    with pytest.raises(KeyboardInterrupt):
        mutual_learning([_mlp(tiny_splits, 0), _mlp(tiny_splits, 1)], tiny_splits, config, checkpoint_path=ckpt, progress=False)
    monkeypatch.setattr(mutual, "train", real_train)
    assert int(load_checkpoint(ckpt)["objective"]["step"]) == 8
    resumed = mutual_learning([_mlp(tiny_splits, 5), _mlp(tiny_splits, 6)], tiny_splits, config,
                              checkpoint_path=ckpt, resume=True, progress=False)
    assert resumed.history.resumed_from_epoch == 1
    for (name, a), b in zip(full.cohort.state_dict().items(), resumed.cohort.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_builder_makes_config_peers_differently_initialised_peers(tiny_splits):
    built = []

    def make():
        built.append(build_model("mlp:8", tiny_splits.input_shape, tiny_splits.num_classes))
        return built[-1]

    result = mutual_learning(make, tiny_splits, _config(1, peers=3), progress=False)
    assert result.peers == built and len(built) == 3
    first = [p.net[1].weight for p in built]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


def test_bad_cohorts_are_refused_with_a_clear_message(tiny_splits):
    one = _mlp(tiny_splits, 0)
    with pytest.raises(ConfigError, match="at least 2 peers; got 1"):
        mutual_learning([one], tiny_splits, _config())
    with pytest.raises(ConfigError, match="distinct modules"):
        mutual_learning([one, one], tiny_splits, _config())
    with pytest.raises(ConfigError, match="list of modules or a builder"):
        mutual_learning(one, tiny_splits, _config())
    with pytest.raises(ShapeError, match=r"peers predict \[4, 6\] classes"):
        mutual_learning([one, _mlp(tiny_splits, 1, classes=6)], tiny_splits, _config())
    with pytest.raises(ShapeError, match="data have 4"):
        mutual_learning([_mlp(tiny_splits, 1, classes=6), _mlp(tiny_splits, 2, classes=6)], tiny_splits, _config())
    tabular = build_model("mlp:8", (5,), tiny_splits.num_classes)
    with pytest.raises(ShapeError, match="peer 1 cannot take inputs of shape"):
        mutual_learning([one, tabular], tiny_splits, _config())
    assert math.isfinite(mutual_pull(torch.zeros(2, 1, 3)).item())
