"""``modelpress distill --method NAME`` and ``modelpress layers``: the method's flags are generated from its
config (:mod:`modelpress.distill.methods`), and its handler, the same function recipes call, does the work;
this module loads the teacher, builds the student and writes what the method made."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from torch import nn

from modelpress.cli.common import (
    add_data_args,
    add_output_args,
    check_model_fits_data,
    finish,
    load_data_from_args,
    model_options,
    progress,
    say,
)
from modelpress.cli.options import add_options
from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.options import flat_fields, to_dict
from modelpress.data import DataSplits, data_metadata
from modelpress.distill import (
    EnsembleTeacher,
    StoredTeacher,
    TeacherStore,
    precompute_teacher,
)
from modelpress.distill.methods import (
    METHODS,
    DistillOutcome,
    MethodEntry,
    scheme_dir,
    student_builder,
)
from modelpress.distill.specialists import write_specialists_manifest
from modelpress.distributed import is_main_process
from modelpress.measure import evaluate_accuracy, markdown_table
from modelpress.models import read_model_file, save_model

EPILOG_DISTILL = """examples:
  modelpress distill --teacher teacher.mpk --student mlp:800-800 --method hinton \\
      --temperature 4 --alpha 0.9 --data fashion-mnist --epochs 20 -o student.mpk
  modelpress distill --teacher t1.mpk --teacher t2.mpk --teacher-weights 0.7,0.3 ...   # weighted ensemble
  modelpress distill --teacher teacher.mpk --method logits --alpha 1 --optimizer adam --lr 0.001 ...  # Ba & Caruana
  modelpress distill ... --store-mass 0.99 --store-max-classes 90                      # truncated stored targets
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method fitnets --layers features.2:features.4 ...
  modelpress distill --teacher vgg.mpk --student cnn:16-32-64 --method fsp \\
      --fsp-pair features.1,features.2:features.2,features.4 --fsp-pair features.3,features.4:features.5,features.7 ...
  modelpress distill --teacher cnn.mpk --method born-again --generations 3 ...    # writes OUT and OUT.gen1..2.mpk
  modelpress distill --student cnn:16-32-64 --method mutual --peers 2 ...          # no teacher: peers teach each other
  modelpress distill --teacher generalist.mpk --student mlp:256 --method specialists --specialists 3 -o spec.json
  modelpress distill --teacher vgg.mpk --student mlp:64 --omit-class 3 ...         # --method omitted-class
  modelpress distill --method fitnets --help                                        # one method's options
"""

# the models a scheme makes besides its result, under this key of the JSON summary
SIDE_KEYS = {"born-again": "earlier_generations", "assistant": "assistants", "mutual": "other_peers"}


def _methods_text() -> str:
    return "methods (`--method NAME --help` lists a method's options):\n" + "\n".join(
        f"  {name:14} {METHODS.get(name).summary}" for name in METHODS)


def _add_common(p: argparse.ArgumentParser) -> None:
    """The flags every method shares: teacher, student, method, data, output."""
    p.add_argument("-h", "--help", action=_MethodHelp, nargs=0, help="show this help (after --method NAME: its options)")
    p.add_argument("--method", choices=METHODS.names(), default=None, metavar="METHOD",
                   help="one of: " + ", ".join(METHODS.names()) + " (default hinton; --omit-class K alone: omitted-class)")
    p.add_argument("--teacher", action="append", metavar="FILE.mpk",
                   help="teacher model file; repeat for an ensemble (hinton, logits, early-stopped)")
    p.add_argument("--teacher-weights", default=None, metavar="W1,W2,...", help="ensemble weights (normalised)")
    p.add_argument("--teacher-store", default=None, metavar="FILE",
                   help="train from teacher outputs saved earlier with --save-store instead of running a teacher")
    p.add_argument("--student", default=None, metavar="ARCH",
                   help="student architecture, e.g. mlp:800-800 (born-again and self: the teacher's own)")
    p.add_argument("--dropout", type=float, default=None, help="student hidden-layer dropout")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="student architecture option (see `modelpress train --help`); repeatable")
    p.add_argument("--no-precompute", action="store_true",
                   help="run the teacher on every batch instead of storing its outputs once (needed with --jitter)")
    p.add_argument("--store-mass", type=float, default=1.0, help="keep the top classes covering this probability mass")
    p.add_argument("--store-max-classes", type=int, default=None, help="but at most this many classes per example")
    p.add_argument("--save-store", default=None, metavar="FILE", help="also write the stored teacher outputs here")
    add_data_args(p)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    add_output_args(p)


def _method_skip(entry: MethodEntry) -> tuple[str, ...]:
    return (*entry.skip, "seed")  # --seed is a data flag, shared by the split and the run


def _add_method_options(p: argparse.ArgumentParser, entry: MethodEntry) -> None:
    g = p.add_argument_group(f"--method {entry.name}: {entry.summary}")
    add_options(g, entry.config, skip=_method_skip(entry))


def _add_every_method_option(p: argparse.ArgumentParser) -> list[str]:
    """Every method's flags, once each and hidden: the parse accepts them, the handler keeps the chosen method's."""
    added: list[str] = []
    for name in METHODS:
        entry = METHODS.get(name)
        names = [f.name for f in flat_fields(entry.config) if f.name not in added]
        added += add_options(p, entry.config, skip=(*_method_skip(entry), *added),
                             overrides={n: {"help": argparse.SUPPRESS, "required": False} for n in names})
    return added


class _MethodHelp(argparse.Action):
    """``--help``: the common flags, the method list and the options of ``--method NAME`` given before it (hinton's)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        helper = argparse.ArgumentParser(prog=parser.prog, description=parser.description, add_help=False,
                                         epilog=_methods_text() + "\n\n" + EPILOG_DISTILL,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(helper)
        _add_method_options(helper, METHODS.get(getattr(namespace, "method", None) or "hinton"))
        helper.print_help()
        parser.exit()


def register(sub) -> None:
    """Add ``distill`` and ``layers``."""
    p = sub.add_parser("distill", help="train a small student from a teacher (any method of the family)", add_help=False,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Distil a teacher (or a weighted ensemble) into a student: logit-level KD, feature "
                                   "methods (FitNets, attention, FSP) and training schemes (born-again, early-stopped KD, "
                                   "teacher assistants, mutual learning, specialists). docs/distillation.md has the details.")
    _add_common(p)
    p.set_defaults(handler=cmd_distill, method_options=_add_every_method_option(p))

    p = sub.add_parser("layers", help="list a model's layers and their output shapes (for --layers)",
                       description="Print every named layer of a model file with the shape of its output on one example.")
    p.add_argument("model", metavar="MODEL", help="a .mpk model file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_layers)


# ----- the command ------------------------------------------------------------------------------------

def _chosen(args: argparse.Namespace) -> MethodEntry:
    given = [n for n in args.method_options if hasattr(args, n)]
    return METHODS.get(args.method or ("omitted-class" if "omit_class" in given else "hinton"))


def method_config(args: argparse.Namespace, entry: MethodEntry):
    """The chosen method's config from the flags given (the rest at its declared defaults) and ``--seed``.

    Flags of other methods are ignored with a note (scripts share flag sets across methods), except
    those the method's own config declares but the method refuses (``--kd-epochs`` with ``hinton``).

    Raises:
        ConfigError: a refused flag, or a value the config refuses.
    """
    own = {item.name: item for item in entry.fields()}
    values = {}
    for name in args.method_options:
        if not hasattr(args, name):
            continue
        if name not in own:
            flag = next(f.flag for m in METHODS for f in METHODS.get(m).fields() if f.name == name)
            owners = ", ".join(m for m in METHODS if name in {f.name for f in METHODS.get(m).fields()})
            if name in entry.skip:  # an option of the same config that this method refuses: a mistake, not a leftover
                raise ConfigError(f"{flag} is not an option of --method {entry.name}; it belongs to: {owners}")
            say(args, f"ignored {flag}: an option of {owners}, not of --method {entry.name}")
            continue
        value = getattr(args, name)
        values[name] = None if (own[name].opt.type == "choice" and value == "none") else value
    return entry.build(values | {"seed": args.seed})


def cmd_distill(args: argparse.Namespace) -> dict | None:
    """``modelpress distill``: train by the chosen method and save what it made, with how it was made."""
    entry = _chosen(args)
    config = method_config(args, entry)  # checked before any data is read
    _check_student_flag(args, entry)
    splits = load_data_from_args(args)
    say(args, f"data: {splits.describe()}")
    teacher, names = _teacher_for(args, entry, splits, config)
    builder = student_builder(args.student, splits.input_shape, splits.num_classes, args.seed, **model_options(args))
    outcome = entry.handler(builder if entry.student == "architecture" else None, teacher, splits, config,
                            checkpoint_path=_ckpt(args), resume=args.resume, progress=progress(args), callbacks=(),
                            precompute=not args.no_precompute)
    result = _report(args, entry, splits, config, names, outcome)
    shutil.rmtree(scheme_dir(_ckpt(args)), ignore_errors=True)
    for stage in (1, 2):
        Path(f"{_ckpt(args)}.stage{stage}").unlink(missing_ok=True)
    return result if is_main_process() else None  # under torchrun, rank 0 alone reports


def _check_student_flag(args: argparse.Namespace, entry: MethodEntry) -> None:
    if entry.student == "teacher" and args.student:
        raise ConfigError(f"--method {entry.name} trains the teacher's own architecture: drop --student")
    if entry.student == "architecture" and not args.student:
        raise ConfigError(f"--method {entry.name} needs a student architecture: --student ARCH (e.g. cnn:16-32-64)")


def _ckpt(args: argparse.Namespace) -> str:
    return f"{args.output}.ckpt"


# ----- teachers -------------------------------------------------------------------------------------------

def _teacher_for(args: argparse.Namespace, entry: MethodEntry, splits: DataSplits, config):
    if entry.teacher == "none":
        if args.teacher or args.teacher_store:
            raise ConfigError(f"--method {entry.name} trains peers that teach each other: drop --teacher")
        return None, []
    if entry.teacher == "model":
        teacher, name = _one_teacher(args, entry, splits)
        return teacher, [name]
    return _load_teacher(args, splits)


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
    # one model teaches with its own logits, as in recipes and Python (an ensemble's are log-probabilities)
    teacher = loaded[0].model.eval() if len(loaded) == 1 and weights is None else EnsembleTeacher(
        [item.model for item in loaded], weights)
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


def _one_teacher(args: argparse.Namespace, entry: MethodEntry, splits: DataSplits) -> tuple[nn.Module, str]:
    """Methods that look inside the teacher (features) or copy its architecture need one model file."""
    if args.teacher_store:
        raise ConfigError(f"--method {entry.name} needs the teacher model itself, not stored outputs (--teacher-store)")
    if not args.teacher or len(args.teacher) != 1:
        raise ConfigError(f"--method {entry.name} takes exactly one --teacher FILE.mpk; got {len(args.teacher or [])}")
    loaded = read_model_file(args.teacher[0])
    check_model_fits_data(loaded.spec, splits, f"teacher {loaded.path}")
    return loaded.model.eval(), str(loaded.path)


# ----- writing what the method made -------------------------------------------------------------------

def _side_file(args: argparse.Namespace, tag: str) -> Path:
    out = Path(args.output)
    return out.with_name(f"{out.stem}.{tag}{out.suffix or '.mpk'}")


def _report(args, entry: MethodEntry, splits: DataSplits, config, names: list[str], outcome: DistillOutcome) -> dict:
    """Save the result (the specialists: a manifest) and the side models; the JSON summary."""
    info = {k: v for k, v in outcome.info.items() if k != "report"}
    extra = {"data": data_metadata(splits), "method": f"distill:{entry.name}", "teachers": names,
             "config": to_dict(config), **info}
    if entry.name == "specialists":
        return _write_specialists(args, names[0], outcome, extra)
    saved = []
    for side in outcome.side_models:
        path = _side_file(args, side.tag)
        save_model(side.model, path, extra=extra | side.info)
        accuracy = evaluate_accuracy(side.model, splits.x_test, splits.y_test).accuracy
        say(args, f"saved {path}: test accuracy {accuracy:.4f}")
        saved.append({"file": str(path), "test_accuracy": accuracy})
    for key, value in info.items():
        if isinstance(value, float):
            say(args, f"{key}: {value:.4f}")
    result = finish(args, outcome.model, splits, extra) | info
    if entry.name in SIDE_KEYS:
        result[SIDE_KEYS[entry.name]] = saved
    if "report" in outcome.info:  # the omitted-class experiment: the class before and after its bias fit
        result["omitted_class"] = outcome.info["report"]
    return result


def _write_specialists(args, generalist: str, outcome: DistillOutcome, extra: dict) -> dict:
    files = []
    for side in outcome.side_models:
        # a specialist predicts its classes plus a dustbin: alone it has no accuracy on the full label set
        path = _side_file(args, side.tag)
        save_model(side.model, path, extra=extra | side.info)
        files.append({"file": str(path), "classes": side.info["classes"]})
    manifest = write_specialists_manifest(args.output, generalist, files, top_k=outcome.info["top_k"],
                                          generalist_accuracy=outcome.info["generalist_test_accuracy"],
                                          combined_accuracy=outcome.info["combined_test_accuracy"])
    say(args, f"generalist alone {manifest['generalist_test_accuracy']:.4f}; with {len(files)} specialists "
               f"{manifest['combined_test_accuracy']:.4f}; manifest {args.output}")
    return {"output": str(args.output), **manifest}


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

