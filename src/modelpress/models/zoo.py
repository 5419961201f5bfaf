"""The model zoo: named architectures built from a spec string, an input shape and a class count.

A spec string is ``name`` or ``name:args``, e.g. ``mlp:1200-1200`` or ``vgg_mini:32``. Every model
built here carries its :class:`ModelSpec` as ``model.modelpress_spec`` so it can be saved and
rebuilt without pickling code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn

from modelpress.core.errors import ConfigError, ShapeError
from modelpress.core.registry import Registry
from modelpress.models.arch_args import parse_widths, require_image, take_options
from modelpress.models.sequence import build_cnn1d, build_gru, build_lstm

Builder = Callable[[str, tuple[int, ...], int, dict], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture: spec string, input shape, classes, options, and
    the architecture changes compression made to it since (``surgery``: see :mod:`modelpress.models.surgery`)."""

    arch: str
    input_shape: tuple[int, ...]
    num_classes: int
    options: dict = field(default_factory=dict)
    surgery: tuple = ()

    def to_json(self) -> dict:
        data = asdict(self) | {"input_shape": list(self.input_shape), "surgery": [dict(s) for s in self.surgery]}
        if not self.surgery:  # files of unchanged architectures stay as they always were
            del data["surgery"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        try:
            return cls(
                arch=str(data["arch"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                num_classes=int(data["num_classes"]),
                options=dict(data.get("options", {})),
                surgery=tuple(dict(s) for s in data.get("surgery", ())),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"invalid model spec {data!r}: {err}") from None


def build_model(arch: str, input_shape: tuple[int, ...], num_classes: int, **options) -> nn.Module:
    """Build a registered architecture.

    Args:
        arch: spec string such as ``"mlp:1200-1200"``, ``"lenet5"``, ``"vgg_mini"``.
        input_shape: shape of one example, e.g. ``(1, 28, 28)`` or ``(30,)``.
        num_classes: number of output logits.
        **options: architecture options, e.g. ``dropout=0.5`` for ``mlp``.

    Returns:
        An ``nn.Module`` mapping ``(B, *input_shape)`` to logits ``(B, num_classes)``, with
        ``modelpress_spec`` set.

    Raises:
        ConfigError: unknown name (the message lists the known ones) or bad arguments.
        ShapeError: the architecture cannot take inputs of ``input_shape``.
    """
    name, _, args = arch.partition(":")
    builder = MODELS.get(name)
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    input_shape = tuple(int(d) for d in input_shape)
    model = builder(args, input_shape, num_classes, dict(options))
    model.modelpress_spec = ModelSpec(arch, input_shape, num_classes, dict(options))
    return model


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """Rebuild the architecture described by ``spec`` (weights freshly initialised), surgery included."""
    model = build_model(spec.arch, spec.input_shape, spec.num_classes, **spec.options)
    if spec.surgery:
        from modelpress.models.surgery import replay_surgery

        replay_surgery(model, spec.surgery)
    model.modelpress_spec = spec
    return model


class MLP(nn.Module):
    """Fully connected ReLU net: flatten -> [Linear -> ReLU -> Dropout] * k -> Linear.

    ``input_dropout`` drops input pixels, as in Hinton et al.'s dropout teacher (they used 0.2).
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float, input_dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, num_classes)


def _build_mlp(args: str, input_shape, num_classes, options) -> nn.Module:
    opts = take_options("mlp", options, {"dropout": 0.0, "input_dropout": 0.0})
    for key, value in opts.items():
        if not 0.0 <= float(value) < 1.0:
            raise ConfigError(f"mlp option {key} must be in [0, 1), got {value}")
    return MLP(math.prod(input_shape), parse_widths("mlp", args), num_classes, float(opts["dropout"]), float(opts["input_dropout"]))


def _build_lenet300(args: str, input_shape, num_classes, options) -> nn.Module:
    """LeNet-300-100 (LeCun et al. 1998), the fully connected net of Han et al.'s Table 1."""
    if args:
        raise ConfigError(f"lenet300_100 takes no arguments, got {args!r}")
    return _build_mlp("300-100", input_shape, num_classes, options)


class LeNet5(nn.Module):
    """Caffe's LeNet-5 (20 and 50 5x5 filters, 500 hidden units, 431k weights on 28x28 input).

    This is the variant of Han et al.'s Deep Compression Table 1, not LeCun's 6/16/120/84 net.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (B, 20, (H-4)/2, .)
            nn.Conv2d(20, 50, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),  # (B, 50, h, w)
        )
        h, w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise ShapeError(f"lenet5 needs images of at least 16x16, got {height}x{width}")
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(50 * h * w, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_lenet5(args: str, input_shape, num_classes, options) -> nn.Module:
    if args:
        raise ConfigError(f"lenet5 takes no arguments, got {args!r}")
    take_options("lenet5", options, {})
    c, h, w = require_image("lenet5", input_shape)
    return LeNet5(c, h, w, num_classes)


def _conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True) if groups > 1 or kernel == 1 else nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class VGGMini(nn.Module):
    """The seeds' deep conv teacher scaled to 28x28: 8 conv (3x3, BatchNorm) + 2 fully connected.

    Channels c, c | 2c, 2c | 4c, 4c | 8c, 8c with 2x2 max-pooling between stages (28 -> 14 -> 7 -> 3).
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, base: int, hidden: int, dropout: float):
        super().__init__()
        stages = [base, 2 * base, 4 * base, 8 * base]
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(stages):
            layers += [_conv_bn(cin, cout), _conv_bn(cout, cout)]
            if i < len(stages) - 1:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            cin = cout
        if height < 1 or width < 1:
            raise ShapeError("vgg_mini needs images of at least 8x8")
        self.features = nn.Sequential(*layers)  # (B, 8c, H/8, W/8)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * height * width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_vgg_mini(args: str, input_shape, num_classes, options) -> nn.Module:
    opts = take_options("vgg_mini", options, {"hidden": 256, "dropout": 0.3})
    base = parse_widths("vgg_mini", args)
    if len(base) > 1:
        raise ConfigError(f"vgg_mini takes one base width such as 'vgg_mini:32', got {args!r}")
    c, h, w = require_image("vgg_mini", input_shape)
    return VGGMini(c, h, w, num_classes, base[0] if base else 32, int(opts["hidden"]), float(opts["dropout"]))


class SmallCNN(nn.Module):
    """A plain conv student: per stage a 3x3 conv (BatchNorm, ReLU) and 2x2 max-pooling, then a classifier.

    ``cnn:16-32-64`` gives three stages (28 -> 14 -> 7 -> 3) whose outputs line up with ``vgg_mini``'s
    stages, which is what feature distillation (hints, attention maps) pairs.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, channels: list[int], hidden: int):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in channels:
            layers += [_conv_bn(cin, cout), nn.MaxPool2d(2)]
            height, width, cin = height // 2, width // 2, cout
        if height < 1 or width < 1:
            raise ShapeError(f"cnn with {len(channels)} stages needs images of at least {2 ** len(channels)} pixels a side")
        self.features = nn.Sequential(*layers)  # (B, C_last, H / 2^k, W / 2^k)
        head: list[nn.Module] = [nn.Flatten()]
        features = cin * height * width
        if hidden:
            head += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
            features = hidden
        self.classifier = nn.Sequential(*head, nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_cnn(args: str, input_shape, num_classes, options) -> nn.Module:
    opts = take_options("cnn", options, {"hidden": 0})
    channels = parse_widths("cnn", args) or [16, 32, 64]
    if int(opts["hidden"]) < 0:
        raise ConfigError(f"cnn option hidden must be >= 0, got {opts['hidden']}")
    c, h, w = require_image("cnn", input_shape)
    return SmallCNN(c, h, w, num_classes, channels, int(opts["hidden"]))


class ShallowCNN(nn.Module):
    """Ba & Caruana's shallow mimic: ONE conv layer (5x5, ReLU, 2x2 max-pool) and one wide hidden layer.

    The seeds ask whether deep conv nets need to be deep: this is the student that answers it.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int, channels: int, hidden: int):
        super().__init__()
        if height < 2 or width < 2:
            raise ShapeError(f"shallow_cnn needs images of at least 2x2, got {height}x{width}")
        self.features = nn.Sequential(nn.Conv2d(in_channels, channels, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * (height // 2) * (width // 2), hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_shallow_cnn(args: str, input_shape, num_classes, options) -> nn.Module:
    take_options("shallow_cnn", options, {})
    sizes = parse_widths("shallow_cnn", args) or [16, 512]
    if len(sizes) != 2:
        raise ConfigError(f"shallow_cnn takes 'CHANNELS-HIDDEN' such as 'shallow_cnn:16-512', got {args!r}")
    c, h, w = require_image("shallow_cnn", input_shape)
    return ShallowCNN(c, h, w, num_classes, sizes[0], sizes[1])


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear bottleneck (+ skip when shapes match)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(cin, hidden, kernel=1))
        layers += [
            _conv_bn(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            _conv_bn(hidden, cout, kernel=1, act=False),  # linear bottleneck: no ReLU keeps information
        ]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


class MobileNetV2Tiny(nn.Module):
    """A MobileNetV2 (Sandler et al. 2018) sized for 28x28: inverted residuals, linear bottlenecks,
    depthwise-separable convolutions and global average pooling."""

    # (expansion t, channels c, repeats n, first stride s), as in the paper's Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))

    def __init__(self, in_channels: int, num_classes: int, width: float, last_channels: int):
        super().__init__()

        def scaled(c: int) -> int:
            return max(8, int(round(c * width / 8)) * 8)

        cin = scaled(16)
        layers: list[nn.Module] = [_conv_bn(in_channels, cin)]
        for t, c, n, s in self.SETTINGS:
            cout = scaled(c)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, last_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (B, last_channels)
        return self.classifier(x)


def _build_mobilenetv2_tiny(args: str, input_shape, num_classes, options) -> nn.Module:
    opts = take_options("mobilenetv2_tiny", options, {"width": 1.0, "last_channels": 256})
    if args:
        raise ConfigError(f"mobilenetv2_tiny takes no arguments (use the width option), got {args!r}")
    if float(opts["width"]) <= 0:
        raise ConfigError(f"mobilenetv2_tiny width must be positive, got {opts['width']}")
    c, _, _ = require_image("mobilenetv2_tiny", input_shape)
    return MobileNetV2Tiny(c, num_classes, float(opts["width"]), int(opts["last_channels"]))


# Every built-in architecture, in one place: adding one is a line here, and finding them needs no
# import side effect. Models from elsewhere join with MODELS.register(name)(builder).
BUILT_IN_MODELS: dict[str, Builder] = {
    "mlp": _build_mlp,
    "lenet300_100": _build_lenet300,
    "lenet5": _build_lenet5,
    "vgg_mini": _build_vgg_mini,
    "cnn": _build_cnn,
    "shallow_cnn": _build_shallow_cnn,
    "mobilenetv2_tiny": _build_mobilenetv2_tiny,
    "lstm": build_lstm,
    "gru": build_gru,
    "cnn1d": build_cnn1d,
}

MODELS: Registry[Builder] = Registry("model")
for _name, _builder in BUILT_IN_MODELS.items():
    MODELS.register(_name)(_builder)
