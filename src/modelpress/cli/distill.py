"""``modelpress distill --method NAME`` and ``modelpress layers``: one small function per method, each a thin
layer over the Python API in :mod:`modelpress.distill` (``cli/main.py`` only assembles the parser)."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

from torch import nn

from modelpress.cli.common import (
    add_data_args,
    add_output_args,
    add_train_args,
    check_model_fits_data,
    finish,
    load_data_from_args,
    model_options,
    progress,
    say,
    train_config_from_args,
)
from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.io import atomic_write
from modelpress.core.seed import seed_everything
from modelpress.data import DataSplits, data_metadata
from modelpress.distill import DistillConfig, EnsembleTeacher, StoredTeacher, TeacherStore, distill, precompute_teacher
from modelpress.distributed import is_main_process
from modelpress.measure import evaluate_accuracy, markdown_table
from modelpress.models import build_model, read_model_file, save_model

# the teacher term's weight when --alpha is not given: each method's paper default
ALPHA_DEFAULTS = {"attention": 0.0, "self": 0.5, "born-again": 1.0, "specialists": 0.5}


EPILOG_DISTILL = """examples:
  modelpress distill --teacher teacher.mpk --student mlp:800-800 --method hinton \\
      --temperature 4 --alpha 0.9 --data fashion-mnist --epochs 20 -o student.mpk
  modelpress distill --teacher t1.mpk --teacher t2.mpk --teacher-weights 0.7,0.3 ...   # weighted ensemble
  modelpress distill --teacher teacher.mpk --method logits --alpha 1 --optimizer adam --lr 0.001 ...  # Ba & Caruana
  modelpress distill ... --store-mass 0.99 --store-max-classes 90                      # truncated stored targets
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method attention ...   # attention transfer (auto layers)
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method fitnets --layers features.2:features.4 ...
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method fsp \\
      --fsp-pair features.1,features.2:features.2,features.4 --fsp-pair features.3,features.4:features.5,features.7 ...
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method early-stopped --kd-epochs 5 --epochs 10 ...
  modelpress distill --teacher cnn.mpk --method born-again --generations 3 ...    # writes OUT and OUT.gen1..2.mpk
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method assistant --assistant cnn:32-64-128 ...
  modelpress distill --student cnn:16-32-64 --method mutual --peers 2 ...          # no teacher: peers teach each other
  modelpress distill --teacher generalist.mpk --student mlp:256 --method specialists --specialists 3 -o spec.json
"""

DISTILL_METHODS = ["hinton", "logits", "fitnets", "attention", "fsp", "early-stopped", "born-again", "self",
                   "assistant", "mutual", "specialists"]


def register(sub) -> None:
    """Add ``distill`` and ``layers``."""
    p = sub.add_parser("distill", help="train a small student from a teacher (any method of the family)", epilog=EPILOG_DISTILL,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Distil a teacher (or a weighted ensemble) into a student: logit-level KD, feature "
                                   "methods (FitNets, attention, FSP) and training schemes (born-again, early-stopped KD, "
                                   "teacher assistants, mutual learning, specialists). docs/distillation.md has the details.")
    p.add_argument("--teacher", action="append", metavar="FILE.mpk",
                   help="teacher model file; repeat for an ensemble (hinton, logits, early-stopped)")
    p.add_argument("--teacher-weights", default=None, metavar="W1,W2,...", help="ensemble weights (normalised)")
    p.add_argument("--teacher-store", default=None, metavar="FILE",
                   help="train from teacher outputs saved earlier with --save-store instead of running a teacher")
    p.add_argument("--student", default=None, metavar="ARCH",
                   help="student architecture, e.g. mlp:800-800 (born-again and self: the teacher's own by default)")
    p.add_argument("--dropout", type=float, default=None, help="student hidden-layer dropout")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="student architecture option (see `modelpress train --help`); repeatable")
    p.add_argument("--method", choices=DISTILL_METHODS, default="hinton", metavar="METHOD",
                   help="one of: " + ", ".join(DISTILL_METHODS) + " (default hinton). logits has unbounded gradients: "
                        "use --optimizer adam --lr 0.001")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T (default 4)")
    p.add_argument("--alpha", type=float, default=None,
                   help="weight of the teacher term; 1-alpha weights hard labels (default 0.9; attention 0, self 0.5, "
                        "born-again 1, specialists 0.5)")
    p.add_argument("--no-precompute", action="store_true",
                   help="run the teacher on every batch instead of storing its outputs once (needed with --jitter)")
    p.add_argument("--store-mass", type=float, default=1.0, help="keep the top classes covering this probability mass")
    p.add_argument("--store-max-classes", type=int, default=None, help="but at most this many classes per example")
    p.add_argument("--save-store", default=None, metavar="FILE", help="also write the stored teacher outputs here")
    g = p.add_argument_group("feature methods (fitnets, attention, fsp); `modelpress layers MODEL` lists layer names")
    g.add_argument("--layers", default=None, metavar="S:T[,S:T...]",
                   help="student:teacher layer pairs (fitnets: the guided and hint layer; attention: every pair); "
                        "default: matched automatically by spatial size")
    g.add_argument("--fsp-pair", action="append", default=None, metavar="SA,SB:TA,TB",
                   help="fsp: two student layers and the two teacher layers whose flow matrix they match; repeatable")
    g.add_argument("--beta", type=float, default=1000.0, help="attention: weight of the attention term (default 1000)")
    g.add_argument("--stage1-epochs", type=int, default=2, help="fitnets, fsp: epochs of the first stage (default 2)")
    g.add_argument("--stage1-lr", type=float, default=1e-3,
                   help="fitnets, fsp: Adam learning rate of the first stage (default 0.001; its losses sum over whole "
                        "feature maps, and SGD at a classifier's step size diverges)")
    g.add_argument("--no-anneal", action="store_true", help="fitnets: keep the KD weight fixed instead of annealing it to 0")
    g = p.add_argument_group("training schemes")
    g.add_argument("--omit-class", type=int, default=None, metavar="K",
                   help="hinton/logits: distil without any example of class K, then fit K's output bias on validation "
                        "data (Hinton et al.'s omitted-class experiment); reports K's test examples right before and after")
    g.add_argument("--kd-epochs", type=int, default=None, help="early-stopped: epochs with the teacher term, then labels only")
    g.add_argument("--generations", type=int, default=3, help="born-again: generations (default 3)")
    g.add_argument("--assistant", action="append", default=None, metavar="ARCH",
                   help="assistant: intermediate architecture(s), teacher side first; repeatable")
    g.add_argument("--peers", type=int, default=2, help="mutual: peers trained together (default 2)")
    g.add_argument("--burn-in", type=int, default=None, metavar="STEPS",
                   help="mutual: steps of labels only before peers pull (default one epoch; 0 pulls from the start)")
    g.add_argument("--specialists", type=int, default=3, help="specialists: number of class clusters (default 3)")
    g.add_argument("--top-k", type=int, default=2, help="specialists: generalist classes that wake specialists (default 2)")
    add_data_args(p)
    add_train_args(p)
    add_output_args(p)
    p.set_defaults(handler=cmd_distill)

    p = sub.add_parser("layers", help="list a model's layers and their output shapes (for --layers)",
                       description="Print every named layer of a model file with the shape of its output on one example.")
    p.add_argument("model", metavar="MODEL", help="a .mpk model file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_layers)



def cmd_distill(args: argparse.Namespace) -> dict:
    """``modelpress distill``: train a student by the chosen method and save it with what it was trained by."""
    splits = load_data_from_args(args)
    say(args, f"data: {splits.describe()}")
    alpha = args.alpha if args.alpha is not None else ALPHA_DEFAULTS.get(args.method, 0.9)
    kd = DistillConfig(method="logits" if args.method == "logits" else "hinton", temperature=args.temperature,
                       alpha=alpha, train=train_config_from_args(args))
    result = METHODS[args.method](args, splits, kd)
    return result if is_main_process() else None  # under torchrun, rank 0 alone reports


# ----- teachers and students ------------------------------------------------------------------------

def _load_teacher(args: argparse.Namespace, splits: DataSplits):
    """The teacher of a logit-level method: a stored-output file, one model or a weighted ensemble."""
    if args.teacher_store:
        if args.teacher:
            raise ConfigError("give either --teacher or --teacher-store, not both")
        store = TeacherStore.load(args.teacher_store)
        if len(store) != len(splits.y_train):
            raise ShapeError(f"{args.teacher_store} holds outputs for {len(store)} examples but the training split has "
                             f"{len(splits.y_train)}: use the same --data, --seed, --val-size and --limit as when it was saved")
        return StoredTeacher(store), [f"store:{args.teacher_store}"]
    if not args.teacher:
        raise ConfigError("give a teacher with --teacher FILE.mpk (repeat it for an ensemble) or --teacher-store FILE")
    loaded = [read_model_file(path) for path in args.teacher]
    for item in loaded:
        check_model_fits_data(item.spec, splits, f"teacher {item.path}")
    weights = None
    if args.teacher_weights:
        try:
            weights = [float(w) for w in args.teacher_weights.split(",")]
        except ValueError:
            raise ConfigError(f"--teacher-weights must be numbers separated by commas; got {args.teacher_weights!r}") from None
    teacher = EnsembleTeacher([item.model for item in loaded], weights)
    if not args.no_precompute:
        if getattr(args, "jitter", 0):
            raise ConfigError("--jitter shifts the student's inputs, so stored teacher outputs would not match: "
                              "add --no-precompute to run the teacher on every batch")
        store = precompute_teacher(teacher, splits.x_train, mass=args.store_mass, max_classes=args.store_max_classes)
        say(args, f"stored teacher outputs: {len(store)} examples, {store.nbytes():,} bytes, "
                   f"mean kept mass {float(store.kept_mass().mean()):.4f}")
        if args.save_store:
            store.save(args.save_store)
        teacher = StoredTeacher(store)
    return teacher, [str(item.path) for item in loaded]


def _one_teacher(args: argparse.Namespace, splits: DataSplits) -> tuple[nn.Module, str]:
    """Methods that look inside the teacher (features) or copy its architecture need one model file."""
    if args.teacher_store:
        raise ConfigError(f"--method {args.method} needs the teacher model itself, not stored outputs (--teacher-store)")
    if not args.teacher or len(args.teacher) != 1:
        raise ConfigError(f"--method {args.method} takes exactly one --teacher FILE.mpk; got {len(args.teacher or [])}")
    loaded = read_model_file(args.teacher[0])
    check_model_fits_data(loaded.spec, splits, f"teacher {loaded.path}")
    return loaded.model.eval(), str(loaded.path)


def _student(args: argparse.Namespace, splits: DataSplits, seed_offset: int = 0) -> nn.Module:
    if not args.student:
        raise ConfigError(f"--method {args.method} needs a student architecture: --student ARCH (e.g. cnn:16-32-64)")
    seed_everything(args.seed + seed_offset)
    return build_model(args.student, splits.input_shape, splits.num_classes, **model_options(args))


def _extra(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig, teachers: list[str], **method_options) -> dict:
    return {"data": data_metadata(splits), "method": f"distill:{args.method}", "teachers": teachers,
            "temperature": kd.temperature, "alpha": kd.alpha, "train": kd.train.to_json(), **method_options}


def _stage1(args: argparse.Namespace, kd: DistillConfig):
    """The first stage of FitNets and FSP: Adam, whatever optimizer the second stage uses."""
    return replace(kd.train, epochs=args.stage1_epochs, optimizer="adam", lr=args.stage1_lr)


def _ckpt(args: argparse.Namespace) -> str:
    return f"{args.output}.ckpt"


# ----- logit-level methods ------------------------------------------------------------------------

def _logit_level(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    """hinton, logits and early-stopped KD: any teacher, ensemble or stored outputs."""
    if args.method == "early-stopped":
        kd = replace(kd, kd_epochs=args.kd_epochs or max(1, kd.train.epochs // 2))
    elif args.kd_epochs is not None:
        raise ConfigError("--kd-epochs belongs to --method early-stopped")
    if args.omit_class is not None:
        return _omitted_class(args, splits, kd)
    teacher, names = _load_teacher(args, splits)
    student = _student(args, splits)
    distill(student, teacher, splits, kd, checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args))
    return finish(args, student, splits, _extra(args, splits, kd, names, kd_epochs=kd.kd_epochs))


def _omitted_class(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    """Hinton et al.'s experiment: no example of one class in the transfer set, then that class's bias fitted."""
    from modelpress.distill.omitted import omitted_class_experiment

    if args.teacher_store:
        raise ConfigError("--omit-class needs the teacher model (--teacher), not stored outputs")
    if not 0 <= args.omit_class < splits.num_classes:
        raise ConfigError(f"--omit-class must be a class index in [0, {splits.num_classes}); got {args.omit_class}")
    teacher, name = _one_teacher(args, splits)
    student = _student(args, splits)
    result = omitted_class_experiment(student, teacher, splits, args.omit_class, kd, checkpoint_path=_ckpt(args),
                                      resume=args.resume, progress=progress(args))
    label = splits.class_names[args.omit_class] if splits.class_names else str(args.omit_class)
    for stage in ("before", "after"):
        r = result[stage]
        say(args, f"class {args.omit_class} ({label}) {stage} the bias fit: {r['class_correct']}/{r['n_class']} right, "
                   f"test accuracy {r['accuracy']:.4f}")
    extra = _extra(args, splits, kd, [name], omitted_class=args.omit_class, bias_offset=result["bias_offset"])
    return finish(args, student, splits, extra) | {"omitted_class": result}


# ----- feature methods ------------------------------------------------------------------------------

def _fitnets(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.features import match_layers, parse_layer_pairs
    from modelpress.distill.hints import HintConfig, fitnets

    teacher, name = _one_teacher(args, splits)
    student = _student(args, splits)
    if args.layers:
        pairs = parse_layer_pairs(args.layers, "--layers")
        if len(pairs) != 1:
            raise ConfigError(f"fitnets guides one student layer by one teacher layer: give one --layers S:T, got {len(pairs)}")
    else:
        matched = match_layers(student, teacher, splits.x_train[:2])
        pairs = (matched[len(matched) // 2],)  # FitNets guides the middle of the student by the middle of the teacher
    (s_layer, t_layer), = pairs
    say(args, f"hint: student {s_layer} <- teacher {t_layer}")
    config = HintConfig(s_layer, t_layer, stage1=_stage1(args, kd), kd=kd, anneal=not args.no_anneal)
    fitnets(student, teacher, splits, config, checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args))
    return finish(args, student, splits, _extra(args, splits, kd, [name], layers=[s_layer, t_layer],
                                                 stage1_epochs=args.stage1_epochs, anneal=not args.no_anneal))


def _attention(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.attention import AttentionConfig, attention_transfer
    from modelpress.distill.features import match_layers, parse_layer_pairs

    teacher, name = _one_teacher(args, splits)
    student = _student(args, splits)
    pairs = parse_layer_pairs(args.layers, "--layers") if args.layers else tuple(match_layers(student, teacher, splits.x_train[:2]))
    say(args, "attention pairs: " + ", ".join(f"{s} <- {t}" for s, t in pairs))
    config = AttentionConfig(pairs=pairs, beta=args.beta, kd=kd)
    attention_transfer(student, teacher, splits, config, checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args))
    return finish(args, student, splits, _extra(args, splits, kd, [name], layers=[list(p) for p in pairs], beta=args.beta))


def _fsp(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.fsp import FSPConfig, fsp_distill

    teacher, name = _one_teacher(args, splits)
    student = _student(args, splits)
    if not args.fsp_pair:
        raise ConfigError("fsp needs the layers of each flow matrix: --fsp-pair SA,SB:TA,TB (repeatable; "
                          "`modelpress layers MODEL` lists the names). Student and teacher matrices must have equal channel counts")
    student_pairs, teacher_pairs = [], []
    for text in args.fsp_pair:
        student_side, sep, teacher_side = text.partition(":")
        s_layers, t_layers = student_side.split(","), teacher_side.split(",")
        if not sep or len(s_layers) != 2 or len(t_layers) != 2:
            raise ConfigError(f"--fsp-pair wants SA,SB:TA,TB (two student layers, two teacher layers); got {text!r}")
        student_pairs.append(tuple(s_layers))
        teacher_pairs.append(tuple(t_layers))
    config = FSPConfig(student_pairs=tuple(student_pairs), teacher_pairs=tuple(teacher_pairs),
                       stage1=_stage1(args, kd), stage2=kd.train)
    fsp_distill(student, teacher, splits, config, checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args))
    return finish(args, student, splits, _extra(args, splits, kd, [name], fsp_pairs=args.fsp_pair, stage1_epochs=args.stage1_epochs))


# ----- training schemes -------------------------------------------------------------------------------

def _side_file(args: argparse.Namespace, tag: str) -> Path:
    out = Path(args.output)
    return out.with_name(f"{out.stem}.{tag}{out.suffix or '.mpk'}")


def _save_side(args: argparse.Namespace, splits: DataSplits, model: nn.Module, tag: str, extra: dict) -> dict:
    """Save one of several models a scheme produces beside OUTPUT; returns its test accuracy."""
    path = _side_file(args, tag)
    save_model(model, path, extra=extra)
    accuracy = evaluate_accuracy(model, splits.x_test, splits.y_test).accuracy
    say(args, f"saved {path}: test accuracy {accuracy:.4f}")
    return {"file": str(path), "test_accuracy": accuracy}


def _born_again(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.schemes import born_again, self_compress

    if args.student:
        raise ConfigError(f"--method {args.method} trains the teacher's own architecture: drop --student")
    teacher, name = _one_teacher(args, splits)
    work = Path(f"{args.output}.generations")
    if args.method == "self":
        student = self_compress(teacher, splits, kd, checkpoint_dir=work, resume=args.resume, progress=progress(args))
        result = finish(args, student, splits, _extra(args, splits, kd, [name]))
        shutil.rmtree(work, ignore_errors=True)
        return result
    bans = born_again(teacher, splits, kd, generations=args.generations, checkpoint_dir=work, resume=args.resume,
                      progress=progress(args))
    extra = _extra(args, splits, kd, [name], generations=args.generations)
    earlier = [_save_side(args, splits, model, f"gen{k + 1}", extra | {"generation": k + 1})
               for k, model in enumerate(bans.generations[:-1])]
    ensembles = {f"ensemble_gen1-{k}": evaluate_accuracy(bans.ensemble(k), splits.x_test, splits.y_test).accuracy
                 for k in range(2, len(bans.generations) + 1)}
    for label, accuracy in ensembles.items():
        say(args, f"{label}: test accuracy {accuracy:.4f}")
    result = finish(args, bans.generations[-1], splits, extra | {"generation": args.generations})
    shutil.rmtree(work, ignore_errors=True)
    return result | {"earlier_generations": earlier, **ensembles}


def _assistant(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.schemes import teacher_assistant_chain

    if not args.assistant:
        raise ConfigError("--method assistant needs at least one --assistant ARCH (an architecture between teacher and student)")
    teacher, name = _one_teacher(args, splits)
    assistants = []
    for k, arch in enumerate(args.assistant):
        seed_everything(args.seed + 1000 + k)
        assistants.append(build_model(arch, splits.input_shape, splits.num_classes))
    work = Path(f"{args.output}.chain")
    chain = teacher_assistant_chain(teacher, assistants, _student(args, splits), splits, kd, checkpoint_dir=work,
                                    resume=args.resume, progress=progress(args))
    extra = _extra(args, splits, kd, [name], assistants=args.assistant)
    saved = [_save_side(args, splits, model, f"assistant{k + 1}", extra) for k, model in enumerate(chain.assistants)]
    result = finish(args, chain.student, splits, extra)
    shutil.rmtree(work, ignore_errors=True)
    return result | {"assistants": saved}


def _mutual(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.mutual import MutualConfig, mutual_learning

    if args.teacher or args.teacher_store:
        raise ConfigError("--method mutual trains peers that teach each other: drop --teacher")
    if args.peers < 2:
        raise ConfigError(f"--peers must be at least 2; got {args.peers}")
    peers = [_student(args, splits, seed_offset=k) for k in range(args.peers)]
    # without a burn-in, peers pulled together from random initialisation agree on their early mistakes
    burn_in = args.burn_in if args.burn_in is not None else -(-len(splits.y_train) // kd.train.batch_size)
    config = MutualConfig(peers=args.peers, temperature=kd.temperature, weight=1.0, burn_in_steps=burn_in, train=kd.train)
    result = mutual_learning(peers, splits, config, checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args))
    extra = _extra(args, splits, kd, [], peers=args.peers, burn_in_steps=burn_in)
    saved = [_save_side(args, splits, model, f"peer{k + 1}", extra) for k, model in enumerate(result.peers[1:], start=1)]
    cohort = evaluate_accuracy(result.cohort, splits.x_test, splits.y_test).accuracy
    say(args, f"cohort (mean of the peers' probabilities): test accuracy {cohort:.4f}")
    return finish(args, result.peers[0], splits, extra) | {"other_peers": saved, "cohort_accuracy": cohort}


def _specialists(args: argparse.Namespace, splits: DataSplits, kd: DistillConfig) -> dict:
    from modelpress.distill.specialists import SpecialistConfig, train_specialists

    generalist, name = _one_teacher(args, splits)
    if not args.student:
        raise ConfigError("--method specialists needs the specialists' architecture: --student ARCH")

    def make_specialist(outputs: int) -> nn.Module:
        return build_model(args.student, splits.input_shape, outputs)

    config = SpecialistConfig(n_specialists=args.specialists, temperature=kd.temperature, alpha=kd.alpha,
                              top_k=args.top_k, train=kd.train)
    ensemble = train_specialists(generalist, make_specialist, splits, config, checkpoint_dir=Path(f"{args.output}.specialists"),
                                 resume=args.resume, progress=progress(args))
    extra = _extra(args, splits, kd, [name], top_k=args.top_k)
    files = []
    for k, (model, classes) in enumerate(zip(ensemble.specialists, ensemble.class_sets)):
        # a specialist predicts its classes plus a dustbin: alone it has no accuracy on the full label set
        path = _side_file(args, f"specialist{k + 1}")
        save_model(model, path, extra=extra | {"classes": list(classes), "dustbin": len(classes)})
        files.append({"file": str(path), "classes": list(classes)})
    combined = evaluate_accuracy(ensemble, splits.x_test, splits.y_test).accuracy
    alone = evaluate_accuracy(generalist, splits.x_test, splits.y_test).accuracy
    manifest = {"format": "modelpress-specialists", "version": 1, "generalist": name, "specialists": files,
                "top_k": args.top_k, "generalist_test_accuracy": alone, "combined_test_accuracy": combined}
    with atomic_write(args.output) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    say(args, f"generalist alone {alone:.4f}; with {len(files)} specialists {combined:.4f}; manifest {args.output}")
    shutil.rmtree(f"{args.output}.specialists", ignore_errors=True)
    return {"output": str(args.output), **manifest}


METHODS = {"hinton": _logit_level, "logits": _logit_level, "early-stopped": _logit_level, "fitnets": _fitnets,
           "attention": _attention, "fsp": _fsp, "born-again": _born_again, "self": _born_again, "assistant": _assistant,
           "mutual": _mutual, "specialists": _specialists}


# ----- modelpress layers -----------------------------------------------------------------------------

def cmd_layers(args: argparse.Namespace) -> dict:
    """``modelpress layers``: every named layer and its output shape on one example (what --layers takes)."""
    import torch

    from modelpress.distill.features import feature_shapes, layer_names

    loaded = read_model_file(args.model)
    model = loaded.model.eval()
    shapes = feature_shapes(model, torch.zeros(1, *loaded.spec.input_shape), layer_names(model))
    rows = [{"layer": name, "type": type(dict(model.named_modules())[name]).__name__, "output": "x".join(map(str, shape))}
            for name, shape in shapes.items()]
    if not args.json:
        print(markdown_table(rows, ["layer", "type", "output"]), end="")
    return {"model": str(args.model), "layers": rows}

