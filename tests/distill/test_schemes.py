"""Distillation schemes: early-stopped KD, the ensemble module, born-again generations,
self-compression and teacher-assistant chains."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.distill import DistillConfig, distill, mixed_distillation_loss
from modelpress.distill import schemes
from modelpress.distill.core import DistillationObjective
from modelpress.distill.schemes import born_again, self_compress, teacher_assistant_chain
from modelpress.distill.teachers import ModuleTeacher
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.models.ensemble import EnsembleModel
from modelpress.train import TrainConfig, train


def _mlp(splits, hidden="16", seed=0, classes=None):
    torch.manual_seed(seed)
    return build_model(f"mlp:{hidden}", splits.input_shape, classes or splits.num_classes)


def _teacher(splits, hidden="16"):
    teacher = _mlp(splits, hidden, seed=7)
    train(teacher, splits, TrainConfig(epochs=2, batch_size=32), progress=False)
    return teacher


def _config(epochs=1, **options):
    return DistillConfig(train=TrainConfig(epochs=epochs, batch_size=32, seed=5), **options)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class _Counting(nn.Module):
    """Wraps a teacher and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


class _CallsPerEpoch:
    """Callback: how many teacher calls each epoch made."""

    def __init__(self, teacher):
        self.teacher, self.per_epoch, self.start = teacher, [], 0

    def on_epoch_start(self, epoch, model):
        self.start = self.teacher.calls

    def on_epoch_end(self, epoch, model, metrics):
        self.per_epoch.append(self.teacher.calls - self.start)


class _CrashAfter:
    """Simulates an interruption after the checkpoint of epoch ``n`` (1-based) was written."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, epoch, model, metrics):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt


class _Recorder:
    """Stands in for ``schemes.distill``: records (student, teacher, config), then runs the real one."""

    def __init__(self, crash_on_call=None):
        self.calls, self.crash_on_call = [], crash_on_call

    def __call__(self, student, teacher, data, config, **kwargs):
        self.calls.append((student, teacher, config))
        if len(self.calls) == self.crash_on_call:
            kwargs["callbacks"] = [_CrashAfter(1)]
        return distill(student, teacher, data, config, **kwargs)


# --- early-stopped KD (Cho & Hariharan 2019) ------------------------------------------------------

@pytest.mark.parametrize("kd_epochs,expected", [(1, [8, 0, 0]), (None, [8, 8, 8])])
def test_early_stopped_kd_queries_the_teacher_only_in_its_epochs(tiny_splits, kd_epochs, expected):
    teacher = _Counting(_teacher(tiny_splits))
    counter = _CallsPerEpoch(teacher)
    distill(_mlp(tiny_splits), teacher, tiny_splits, _config(3, kd_epochs=kd_epochs), progress=False, callbacks=[counter])
    assert counter.per_epoch == expected  # 256 examples / 32 = 8 steps per epoch


def test_after_kd_epochs_the_loss_is_plain_cross_entropy(tiny_splits):
    teacher, student = _teacher(tiny_splits), _mlp(tiny_splits)
    x, y = tiny_splits.x_train[:32], tiny_splits.y_train[:32]
    objective = DistillationObjective(ModuleTeacher(teacher), DistillConfig(kd_epochs=2, alpha=0.9, temperature=3.0))
    objective.on_epoch_start(1, student)
    kd = mixed_distillation_loss(student(x), teacher(x), y, alpha=0.9, temperature=3.0)
    torch.testing.assert_close(objective(student, x, y, None), kd)
    objective.on_epoch_start(2, student)
    ce = F.cross_entropy(student(x), y)
    torch.testing.assert_close(objective(student, x, y, None), ce)
    assert not torch.allclose(kd, ce)


def test_early_stopped_kd_resumed_across_the_switch_matches_an_uninterrupted_run(tiny_splits, tmp_path):
    teacher = _teacher(tiny_splits)
    config = _config(3, kd_epochs=1)
    full = distill(_mlp(tiny_splits), teacher, tiny_splits, config, progress=False).student
    ckpt = tmp_path / "eskd.ckpt"
    with pytest.raises(KeyboardInterrupt):
        distill(_mlp(tiny_splits), teacher, tiny_splits, config, checkpoint_path=ckpt, progress=False, callbacks=[_CrashAfter(1)])
    counting = _Counting(teacher)
    counter = _CallsPerEpoch(counting)
    resumed_run = distill(_mlp(tiny_splits, seed=99), counting, tiny_splits, config, checkpoint_path=ckpt, resume=True,
                      progress=False, callbacks=[counter])
    resumed = resumed_run.student
    assert resumed_run.train.resumed_from_epoch == 1
    assert counter.per_epoch == [0, 0]  # the resumed objective knows it is past kd_epochs
    assert _same_weights(full, resumed)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_kd_epochs_must_be_none_or_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="kd_epochs must be None or an integer >= 1"):
        DistillConfig(kd_epochs=bad)
    assert DistillConfig(kd_epochs=1).kd_epochs == 1 and DistillConfig().kd_epochs is None


# --- EnsembleModel -------------------------------------------------------------------------------

class _Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_ensemble_probs_is_the_log_of_the_mean_member_probability():
    a, b, c = torch.randn(1, 5) * 3, torch.randn(1, 5), torch.randn(1, 5) * 10
    out = EnsembleModel([_Fixed(a), _Fixed(b), _Fixed(c)])(torch.zeros(2, 1))
    expected = (F.softmax(a, 1) + F.softmax(b, 1) + F.softmax(c, 1)) / 3
    assert out.shape == (2, 5)
    torch.testing.assert_close(out.exp(), expected.expand(2, -1))
    torch.testing.assert_close(F.softmax(out, 1), expected.expand(2, -1))  # already normalised


def test_ensemble_logits_is_the_mean_of_logits():
    a, b = torch.randn(1, 4), torch.randn(1, 4)
    out = EnsembleModel([_Fixed(a), _Fixed(b)], combine="logits")(torch.zeros(3, 1))
    torch.testing.assert_close(out, ((a + b) / 2).expand(3, -1))


def test_ensemble_refuses_empty_lists_bad_modes_and_class_mismatch():
    with pytest.raises(ConfigError, match="at least one member"):
        EnsembleModel([])
    with pytest.raises(ConfigError, match="combine must be one of probs, logits; got 'max'"):
        EnsembleModel([_Fixed(torch.zeros(1, 3))], combine="max")
    with pytest.raises(ShapeError, match=r"disagree on the number of classes: they predict \[3, 4\]"):
        EnsembleModel([_Fixed(torch.zeros(1, 3)), _Fixed(torch.zeros(1, 4))])(torch.zeros(2, 1))


def test_ensemble_is_a_module_over_its_members_and_measurable(tiny_splits):
    members = [_mlp(tiny_splits, seed=s) for s in (1, 2)]
    ensemble = EnsembleModel(members)
    assert len(list(ensemble.parameters())) == sum(len(list(m.parameters())) for m in members)
    ensemble.eval()
    assert not any(m.training for m in members)
    acc = evaluate_accuracy(ensemble, tiny_splits.x_test, tiny_splits.y_test)
    assert acc.n == len(tiny_splits.y_test)


# --- born-again networks (Furlanello et al. 2018) -------------------------------------------------

def test_born_again_trains_fresh_generations_each_taught_by_the_previous(tiny_splits, monkeypatch):
    teacher = _teacher(tiny_splits)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    result = born_again(teacher, tiny_splits, _config(), generations=3, precompute=False, progress=False)

    gens = result.generations
    assert len(gens) == 3 and len({id(g) for g in (teacher, *gens)}) == 4
    assert [(s, t) for s, t, _ in recorder.calls] == [(gens[0], teacher), (gens[1], gens[0]), (gens[2], gens[1])]
    for g in gens:
        assert g.modelpress_spec == teacher.modelpress_spec and not g.training
        assert [v.shape for v in g.state_dict().values()] == [v.shape for v in before.values()]
        assert not _same_weights(g, teacher)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # teacher untouched
    assert result.teacher is teacher and [h.epochs_run for h in result.histories] == [1, 1, 1]

    assert list(result.ensemble(2).members) == gens[:2]
    assert list(result.ensemble(include_teacher=True).members) == [teacher, *gens]
    x = tiny_splits.x_test[:5]
    expected = torch.stack([F.softmax(g(x), 1) for g in gens[:2]]).mean(0)
    torch.testing.assert_close(result.ensemble(2)(x).exp(), expected)
    for bad in (0, 4):
        with pytest.raises(ConfigError, match="k must be between 1 and 3"):
            result.ensemble(bad)


def test_precomputed_teachers_are_the_previous_generations_and_change_nothing(tiny_splits, monkeypatch):
    teacher = _teacher(tiny_splits)
    plain = born_again(teacher, tiny_splits, _config(), generations=2, precompute=False, progress=False)
    seen = []
    real = schemes.precompute_teacher
    monkeypatch.setattr(schemes, "precompute_teacher", lambda module, x: seen.append(module) or real(module, x))
    fast = born_again(teacher, tiny_splits, _config(), generations=2, progress=False)
    assert seen == [teacher, fast.generations[0]]
    for a, b in zip(plain.generations[1].parameters(), fast.generations[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_born_again_resumes_inside_a_generation_and_skips_finished_ones(tiny_splits, tmp_path, monkeypatch):
    teacher = _teacher(tiny_splits)
    config = _config(2)
    full = born_again(teacher, tiny_splits, config, generations=3, progress=False)

    monkeypatch.setattr(schemes, "distill", _Recorder(crash_on_call=2))  # dies after epoch 1 of generation 2
    with pytest.raises(KeyboardInterrupt):
        born_again(teacher, tiny_splits, config, generations=3, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "gen1.mpk").is_file() and not (tmp_path / "gen2.mpk").exists()
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    resumed = born_again(teacher, tiny_splits, config, generations=3, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert len(recorder.calls) == 2  # generation 1 was loaded, not retrained
    assert resumed.histories[1].resumed_from_epoch == 1 and resumed.histories[0].epochs_run == 2
    assert [h["train_loss"] for h in resumed.histories[0].history] == [h["train_loss"] for h in full.histories[0].history]
    for a, b in zip(full.generations, resumed.generations):
        assert _same_weights(a, b)

    with pytest.raises(ConfigError, match="different distillation config"):
        born_again(teacher, tiny_splits, _config(2, alpha=0.3), checkpoint_dir=tmp_path, resume=True, progress=False)


class _Plain(nn.Module):
    """Not from the zoo: no spec, so born_again copies and re-initialises it."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


def test_teachers_without_a_spec_are_copied_reinitialised_and_checkpointed(tiny_splits, tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = _Plain()
    train(teacher, tiny_splits, TrainConfig(epochs=1, batch_size=32), progress=False)
    first = born_again(teacher, tiny_splits, _config(), generations=1, checkpoint_dir=tmp_path, progress=False)
    gen = first.generations[0]
    assert isinstance(gen, _Plain) and gen is not teacher and (tmp_path / "gen1.safetensors").is_file()
    fresh = schemes.build_seeded(lambda: schemes._fresh_copy(teacher), 6)
    assert all(not torch.equal(a, b) for a, b in zip(fresh.parameters(), teacher.parameters()))
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    again = born_again(teacher, tiny_splits, _config(), generations=1, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert recorder.calls == [] and _same_weights(gen, again.generations[0])


def test_teachers_that_cannot_be_reinitialised_are_refused(tiny_splits):
    class Bare(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(64, 4))

        def forward(self, x):
            return x.flatten(1) @ self.w

    with pytest.raises(ConfigError, match="no reset_parameters"):
        born_again(Bare(), tiny_splits, _config(), generations=1, progress=False)
    pruned = _Plain()
    torch.nn.utils.prune.l1_unstructured(pruned.net[1], "weight", amount=0.5)
    with pytest.raises(ConfigError, match="reparametrization"):
        born_again(pruned, tiny_splits, _config(), generations=1, progress=False)
    with pytest.raises(ConfigError, match="generations must be an integer >= 1"):
        born_again(_Plain(), tiny_splits, _config(), generations=0)


def test_self_compress_uses_alpha_half_unless_told_otherwise(tiny_splits, monkeypatch):
    teacher = _teacher(tiny_splits)
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    model_b = self_compress(teacher, tiny_splits, progress=False)
    assert recorder.calls[0][2].alpha == 0.5 and recorder.calls[0][0] is model_b
    assert model_b is not teacher and model_b.modelpress_spec == teacher.modelpress_spec
    self_compress(teacher, tiny_splits, _config(alpha=0.7), progress=False)
    assert recorder.calls[1][2].alpha == 0.7


# --- teacher-assistant chains (Mirzadeh et al. 2020) ------------------------------------------------

def test_teacher_assistant_chain_distils_in_order(tiny_splits, tmp_path, monkeypatch):
    teacher = _teacher(tiny_splits, "32")
    assistant, student = _mlp(tiny_splits, "16", seed=1), _mlp(tiny_splits, "8", seed=2)
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    result = teacher_assistant_chain(teacher, [assistant], student, tiny_splits, _config(), checkpoint_dir=tmp_path,
                                     precompute=False, progress=False)
    assert [(s, t) for s, t, _ in recorder.calls] == [(assistant, teacher), (student, assistant)]
    assert result.student is student and result.assistants == [assistant] and len(result.histories) == 2
    assert (tmp_path / "assistant1.mpk").is_file() and (tmp_path / "student.mpk").is_file()

    again = teacher_assistant_chain(teacher, [_mlp(tiny_splits, "16")], _mlp(tiny_splits, "8"), tiny_splits, _config(),
                                    checkpoint_dir=tmp_path, resume=True, progress=False)
    assert len(recorder.calls) == 2 and _same_weights(again.student, student)  # nothing retrained


def test_teacher_assistant_chain_without_assistants_is_plain_kd_and_checks_its_links(tiny_splits, monkeypatch):
    teacher, student = _teacher(tiny_splits), _mlp(tiny_splits, "8")
    recorder = _Recorder()
    monkeypatch.setattr(schemes, "distill", recorder)
    result = teacher_assistant_chain(teacher, [], student, tiny_splits, _config(), precompute=False, progress=False)
    assert [(s, t) for s, t, _ in recorder.calls] == [(student, teacher)] and result.assistants == []
    with pytest.raises(ConfigError, match="distinct modules"):
        teacher_assistant_chain(teacher, [student], student, tiny_splits, _config())
    wrong = _mlp(tiny_splits, "8", classes=6)
    with pytest.raises(ShapeError, match="class-count mismatch"):
        teacher_assistant_chain(teacher, [wrong], _mlp(tiny_splits, "8"), tiny_splits, _config(), progress=False)
