"""Blending (Geras et al. 2016): the mixture maths, choosing gamma, the whole method, and the CLI path."""

import json

import pytest
import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.data import load_dataset
from modelpress.distill import (BlendConfig, DistillConfig, EnsembleTeacher, blend, blend_teacher, choose_gamma,
                                score_gammas)
from modelpress.models import EnsembleModel, build_model
from modelpress.models.ensemble import mixture_log_probs
from modelpress.train import TrainConfig, train


class _Fixed(torch.nn.Module):
    """Returns fixed logits ``(N, C)`` for a batch of indices: ``x`` holds example numbers."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits[x.long().view(-1)]


def test_blend_is_gamma_p_lstm_plus_one_minus_gamma_p_cnn():
    a, b = torch.randn(6, 5) * 3, torch.randn(6, 5)
    x = torch.arange(6)
    for gamma in (0.0, 0.3, 1.0):
        probs = blend_teacher(_Fixed(a), _Fixed(b), gamma)(x).exp()
        torch.testing.assert_close(probs, gamma * F.softmax(a, 1) + (1 - gamma) * F.softmax(b, 1))
        # the CLI's --teacher-weights path (EnsembleTeacher) computes the same mixture
        cli = EnsembleTeacher([_Fixed(a), _Fixed(b)], [gamma, 1 - gamma])(x)
        torch.testing.assert_close(cli, blend_teacher(_Fixed(a), _Fixed(b), gamma)(x))


def test_weighted_ensemble_model_defaults_to_uniform_and_logits_combine_is_weighted():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    x = torch.arange(4)
    uniform = EnsembleModel([_Fixed(a), _Fixed(b)])
    torch.testing.assert_close(uniform(x).exp(), (F.softmax(a, 1) + F.softmax(b, 1)) / 2)
    weighted = EnsembleModel([_Fixed(a), _Fixed(b)], combine="logits", weights=[3, 1])
    torch.testing.assert_close(weighted(x), 0.75 * a + 0.25 * b)
    assert "weights" not in weighted.state_dict()  # files of saved cohorts keep their layout
    with pytest.raises(ConfigError, match="2 ensemble members but 3 weights"):
        EnsembleModel([_Fixed(a), _Fixed(b)], weights=[1, 1, 1])
    with pytest.raises(ConfigError, match="non-negative and not all zero"):
        EnsembleModel([_Fixed(a), _Fixed(b)], weights=[-1, 2])


def test_mixture_of_a_zero_weight_member_is_the_other_member_exactly():
    logits = torch.randn(2, 3, 4) * 30  # confident members: the log-space mixture must not underflow
    out = mixture_log_probs(logits, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out, F.log_softmax(logits[1], dim=-1))
    assert torch.isfinite(mixture_log_probs(logits, torch.tensor([0.5, 0.5]))).all()


def _complementary(n: int = 40, classes: int = 4):
    """Two members, each right and confident on one half, slightly wrong on the other: only the blend is right everywhere."""
    y = torch.arange(n) % classes
    wrong = (y + 1) % classes
    a, b = torch.zeros(n, classes), torch.zeros(n, classes)
    half = torch.arange(n) < n // 2
    rows = torch.arange(n)
    a[rows[half], y[half]] = 6.0
    a[rows[~half], wrong[~half]] = 1.0
    b[rows[~half], y[~half]] = 6.0
    b[rows[half], wrong[half]] = 1.0
    return a, b, y


def test_the_blend_of_complementary_models_beats_both_and_gamma_is_chosen_in_between():
    a, b, y = _complementary()
    scores = {row["gamma"]: row for row in score_gammas(torch.stack([a, b]), y, [0.0, 0.5, 1.0])}
    assert scores[0.0]["errors"] == scores[1.0]["errors"] == 20 and scores[0.5]["errors"] == 0
    choice = choose_gamma(_Fixed(a), _Fixed(b), torch.arange(40), y)
    assert 0.0 < choice.gamma < 1.0 and choice.n == 40 and len(choice.scores) == 11
    assert min(row["errors"] for row in choice.scores) == 0


def test_ties_in_errors_go_to_the_lower_validation_nll():
    y = torch.arange(12) % 3
    mild, confident = F.one_hot(y, 3).float() * 2, F.one_hot(y, 3).float() * 6  # both always right
    choice = choose_gamma(_Fixed(mild), _Fixed(confident), torch.arange(12), y)
    assert all(row["errors"] == 0 for row in choice.scores)
    assert choice.gamma == 0.0  # all weight on the confident, equally right member


def test_bad_blend_requests_give_clear_errors():
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]; got 1.5"):
        BlendConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="at least one weight"):
        BlendConfig(gammas=())
    with pytest.raises(ConfigError, match="distill must be a DistillConfig"):
        BlendConfig(distill={"temperature": 1})
    with pytest.raises(ConfigError, match="must be in \\[0, 1\\]"):
        blend_teacher(_Fixed(torch.zeros(1, 2)), _Fixed(torch.zeros(1, 2)), -0.1)
    with pytest.raises(ShapeError, match="disagree on the number of classes: 3 and 4"):
        choose_gamma(_Fixed(torch.zeros(5, 3)), _Fixed(torch.zeros(5, 4)), torch.arange(5), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"need logits \(2, N, C\)"):
        score_gammas(torch.zeros(3, 5, 2), torch.zeros(5, dtype=torch.long), [0.5])


@pytest.fixture(scope="module")
def mnist1d_members():
    splits = load_dataset("mnist1d", seed=0, limit=300, limit_test=100)
    fast = TrainConfig(epochs=2, batch_size=50, optimizer="adam", lr=0.01)
    members = []
    for arch in ("lstm:8", "cnn1d:8-8"):
        torch.manual_seed(0)
        model = build_model(arch, splits.input_shape, splits.num_classes)
        train(model, splits, fast, progress=False)
        members.append(model.eval())
    return splits, members


def test_blend_distils_the_chosen_mixture_into_a_cnn(mnist1d_members):
    splits, (lstm, cnn) = mnist1d_members
    student = build_model("cnn1d:8-8", splits.input_shape, splits.num_classes)
    config = BlendConfig(gammas=(0.0, 0.5, 1.0), distill=DistillConfig(temperature=1.0, alpha=0.5, train=TrainConfig(
        epochs=1, batch_size=50, optimizer="adam", lr=0.01)))
    lines = []
    result = blend(student, lstm, cnn, splits, config, progress=False, log=lines.append)
    assert result.student is student and result.choice.gamma in (0.0, 0.5, 1.0)
    assert result.choice == choose_gamma(lstm, cnn, splits.x_val, splits.y_val, (0.0, 0.5, 1.0))
    assert result.teacher.weights.tolist() == pytest.approx([result.choice.gamma, 1 - result.choice.gamma])
    assert result.train.epochs_run == 1 and any("gamma" in line for line in lines)

    fixed = blend(build_model("cnn1d:8-8", (40,), 10), lstm, cnn, splits, BlendConfig(gamma=0.7, distill=config.distill),
                  progress=False)
    assert fixed.choice.gamma == 0.7 and fixed.choice.scores == ()


def test_cli_trains_sequence_models_and_distils_their_blend(tmp_path, capsys):
    from modelpress.cli import main

    data = ["--data", "mnist1d", "--limit", "300", "--limit-test", "100", "--epochs", "1", "--batch-size", "50",
            "--optimizer", "adam", "--lr", "0.01", "--quiet", "--json"]
    for arch, name in (("lstm:8", "lstm.mpk"), ("cnn1d:8-8", "cnn.mpk")):
        assert main(["train", "--model", arch, *data, "-o", str(tmp_path / name)]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["flops"] > 0 and out["n"] == 100
    assert main(["distill", "--teacher", str(tmp_path / "lstm.mpk"), "--teacher", str(tmp_path / "cnn.mpk"),
                 "--teacher-weights", "0.5,0.5", "--student", "cnn1d:8-8", "--temperature", "1", "--alpha", "0.5",
                 *data, "-o", str(tmp_path / "student.mpk")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] < 2000 and (tmp_path / "student.mpk").exists()
    assert main(["train", "--model", "lstm:8", "--data", "digits", "--quiet", "-o", str(tmp_path / "x.mpk")]) == 2
    assert "lstm needs 1-D sequence inputs" in capsys.readouterr().err
