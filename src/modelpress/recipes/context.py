"""What a stage function gets (:class:`StageContext`) and gives back (:class:`StageOutput`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from torch import nn

from modelpress.data.base import DataSplits, data_metadata
from modelpress.encode import read_any_model
from modelpress.models import save_model


@dataclass
class StageContext:
    """Everything a stage needs besides its options.

    Attributes:
        splits: the recipe's data set.
        seed: the recipe's seed (training configs and model initialisation).
        folder: the stage's own folder (``RUNDIR/stage_<i>_<name>``): outputs and checkpoints go here.
        load: name of an earlier stage -> a fresh copy of its model (so stages never share modules).
        output_of: name of an earlier stage -> its output file.
        progress: progress bars (``None``: only on a terminal; ``False``: silent).
        callbacks: extra training callbacks (``tune`` reports validation accuracy through them).
        base_dir: the recipe's folder (relative ``load`` paths).
        recipe_name, stage_name: recorded in the files written.
    """

    splits: DataSplits
    seed: int
    folder: Path
    load: Callable[[str], nn.Module]
    output_of: Callable[[str], Path]
    progress: bool | None = False
    callbacks: tuple = ()
    base_dir: Path = Path(".")
    recipe_name: str = ""
    stage_name: str = ""

    def checkpoint(self, tag: str = "train") -> Path:
        """Where a training run of this stage checkpoints (resumed when the stage is rerun)."""
        return self.folder / f"{tag}.ckpt"

    def save(self, model: nn.Module, kind: str, **extra) -> Path:
        """Write ``model`` as ``model.mpk`` in the stage folder, with where it came from."""
        path = self.folder / "model.mpk"
        meta = {"data": data_metadata(self.splits), "method": f"recipe:{kind}", "recipe": self.recipe_name,
                "stage": self.stage_name, **extra}
        save_model(model, path, extra=meta)
        return path


@dataclass
class StageOutput:
    """A finished stage: its file, the model measured (an ``OnnxModel`` for ONNX files), the PyTorch
    model whose parameters and FLOPs it has (``None``: ``model`` itself), and stage-specific figures."""

    path: Path
    model: nn.Module
    counted: nn.Module | None = None
    info: dict = field(default_factory=dict)


def read_model(path: str | Path) -> nn.Module:
    """A ``.mpk`` model or a compressed ``.mpz`` file, told apart by content, in eval mode."""
    return read_any_model(path).model.eval()
