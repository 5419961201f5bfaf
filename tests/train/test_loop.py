import math

import pytest
import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, TrainingDivergedError
from modelpress.models import build_model
from modelpress.train import TrainConfig, apply_max_norm_, load_checkpoint, train


def _model(splits, seed=0, arch="mlp:32"):
    torch.manual_seed(seed)
    return build_model(arch, splits.input_shape, splits.num_classes, dropout=0.2)


def test_training_learns_the_task(tiny_splits):
    model = _model(tiny_splits)
    result = train(model, tiny_splits, TrainConfig(epochs=5, lr=0.05, batch_size=32), progress=False)
    assert result.epochs_run == 5 and result.best_val_accuracy > 0.9
    assert result.history[0]["train_loss"] > result.history[-1]["train_loss"]


class _CrashAfter:
    """Simulates an interruption: raises after the checkpoint of epoch ``n`` was written."""

    def __init__(self, n):
        self.n = n

    def on_epoch_end(self, epoch, model, metrics):
        if epoch + 1 == self.n:
            raise KeyboardInterrupt


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_splits, tmp_path):
    config = TrainConfig(epochs=4, lr=0.05, batch_size=32, jitter=1, seed=3)
    full = _model(tiny_splits)
    train(full, tiny_splits, config, progress=False)

    ckpt = tmp_path / "run.ckpt"
    interrupted = _model(tiny_splits)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, tiny_splits, config, checkpoint_path=ckpt, progress=False, callbacks=[_CrashAfter(2)])
    assert load_checkpoint(ckpt)["epoch"] == 2
    resumed = _model(tiny_splits, seed=99)  # a fresh process would start from other weights
    result = train(resumed, tiny_splits, config, checkpoint_path=ckpt, resume=True, progress=False)
    assert result.resumed_from_epoch == 2 and result.epochs_run == 4
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_with_a_different_config_is_refused(tiny_splits, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    train(_model(tiny_splits), tiny_splits, TrainConfig(epochs=1), checkpoint_path=ckpt, progress=False)
    with pytest.raises(ConfigError, match="different training config"):
        train(_model(tiny_splits), tiny_splits, TrainConfig(epochs=2), checkpoint_path=ckpt, resume=True, progress=False)


def test_same_seed_same_result_and_different_seed_differs(tiny_splits):
    weights = []
    for seed in (0, 0, 1):
        model = _model(tiny_splits)
        train(model, tiny_splits, TrainConfig(epochs=1, batch_size=32, seed=seed), progress=False)
        weights.append(model.state_dict()["net.1.weight"])
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tiny_splits, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}

    def poisoned(model, x, y, idx):
        calls["n"] += 1
        loss = F.cross_entropy(model(x), y)
        return loss * math.nan if calls["n"] > 10 else loss  # 256/32 = 8 steps per epoch: dies in epoch 2

    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 2.*lower the learning rate.*epoch 1"):
        train(_model(tiny_splits), tiny_splits, TrainConfig(epochs=3, batch_size=32), objective=poisoned,
              checkpoint_path=ckpt, progress=False)
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_early_stopping_restores_the_best_epoch(tiny_splits):
    model = _model(tiny_splits)
    result = train(model, tiny_splits, TrainConfig(epochs=30, lr=0.1, batch_size=32, patience=2, schedule="constant"),
                   progress=False)
    assert result.stopped_early and result.epochs_run < 30
    best = max(h["val_accuracy"] for h in result.history)
    assert result.best_val_accuracy == best


def test_max_norm_bounds_every_unit():
    layer = torch.nn.Linear(10, 5)
    with torch.no_grad():
        layer.weight.mul_(100)
    apply_max_norm_(layer, 2.0)
    assert layer.weight.norm(dim=1).max() <= 2.0 + 1e-5
    frozen = torch.nn.Linear(10, 5).requires_grad_(False)
    with torch.no_grad():
        frozen.weight.mul_(100)
    before = frozen.weight.clone()
    apply_max_norm_(frozen, 2.0)  # a frozen layer is not being trained: leave it as it is
    assert torch.equal(frozen.weight, before)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="optimizer must be one of sgd, adam, adamw; got 'rmsprop'"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="epochs must be positive"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match=r"patience \(early stopping\) needs validation data"):
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4), torch.zeros(8).long()))
        train(torch.nn.Linear(4, 2), loader, TrainConfig(patience=2), progress=False)


def test_plain_dataloaders_work(tiny_splits):
    ds = torch.utils.data.TensorDataset(tiny_splits.x_train, tiny_splits.y_train)
    loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)
    model = _model(tiny_splits)
    result = train(model, loader, TrainConfig(epochs=2, optimizer="adam", lr=1e-3), progress=False)
    assert result.epochs_run == 2 and result.best_epoch is None


def test_grad_clip_bounds_the_size_of_each_step(tiny_splits):
    model = _model(tiny_splits)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(tiny_splits.x_train, tiny_splits.y_train * 0 + 3),
                                         batch_size=256)
    lr, clip = 10.0, 0.01
    train(model, loader, TrainConfig(epochs=1, lr=lr, momentum=0.0, grad_clip=clip, schedule="constant"), progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= lr * clip * 1.0001  # one plain SGD step of a clipped gradient
    with pytest.raises(ConfigError, match="grad_clip must be positive"):
        TrainConfig(grad_clip=0)


def test_training_that_only_hurts_hands_back_the_starting_weights(tiny_splits):
    model = build_model("mlp:16", tiny_splits.input_shape, tiny_splits.num_classes)
    train(model, tiny_splits, TrainConfig(epochs=3, batch_size=32), progress=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def anti_objective(m, x, y, idx):  # gradient ascent on the loss: every epoch is worse than none
        return -torch.nn.functional.cross_entropy(m(x), y)

    result = train(model, tiny_splits, TrainConfig(epochs=2, batch_size=32, lr=0.05, grad_clip=1.0),
                   objective=anti_objective, progress=False)
    assert result.best_epoch == 0
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_an_objective_with_callback_hooks_is_called_once_per_epoch(tiny_splits):
    class EpochAware:
        def __init__(self):
            self.epochs = []

        def on_epoch_start(self, epoch, model):
            self.epochs.append(epoch)

        def __call__(self, model, x, y, idx):
            return F.cross_entropy(model(x), y)

    objective = EpochAware()
    model = build_model("mlp:8", tiny_splits.input_shape, tiny_splits.num_classes)
    train(model, tiny_splits, TrainConfig(epochs=3), objective=objective, progress=False)
    assert objective.epochs == [0, 1, 2]
    objective.epochs.clear()  # passing it as a callback as well must not call it twice
    train(model, tiny_splits, TrainConfig(epochs=2), objective=objective, callbacks=[objective], progress=False)
    assert objective.epochs == [0, 1]
