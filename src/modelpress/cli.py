"""The ``modelpress`` command: argument parsing only; every command calls one Python function.

Bad input (unknown model, missing data, corrupt file, class-count mismatch) prints one line
``modelpress: error: ...`` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from modelpress import __version__
from modelpress.core.errors import ModelpressError

EPILOG_TRAIN = """examples:
  modelpress train --model mlp:1200-1200 --dropout 0.5 --jitter 2 --data fashion-mnist --epochs 20 -o teacher.mpk
  modelpress train --model lenet5 --data ~/my-mnist-folder --epochs 10 -o lenet5.mpk
  modelpress train ... -o teacher.mpk --resume      # continue after an interruption
"""

EPILOG_COMPRESS = """examples:
  modelpress compress lenet300.mpk --data fashion-mnist --sparsity 0.92 --bits fc=5 -o lenet300.mpz
  modelpress compress lenet5.mpk --data fashion-mnist --quality 1.0 --prune-steps 3 --bits fc=5,conv=8 -o lenet5.mpz
  modelpress evaluate lenet300.mpz --data fashion-mnist --json      # measured on the file as written
"""

# Command modules that add their own sub-commands: each defines ``register(sub)``, which adds its
# parsers and sets ``handler`` (a function of the parsed args) as a parser default. Keeping their
# options beside their handlers stops this file from growing with every family.
PLUGGED_COMMANDS: tuple[str, ...] = ("modelpress.commands_mimic", "modelpress.commands_recipes",
                                     "modelpress.commands_distributed", "modelpress.commands_text")

DISTILL_METHODS = ["hinton", "logits", "fitnets", "attention", "fsp", "early-stopped", "born-again", "self",
                   "assistant", "mutual", "specialists"]

EPILOG_SHRINK = """examples:
  modelpress shrink vgg.mpk --data fashion-mnist --channels 0.5 -o vgg.half.mpk       # half the channels, L1 norm
  modelpress shrink lenet5.mpk --data fashion-mnist --low-rank tucker --flop-budget 0.5 -o lenet5.tucker.mpk
  modelpress shrink mlp.mpk --data fashion-mnist --low-rank svd --energy 0.9 -o mlp.svd.mpk
  modelpress shrink vgg.mpk --data fashion-mnist --separable --finetune-epochs 5 -o vgg.sep.mpk
  modelpress export vgg.half.mpk --onnx vgg.half.int8.onnx --int8 static --data fashion-mnist   # then int8
"""

EPILOG_EXPORT = """examples:
  modelpress export student.mpk --onnx student.onnx                          # float, checked against PyTorch
  modelpress export lenet5.mpk --onnx lenet5.int8.onnx --int8 static --data fashion-mnist --latency
  modelpress export mlp.mpk --onnx mlp.int8.onnx --int8 dynamic
  modelpress export lenet300.mpz --onnx lenet300.onnx                         # a Deep Compression file, decoded
"""

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


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=True, metavar="NAME|DIR",
                   help="fashion-mnist, mnist, digits, breast-cancer, wine, mnist1d, or a folder of MNIST-layout IDX files")
    g.add_argument("--val-size", type=float, default=None, metavar="N",
                   help="validation examples taken from the training split (count, or fraction if < 1)")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="use only N training examples (quick runs)")
    g.add_argument("--limit-test", type=int, default=None, metavar="N", help="use only N validation and test examples")
    g.add_argument("--seed", type=int, default=0, help="seeds the split, initialisation and training (default 0)")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], default="sgd")
    g.add_argument("--lr", type=float, default=0.05, help="initial learning rate (default 0.05)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--schedule", choices=["constant", "step", "cosine", "exponential"], default="cosine")
    g.add_argument("--max-norm", type=float, default=None, help="max L2 norm of each unit's incoming weights")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm to this before each step")
    g.add_argument("--patience", type=int, default=None, help="early stopping: epochs without validation gain")
    g.add_argument("--jitter", type=int, default=0, metavar="PIXELS", help="shift training images by up to PIXELS")
    g.add_argument("--resume", action="store_true", help="continue from OUTPUT.ckpt if it exists")
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--grad-compression", choices=["terngrad", "powersgd"], default=None,
                   help="under torchrun: exchange ternary (TernGrad) or low-rank (PowerSGD) gradients, not fp32")
    g.add_argument("--powersgd-rank", type=int, default=1, help="rank of PowerSGD's gradient factors (default 1)")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="FILE.mpk", help="where to write the trained model")
    p.add_argument("--json", action="store_true", help="print the final measurements as one JSON object")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelpress",
        description="Make trained classifiers small and fast, with a report of what was gained and lost.",
    )
    parser.add_argument("--version", action="version", version=f"modelpress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a model from the zoo", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a zoo architecture on a data set and save it as a .mpk file.")
    p.add_argument("--model", required=True, metavar="ARCH",
                   help="mlp:H1-H2-..., lenet300_100, lenet5, vgg_mini[:BASE], mobilenetv2_tiny, cnn:C1-C2-..., "
                        "shallow_cnn:C-H; for 1-D sequences lstm:H1-..., gru:H1-..., cnn1d[:C1-C2-...]")
    p.add_argument("--dropout", type=float, default=None, help="hidden-layer dropout (mlp, vgg_mini)")
    p.add_argument("--model-option", action="append", default=None, metavar="KEY=VALUE",
                   help="any other architecture option, e.g. bidirectional=true, readout=last, pool=mean; repeatable")
    p.add_argument("--input-dropout", type=float, default=None, help="input dropout (mlp)")
    _add_data_args(p)
    _add_train_args(p)
    _add_output_args(p)

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
    _add_data_args(p)
    _add_train_args(p)
    _add_output_args(p)

    p = sub.add_parser("layers", help="list a model's layers and their output shapes (for --layers)",
                       description="Print every named layer of a model file with the shape of its output on one example.")
    p.add_argument("model", metavar="MODEL", help="a .mpk model file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compress", help="Deep Compression: prune, share weights, entropy-code into a .mpz file",
                       epilog=EPILOG_COMPRESS, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Prune (then retrain), quantize by weight sharing (then fine-tune the centroids) and "
                                   "Huffman/ANS-code a trained model; writes OUT.mpz and OUT.report.md/.json/.png.")
    p.add_argument("model", metavar="MODEL", help="a trained .mpk model")
    g = p.add_argument_group("pruning")
    how = g.add_mutually_exclusive_group()
    how.add_argument("--sparsity", type=float, default=None, help="fraction of weights removed (default 0.9)")
    how.add_argument("--quality", type=float, default=None, help="Han et al.'s threshold: remove |w| <= quality x std")
    g.add_argument("--criterion", choices=["magnitude", "global", "sensitivity"], default="magnitude",
                   help="with --sparsity: per-layer (magnitude), one threshold for all layers (global), or the "
                        "kept weights spread over the layers by a sensitivity scan on the validation split")
    g.add_argument("--prune-steps", type=int, default=1, help="iterative pruning in N steps (default 1)")
    g.add_argument("--retrain-epochs", type=int, default=5, help="retraining epochs after each pruning step")
    g.add_argument("--retrain-lr", type=float, default=0.01)
    g.add_argument("--gradual", type=float, default=None, metavar="FRACTION",
                   help="prune gradually within one retraining run of --retrain-epochs, reaching the targets after "
                        "this fraction of it (Zhu & Gupta's ramp) instead of in --prune-steps steps")
    g.add_argument("--batch-size", type=int, default=128, help="batch size of retraining and fine-tuning")
    g = p.add_argument_group("quantization and coding")
    g.add_argument("--bits", default="fc=5,conv=8", help="bits per shared weight (default fc=5,conv=8)")
    g.add_argument("--init", choices=["linear", "density", "random"], default="linear", help="centroid initialisation")
    g.add_argument("--finetune-epochs", type=int, default=3, help="centroid fine-tuning epochs (0: none)")
    g.add_argument("--finetune-lr", type=float, default=1e-4, help="Adam learning rate of the centroids")
    g.add_argument("--index-bits", default="fc=5,conv=8", help="bits per relative sparse index")
    g.add_argument("--no-context-masks", action="store_true",
                   help="store every sparsity pattern as relative indices (readable by older modelpress), not the "
                        "context-coded mask or spatial layout where that is smaller")
    g.add_argument("--float16", action="store_true",
                   help="round centroids, biases and every other float the file stores to float16 after fine-tuning: "
                        "half their bytes")
    g = p.add_argument_group("retraining against the uncompressed model (beyond the paper)")
    g.add_argument("--self-distill", action="store_true",
                   help="retrain and fine-tune with the uncompressed model's soft targets as well as the labels")
    g.add_argument("--temperature", type=float, default=2.0, help="with --self-distill (default 2)")
    g.add_argument("--alpha", type=float, default=0.9, help="with --self-distill: weight of the soft targets (default 0.9)")
    g.add_argument("--teacher", action="append", default=[], metavar="MODEL",
                   help="with --self-distill: also learn from this trained model (repeat for several); the soft targets "
                        "are those of the ensemble of MODEL and these, e.g. other trainings of it")
    _add_data_args(p)
    p.add_argument("--quiet", action="store_true")
    _add_output_args(p)

    p = sub.add_parser("shrink", help="structured pruning / low rank / depthwise-separable blocks, fine-tuned",
                       epilog=EPILOG_SHRINK, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Make a trained model really smaller: remove whole channels and neurons (fixing every "
                                   "layer that consumes them), factorize layers into thinner ones, or replace convolutions "
                                   "by depthwise-separable blocks; fine-tune; report accuracy, params, FLOPs and latency "
                                   "before and after, measured side by side, and say plainly when it is not faster.")
    p.add_argument("model", metavar="MODEL", help="a trained .mpk model (or .ckpt / .mpz)")
    g = p.add_argument_group("how")
    g.add_argument("--channels", type=float, default=None, metavar="FRACTION",
                   help="structured pruning: remove this fraction of every prunable layer's channels/neurons")
    g.add_argument("--criterion", choices=["l1", "l2", "apoz", "taylor"], default="l1",
                   help="channel importance: filter norm, average percentage of zeros, or first-order Taylor (default l1)")
    g.add_argument("--low-rank", choices=["svd", "tucker", "cp"], default=None,
                   help="svd: Linear layers into two; tucker: Tucker-2 convolutions (1x1, kxk, 1x1); cp: CP convolutions")
    g.add_argument("--energy", type=float, default=0.9, help="low rank: keep this fraction of squared singular values")
    g.add_argument("--flop-budget", type=float, default=None, help="low rank: instead, keep at most this fraction of the FLOPs")
    g.add_argument("--separable", action="store_true",
                   help="replace 3x3 convolutions by depthwise-separable blocks, then distil from the original")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--finetune-epochs", type=int, default=3)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient norm while fine-tuning (default 1; CP factors diverge without it)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--resume", action="store_true")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--no-latency", action="store_true", help="skip the side-by-side latency measurement")
    _add_data_args(p)
    _add_output_args(p)

    p = sub.add_parser("export", help="write a model as ONNX (optionally int8), checked in ONNX Runtime",
                       epilog=EPILOG_EXPORT, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Fold any pruning masks, shared weights or binary weights, export to ONNX, run the file "
                                   "in ONNX Runtime and compare its logits with PyTorch's; with --int8, quantize it for a "
                                   "real CPU speed-up (dynamic: fully connected layers; static and qat: convolutions too).")
    p.add_argument("model", metavar="MODEL", help="a .mpk model, .ckpt checkpoint or .mpz compressed model")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--int8", choices=["dynamic", "static", "qat"], default=None,
                   help="write an int8 file instead: dynamic (no data needed), static (calibrated on --data), qat "
                        "(fine-tuned with fake quantization on --data, then static)")
    p.add_argument("--data", default=None, metavar="NAME|DIR", help="calibration (and QAT training) data; also measures accuracy")
    p.add_argument("--calibration", type=int, default=512, metavar="N", help="calibration examples from the training split (default 512)")
    p.add_argument("--epochs", type=int, default=2, help="qat: fine-tuning epochs (default 2)")
    p.add_argument("--lr", type=float, default=0.005, help="qat: SGD learning rate (default 0.005)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--atol", type=float, default=1e-4, help="float export check: |ort - torch| <= atol + rtol |torch|")
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--latency", action="store_true", help="also time PyTorch and ONNX Runtime side by side at batch 1 and 256")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("inspect", help="print a compressed file's manifest and per-layer table",
                       description="Read a .mpz file's manifest (after checking its checksum) and print its per-layer table.")
    p.add_argument("file", metavar="FILE.mpz")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("evaluate", help="measure a model file on a data set",
                       description="Accuracy, errors, parameters, bytes on disk, FLOPs and latency of a model file.")
    p.add_argument("model", metavar="MODEL", help="a file modelpress wrote: .mpk model, .ckpt checkpoint or .mpz compressed model")
    p.add_argument("--data", required=True, metavar="NAME|DIR")
    p.add_argument("--split", choices=["test", "val", "train"], default="test")
    p.add_argument("--limit-test", type=int, default=None, metavar="N", help="evaluate on N examples only")
    p.add_argument("--seed", type=int, default=0, help="split seed (must match training for --split val)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("demo", help="the main job on a built-in default data set",
                       description="Train a 1200-1200 teacher (dropout + jitter), an 800-800 student alone and the same "
                                   "student by distillation on Fashion-MNIST (digits when absent), then print the table.")
    p.add_argument("--quick", action="store_true", help="a one-minute run on a slice of the data")
    p.add_argument("--output-dir", default="demo-output", help="where models and results go (default demo-output/)")
    p.add_argument("--data", default=None, metavar="NAME|DIR", help="data set (default fashion-mnist, else digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")

    for module in PLUGGED_COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from modelpress import commands

        from modelpress import commands_distill, commands_shrink

        builtin = {"train": commands.cmd_train, "distill": commands_distill.cmd_distill, "layers": commands_distill.cmd_layers,
                   "export": commands.cmd_export, "shrink": commands_shrink.cmd_shrink,
                   "evaluate": commands.cmd_evaluate, "demo": commands.cmd_demo,
                   "compress": commands.cmd_compress, "inspect": commands.cmd_inspect}
        handler = getattr(args, "handler", None) or builtin[args.command]
        result = handler(args)
    except ModelpressError as err:
        print(f"modelpress: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("modelpress: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
