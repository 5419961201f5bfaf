"""modelpress: make trained classifiers small and fast, and prove what was gained and lost.

The public API is a set of plain functions over ordinary PyTorch objects:

>>> from modelpress.data import load_dataset
>>> from modelpress.models import build_model
>>> from modelpress.train import train, TrainConfig
>>> from modelpress.distill import distill, DistillConfig
>>> from modelpress.measure import measure_model
"""

__version__ = "0.1.0"
