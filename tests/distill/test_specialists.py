"""Specialists (Hinton, Vinyals & Dean 2015, Sec. 5): clustering, targets, prior correction, combination."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, DataError, ShapeError
from modelpress.data.base import DataSplits
from modelpress.distill.specialist_math import (
    combine_distributions,
    dustbin_logit_correction,
    enriched_indices,
    grouped_log_probs,
    remap_labels,
    specialist_log_targets,
)
from modelpress.distill.specialists import (
    SpecialistConfig,
    SpecialistEnsemble,
    confusable_clusters,
    init_from_generalist_,
    train_specialists,
)
from modelpress.models import build_model
from modelpress.train import TrainConfig, train

GROUPS = [[0, 3, 4], [1, 2, 5]]


def planted_probs(n=600, seed=0):
    """Predictions that confuse classes within GROUPS but never across them."""
    g = torch.Generator().manual_seed(seed)
    group = torch.randint(0, 2, (n,), generator=g)
    logits = torch.randn(n, 6, generator=g) * 0.5
    members = torch.tensor(GROUPS)[group]  # (n, 3)
    logits.scatter_add_(1, members, torch.full((n, 3), 3.0))
    pick = members.gather(1, torch.randint(0, 3, (n, 1), generator=g))
    logits.scatter_add_(1, pick, torch.full((n, 1), 1.5))
    return F.softmax(logits, 1)


class Fixed(nn.Module):
    """A model with the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_clusters_recover_planted_confusable_groups_and_are_seeded():
    probs = planted_probs()
    assert confusable_clusters(probs, 2) == GROUPS
    assert confusable_clusters(probs, 3, seed=5) == confusable_clusters(probs, 3, seed=5)
    assert confusable_clusters(probs, 6) == []  # six singletons make no specialist
    assert confusable_clusters(probs, 6, min_size=1) == [[c] for c in range(6)]


@pytest.mark.parametrize("k", [0, 7, 2.5, True])
def test_bad_cluster_count_is_refused(k):
    with pytest.raises(ConfigError, match="n_clusters must be an integer in \\[1, 6\\]"):
        confusable_clusters(planted_probs(50), k)


def test_soft_targets_group_the_non_special_mass_into_the_dustbin():
    logits = torch.randn(5, 6) * 3
    log_t = specialist_log_targets(logits, [4, 1], temperature=2.0)  # (5, 3)
    p = F.softmax(logits / 2.0, 1)
    torch.testing.assert_close(log_t.exp().sum(1), torch.ones(5))
    torch.testing.assert_close(log_t.exp()[:, :2], p[:, [4, 1]])
    torch.testing.assert_close(log_t.exp()[:, 2], p[:, [0, 2, 3, 5]].sum(1))
    assert remap_labels(torch.tensor([4, 1, 0, 5]), [4, 1], 6).tolist() == [0, 1, 2, 2]


def test_dustbin_correction_restores_the_true_posterior():
    """A Bayes-optimal classifier of the enriched set, corrected, is the Bayes-optimal one of the true set."""
    lik = torch.rand(7, 5) + 0.05  # p(x | c) for 7 inputs, classes 0, 1 special; 2, 3, 4 dustbin
    prior = torch.tensor([0.05, 0.05, 0.3, 0.3, 0.3])
    # enrichment: all special examples kept, the others subsampled uniformly to 50 / 50
    enriched = torch.cat([prior[:2], prior[2:] * (prior[:2].sum() / prior[2:].sum())])
    enriched = enriched / enriched.sum()
    def grouped(p):
        return grouped_log_probs(torch.log(lik * p / (lik * p).sum(1, keepdim=True)), [0, 1])

    shift = dustbin_logit_correction(float(prior[2:].sum()), float(enriched[2:].sum()))
    assert shift == pytest.approx(math.log(9.0))  # odds 0.9/0.1 against 0.5/0.5
    corrected = grouped(enriched) + torch.tensor([0.0, 0.0, shift])
    torch.testing.assert_close(F.log_softmax(corrected, 1), grouped(prior), rtol=1e-5, atol=1e-5)
    assert dustbin_logit_correction(0.4, 0.4) == 0.0
    with pytest.raises(ConfigError, match="enriched_fraction"):
        dustbin_logit_correction(0.5, 1.0)


def test_enriched_set_keeps_all_special_examples_and_reaches_the_fraction():
    y = torch.arange(100) % 5  # 20 per class
    idx = enriched_indices(y, [1, 3], 0.5, seed=3)
    assert (y[idx] == 1).sum() == 20 and (y[idx] == 3).sum() == 20
    assert len(idx) == 80 and len(set(idx.tolist())) == 80
    assert torch.equal(idx, enriched_indices(y, [1, 3], 0.5, seed=3))
    assert not torch.equal(idx, enriched_indices(y, [1, 3], 0.5, seed=4))
    assert len(enriched_indices(y, [1, 3], 0.2, seed=0)) == 100  # wants 160 others, has 60
    with pytest.raises(DataError):
        enriched_indices(torch.zeros(5, dtype=torch.long), [0], 0.5)


def test_config_validation_names_the_field():
    for field, value in [("alpha", 1.5), ("special_fraction", 1.0), ("top_k", 0), ("temperature", 0.0),
                         ("combine_lr", 0.0), ("combine_steps", -1), ("n_specialists", 0)]:
        with pytest.raises(ConfigError, match=field):
            SpecialistConfig(**{field: value})


def test_inactive_specialists_leave_the_generalist_untouched():
    gen = Fixed([[2.0, 1.5, 0.0, -1.0, 0.2, 0.1]])
    spec = Fixed([[-5.0, 5.0, 0.0]])  # would insist on class 5
    ensemble = SpecialistEnsemble(gen, [spec], [[4, 5]], top_k=2).eval()
    x = torch.zeros(3, 1)
    assert not ensemble.active_specialists(x).any()
    torch.testing.assert_close(ensemble(x), F.log_softmax(gen(x), 1), rtol=0, atol=0)


def test_a_confident_active_specialist_moves_mass_to_its_class():
    gen = Fixed([[3.0, 2.5, 0.0, -1.0, 0.0]])
    agreeing = Fixed(grouped_log_probs(F.log_softmax(gen.logits, 1), [0, 3]))  # active (has class 0)
    confident = Fixed(torch.log(torch.tensor([[0.98, 0.01, 0.01]])))  # {1, 2}: class 1 at 0.98
    x = torch.zeros(4, 1)
    p_g = F.softmax(gen(x), 1)
    ensemble = SpecialistEnsemble(gen, [agreeing], [[0, 3]], top_k=2)
    torch.testing.assert_close(ensemble(x).exp(), p_g, rtol=1e-5, atol=1e-6)  # agreement is the optimum
    ensemble = SpecialistEnsemble(gen, [agreeing, confident], [[0, 3], [1, 2]], top_k=2)
    assert ensemble.active_specialists(x).all()
    with torch.no_grad():
        q = ensemble(x).exp()
    assert q.argmax(1).eq(1).all() and (q[:, 1] > p_g[:, 1] + 0.2).all()
    torch.testing.assert_close(q.sum(1), torch.ones(4))
    spec = [ensemble.specialist_log_probs(m, x) for m in range(2)]
    _, trace = combine_distributions(gen(x), spec, [[0, 3], [1, 2]], torch.ones(4, 2, dtype=torch.bool), steps=30)
    assert (trace[1:] <= trace[:-1] + 1e-7).all() and trace[-1] < trace[0] - 0.05
    with torch.inference_mode():  # forward still runs its small optimisation
        torch.testing.assert_close(ensemble(x).exp(), q)


def test_dustbin_offset_is_applied_to_the_specialist_output_only_in_its_last_column():
    gen, spec = Fixed([[1.0, 0.0, 0.0]]), Fixed([[0.5, 0.2, 0.1]])
    ensemble = SpecialistEnsemble(gen, [spec], [[0, 1]], dustbin_offsets=[2.0])
    out = ensemble.specialist_log_probs(0, torch.zeros(1, 1))
    torch.testing.assert_close(out, F.log_softmax(torch.tensor([[0.5, 0.2, 2.1]]), 1))
    with pytest.raises(ShapeError, match="specialist 0 gives 3 outputs"):
        SpecialistEnsemble(gen, [spec], [[0]]).specialist_log_probs(0, torch.zeros(1, 1))


def test_init_from_generalist_copies_body_and_special_rows():
    torch.manual_seed(0)
    gen = build_model("mlp:8", (4,), 6)
    spec = build_model("mlp:8", (4,), 3)
    assert init_from_generalist_(spec, gen, [5, 2])
    torch.testing.assert_close(spec.net[1].weight, gen.net[1].weight)
    torch.testing.assert_close(spec.net[3].weight[:2], gen.net[3].weight[[5, 2]])
    torch.testing.assert_close(spec.net[3].bias[:2], gen.net[3].bias[[5, 2]])
    other = build_model("mlp:5", (4,), 3)
    before = [p.clone() for p in other.parameters()]
    assert not init_from_generalist_(other, gen, [5, 2])
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


def six_class_splits():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)) * 1.2

    def draw(n):
        y = torch.randint(0, 6, (n,), generator=g)
        return centers[y] + torch.randn(n, 8, generator=g), y

    (xtr, ytr), (xva, yva), (xte, yte) = draw(300), draw(90), draw(90)
    return DataSplits("six", xtr, ytr, xva, yva, xte, yte, num_classes=6)


@pytest.fixture(scope="module")
def generalist_and_data():
    data = six_class_splits()
    torch.manual_seed(0)
    gen = build_model("mlp:16", (8,), 6)
    train(gen, data, TrainConfig(epochs=3, batch_size=32), progress=False)
    return gen, data


def make_specialist(k):
    return build_model("mlp:16", (8,), k)


CONFIG = SpecialistConfig(n_specialists=2, temperature=2.0, train=TrainConfig(epochs=3, batch_size=32, lr=0.02))


def test_train_specialists_end_to_end(generalist_and_data):
    gen, data = generalist_and_data
    gen_before = [p.clone() for p in gen.parameters()]
    ensemble = train_specialists(gen, make_specialist, data, replace(CONFIG, n_specialists=4), progress=False)
    assert len(ensemble.specialists) >= 1 and not ensemble.training
    assert all(torch.equal(a, b) for a, b in zip(gen_before, gen.parameters()))  # generalist unchanged
    with torch.no_grad():
        out = ensemble(data.x_test)
    assert out.shape == (90, 6)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(90))
    for cls, offset, result in zip(ensemble.class_sets, ensemble.dustbin_offsets, ensemble.train_results):
        n_special = int(torch.isin(data.y_train, torch.tensor(cls)).sum())
        n_other = min(300 - n_special, n_special)  # special_fraction 0.5, as far as the others allow
        expected = dustbin_logit_correction(1 - n_special / 300, n_other / (n_special + n_other))
        assert float(offset) == pytest.approx(expected, abs=1e-5)
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_resume_skips_finished_specialists(generalist_and_data, tmp_path):
    gen, data = generalist_and_data
    clusters = [[0, 1], [3, 4]]
    first = train_specialists(gen, make_specialist, data, CONFIG, clusters=clusters, checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "specialist1.ckpt").unlink()  # as if interrupted before the second finished
    again = train_specialists(gen, make_specialist, data, CONFIG, clusters=clusters, checkpoint_dir=tmp_path,
                              resume=True, progress=False)
    assert again.train_results[0].resumed_from_epoch == CONFIG.train.epochs  # loaded, not retrained
    assert again.train_results[1].resumed_from_epoch == 0
    assert (again.dustbin_offsets > 0.3).all()  # 2 of 6 classes oversampled to half: the dustbin is raised
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="clusters"):
        train_specialists(gen, make_specialist, data, CONFIG, clusters=[[0, 1]], checkpoint_dir=tmp_path,
                          resume=True, progress=False)


def test_bad_clusters_and_specialist_shapes_are_refused(generalist_and_data):
    gen, data = generalist_and_data
    with pytest.raises(ConfigError, match="dustbin"):
        train_specialists(gen, make_specialist, data, CONFIG, clusters=[list(range(6))], progress=False)
    with pytest.raises(ConfigError, match="clusters must be"):
        train_specialists(gen, make_specialist, data, CONFIG, clusters=[[0, 9]], progress=False)
    with pytest.raises(ShapeError, match="returned a model with 6 outputs"):
        train_specialists(gen, lambda k: make_specialist(6), data, CONFIG, clusters=[[0, 1]], progress=False)
