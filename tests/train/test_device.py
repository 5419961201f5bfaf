"""Device choice and placement. The CUDA tests run where a GPU is present (skipped elsewhere); the rest
check, on the CPU, the choice of device and that everything an objective holds follows the model."""

import pytest
import torch

from modelpress.core.device import module_device
from modelpress.core.errors import ConfigError
from modelpress.distill import DistillConfig
from modelpress.distill.core import DistillationObjective
from modelpress.distill.teachers import EnsembleTeacher, ModuleTeacher, StoredTeacher, build_teacher_store
from modelpress.measure import evaluate_accuracy
from modelpress.models import build_model
from modelpress.train import TrainConfig, train
from modelpress.train.device import DEVICE_ENV, move_, resolve_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no GPU")


def _model(splits, seed=0):
    torch.manual_seed(seed)
    return build_model("mlp:32", splits.input_shape, splits.num_classes)


def test_an_unset_device_trains_where_the_model_is_without_a_gpu(monkeypatch, tiny_splits):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    model = _model(tiny_splits)
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device(None, model) == expected
    assert resolve_device("cpu", model) == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("tpu:0", "not a torch device"), ("banana", "not a torch device"),
                                           ("meta", "cpu or cuda")])
def test_a_device_that_is_no_training_device_is_refused_by_name(tiny_splits, name, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_device(name, _model(tiny_splits))
    assert name in str(err.value)


@no_cuda
def test_asking_for_a_gpu_where_there_is_none_names_the_setting(monkeypatch, tiny_splits):
    model = _model(tiny_splits)
    with pytest.raises(ConfigError, match="device 'cuda:0' asks for a GPU but CUDA is not available"):
        train(model, tiny_splits, TrainConfig(epochs=1), progress=False, device="cuda:0")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match=f"{DEVICE_ENV}=cuda asks for a GPU"):
        train(model, tiny_splits, TrainConfig(epochs=1), progress=False)


@no_cuda
def test_the_cli_reports_a_missing_gpu_as_an_error_not_a_traceback(monkeypatch, capsys, tmp_path):
    from modelpress.cli import main

    monkeypatch.setenv(DEVICE_ENV, "cuda")
    out = tmp_path / "never.mpk"
    code = main(["train", "--model", "mlp:8", "--data", "mnist1d", "--limit", "64", "--limit-test", "32",
                 "--epochs", "1", "--quiet", "-o", str(out)])
    assert code == 2 and not out.exists()
    assert f"{DEVICE_ENV}=cuda asks for a GPU" in capsys.readouterr().err


def test_an_explicit_cpu_run_is_the_default_run(monkeypatch, tiny_splits):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    config = TrainConfig(epochs=2, lr=0.05, batch_size=32, jitter=1, seed=4)
    by_default, explicit = _model(tiny_splits), _model(tiny_splits)
    train(by_default, tiny_splits, config, progress=False)
    train(explicit, tiny_splits, config, progress=False, device=torch.device("cpu"))
    for a, b in zip(by_default.parameters(), explicit.parameters()):
        assert torch.equal(a, b)


def test_everything_an_objective_holds_follows_it_to_the_device(tiny_splits):
    """``meta`` tensors have no data, which is all this needs: every tensor must land on the device."""
    teacher_net, member = _model(tiny_splits, 1), _model(tiny_splits, 2)
    store = build_teacher_store(torch.randn(len(tiny_splits.y_train), tiny_splits.num_classes), mass=0.9)
    objectives = [DistillationObjective(ModuleTeacher(teacher_net), DistillConfig()),
                  DistillationObjective(StoredTeacher(store), DistillConfig()),
                  DistillationObjective(EnsembleTeacher([teacher_net, member], weights=[1, 3]), DistillConfig())]
    student = _model(tiny_splits, 3)
    moved = move_((student, objectives, (torch.zeros(2),)), torch.device("meta"))
    assert moved[2][0].device.type == "meta"
    for module in (student, teacher_net, member):
        assert {t.device.type for t in (*module.parameters(), *module.buffers())} == {"meta"}
    for tensor in (store.offsets, store.class_ids, store.logits, store.lse, objectives[2].teacher.weights):
        assert tensor.device.type == "meta"


@cuda
def test_training_on_the_gpu_distils_and_hands_the_model_back_on_the_cpu(tiny_splits, tmp_path):
    teacher = _model(tiny_splits, 1)
    train(teacher, tiny_splits, TrainConfig(epochs=4, lr=0.05, batch_size=32), progress=False, device="cpu")
    store = build_teacher_store(torch.randn(len(tiny_splits.y_train), tiny_splits.num_classes))
    for objective in (DistillationObjective(ModuleTeacher(teacher), DistillConfig()),
                      DistillationObjective(StoredTeacher(store), DistillConfig(alpha=0.1))):
        student = _model(tiny_splits, 2)
        ckpt = tmp_path / f"gpu{id(objective)}.ckpt"
        result = train(student, tiny_splits, TrainConfig(epochs=3, lr=0.05, batch_size=32, jitter=1),
                       objective=objective, progress=False, device="cuda", checkpoint_path=ckpt)
        assert module_device(student).type == "cpu" and module_device(teacher).type == "cpu"
        assert result.best_val_accuracy > 0.8
        assert evaluate_accuracy(student, tiny_splits.x_test, tiny_splits.y_test).accuracy > 0.8
        # a GPU run's checkpoint resumes on the CPU
        resumed = _model(tiny_splits, 2)
        again = train(resumed, tiny_splits, TrainConfig(epochs=3, lr=0.05, batch_size=32, jitter=1), objective=objective,
                      progress=False, device="cpu", checkpoint_path=ckpt, resume=True)
        assert again.resumed_from_epoch == 3


@cuda
def test_a_model_on_the_gpu_is_measured_against_cpu_data(tiny_splits):
    model = _model(tiny_splits).cuda()
    on_gpu = evaluate_accuracy(model, tiny_splits.x_test, tiny_splits.y_test)
    on_cpu = evaluate_accuracy(model.cpu(), tiny_splits.x_test, tiny_splits.y_test)
    assert on_gpu.errors == on_cpu.errors
