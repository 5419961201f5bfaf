"""``MimicMLPClassifier``: compress any classifier into a small MLP (Bucila, Caruana et al., 2006).

The teacher (a forest, a boosted ensemble, a pipeline, a list of them, or a network) labels the
training rows plus a large synthetic set drawn near them (:mod:`modelpress.tabular.synthetic`).
A one-hidden-layer MLP is trained to match those labels. The teacher's knowledge of the space
between the examples is what the student gains over training on the labels alone.

It is a scikit-learn estimator: ``fit`` / ``predict`` / ``predict_proba`` / ``score``,
parameters stored as given, fitted state in attributes ending in ``_``. The fitted network is an
ordinary ``nn.Module`` (``module_``, :class:`TabularMLP`) that takes raw feature rows, so it can
be exported to ONNX as is.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
from torch import nn

from modelpress.core.errors import ConfigError
from modelpress.tabular.synthetic import categorical_mask, teacher_transfer_set

__all__ = ["MIMIC_TARGETS", "MimicMLPClassifier", "TabularMLP"]

MIMIC_TARGETS = ("proba", "logits", "labels")


class TabularMLP(nn.Module):
    """An MLP over raw feature rows: standardises numeric columns and one-hot codes nominal ones itself.

    Args:
        mean, std: ``(F,)`` statistics of the training rows (nominal columns ignored).
        categories: ``{column: sorted category values}`` for nominal columns; an unseen value codes
            as all zeros.
        hidden: widths of the hidden ReLU layers.
        num_classes: outputs ``C``.

    Shapes: ``(B, F)`` float -> logits ``(B, C)``.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray, categories: dict[int, np.ndarray], hidden: tuple[int, ...],
                 num_classes: int) -> None:
        super().__init__()
        numeric = [j for j in range(len(mean)) if j not in categories]
        self.register_buffer("numeric_columns", torch.tensor(numeric, dtype=torch.long))
        self.register_buffer("mean", torch.tensor(np.asarray(mean)[numeric], dtype=torch.float32))
        self.register_buffer("std", torch.tensor(np.where(std > 0, std, 1.0)[numeric], dtype=torch.float32))
        self.nominal_columns = sorted(categories)
        for j in self.nominal_columns:
            self.register_buffer(f"categories_{j}", torch.tensor(categories[j], dtype=torch.float32))
        width = len(numeric) + sum(len(v) for v in categories.values())
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw rows ``(B, F)`` -> network inputs ``(B, F')``."""
        parts = [(x[:, self.numeric_columns] - self.mean) / self.std]
        for j in self.nominal_columns:
            parts.append((x[:, j:j + 1] == getattr(self, f"categories_{j}")).float())
        return torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encode(x))


def _mimic_loss(logits: torch.Tensor, target: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if kind == "logits":
        return F.mse_loss(logits, target)  # Ba & Caruana: regress the teacher's logits
    if kind == "labels":
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits / temperature, dim=1)).sum(dim=1).mean()


class MimicMLPClassifier(ClassifierMixin, BaseEstimator):
    """An MLP student trained on real + synthetic rows labelled by a teacher.

    Args:
        teacher: ``"random_forest"``, ``"gradient_boosting"``, an estimator with ``predict_proba``
            (fitted: used as is; unfitted: a clone is fitted on ``X, y``), an ``nn.Module`` mapping
            ``(B, F)`` to logits, or a list of these (probabilities averaged). ``None`` trains the
            same network on the true labels alone (the baseline; needs ``synthetic="none"``).
        hidden_layer_sizes: hidden widths; Bucila et al. used one layer.
        target: what the student matches: ``"proba"`` (soft cross-entropy), ``"logits"`` (squared
            error on the teacher's log-probabilities) or ``"labels"`` (the teacher's argmax).
        temperature: with ``target="proba"``, softens teacher and student alike (1 = plain).
        synthetic: ``"munge"``, ``"smear"`` or ``"none"``; ``n_synthetic`` rows are added.
        p, s, scale: MUNGE swap probability and local spread; smearing noise in attribute stds.
        categorical_features: indices (or a mask) of integer-coded nominal columns.
        max_epochs, batch_size, learning_rate, weight_decay: Adam training of the student.
        validation_fraction, n_iter_no_change: early stopping on held-out transfer rows (0 disables).
        random_state: seeds the teacher, the synthetic rows, initialisation and batching.
        verbose: show a progress bar over epochs (with the held-out loss).

    Attributes:
        classes_, n_features_in_, teacher_ (the ready teacher), module_ (:class:`TabularMLP`),
        n_synthetic_ (rows added), n_epochs_ (epochs run), fidelity_ (share of held-out transfer
        rows on which student and teacher agree; ``nan`` without early stopping).
    """

    def __init__(self, teacher="random_forest", hidden_layer_sizes=(128,), target="proba", temperature=1.0,
                 synthetic="munge", n_synthetic=20000, p=0.5, s=1.0, scale=0.1, categorical_features=None,
                 max_epochs=100, batch_size=256, learning_rate=1e-3, weight_decay=0.0, validation_fraction=0.1,
                 n_iter_no_change=10, random_state=None, verbose=False):
        self.teacher = teacher
        self.hidden_layer_sizes = hidden_layer_sizes
        self.target = target
        self.temperature = temperature
        self.synthetic = synthetic
        self.n_synthetic = n_synthetic
        self.p = p
        self.s = s
        self.scale = scale
        self.categorical_features = categorical_features
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> None:
        if self.target not in MIMIC_TARGETS:
            raise ConfigError(f"target must be one of {', '.join(MIMIC_TARGETS)}; got {self.target!r}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if any(int(h) < 1 for h in self.hidden_layer_sizes):
            raise ConfigError(f"hidden_layer_sizes must be positive widths, got {self.hidden_layer_sizes}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_epochs < 1 or self.batch_size < 1:
            raise ConfigError("max_epochs and batch_size must be >= 1")

    def fit(self, X, y):
        """Fit the teacher if needed, label real + synthetic rows with it, train the MLP; returns ``self``."""
        self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise ConfigError(f"a classifier needs at least two classes; y has only one class ({self.classes_[0]!r})")
        seed = int(check_random_state(self.random_state).randint(2**31 - 1))
        nominal = categorical_mask(self.categorical_features, X.shape[1])
        if self.teacher is None:
            transfer, targets, kind = self._labels_alone(X, y)
        else:
            transfer, targets, kind = self._teacher_targets(X, y, nominal, seed)
        categories = {int(j): np.unique(X[:, j]) for j in np.flatnonzero(nominal)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.module_ = TabularMLP(X.mean(axis=0), X.std(axis=0), categories, tuple(int(h) for h in self.hidden_layer_sizes),
                                      len(self.classes_))
            self._train(torch.tensor(transfer, dtype=torch.float32), targets, kind, seed)
        return self

    def _labels_alone(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, torch.Tensor, str]:
        """The no-teacher baseline: the same network and training, on the true labels of the real rows."""
        if self.synthetic != "none" and self.n_synthetic:
            raise ConfigError("synthetic rows need a teacher to label them; with teacher=None set synthetic='none'")
        self.teacher_, self.n_synthetic_ = None, 0
        return X, torch.tensor(np.searchsorted(self.classes_, y), dtype=torch.long), "labels"

    def _teacher_targets(self, X: np.ndarray, y: np.ndarray, nominal: np.ndarray, seed: int) -> tuple[np.ndarray, torch.Tensor, str]:
        """Real + synthetic rows and what the teacher says about them, in the form ``target`` asks for."""
        teacher, transfer = teacher_transfer_set(self, X, y, nominal, seed)
        if self.target == "logits":
            return transfer, torch.tensor(teacher.predict_logits(transfer), dtype=torch.float32), "logits"
        proba = teacher.predict_proba(transfer)
        if self.target == "labels":
            return transfer, torch.tensor(proba.argmax(axis=1), dtype=torch.long), "labels"
        sharpened = proba ** (1.0 / self.temperature)
        return transfer, torch.tensor(sharpened / sharpened.sum(axis=1, keepdims=True), dtype=torch.float32), "proba"

    def _train(self, x: torch.Tensor, targets: torch.Tensor, kind: str, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(x), generator=generator)
        n_val = int(round(self.validation_fraction * len(x))) if self.validation_fraction > 0 else 0
        val, fit_rows = order[:n_val], order[n_val:]
        optimizer = torch.optim.Adam(self.module_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        best_loss, best_state, stale = float("inf"), None, 0
        self.module_.train()
        from tqdm.auto import tqdm

        epochs = tqdm(range(1, self.max_epochs + 1), desc="mimic MLP", unit="epoch", disable=not self.verbose, leave=False)
        for epoch in epochs:
            for batch in fit_rows[torch.randperm(len(fit_rows), generator=generator)].split(self.batch_size):
                loss = _mimic_loss(self.module_(x[batch]), targets[batch], kind, self.temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.n_epochs_ = epoch
            if n_val == 0:
                continue
            with torch.no_grad():
                val_loss = float(_mimic_loss(self.module_(x[val]), targets[val], kind, self.temperature))
            epochs.set_postfix(held_out_loss=f"{val_loss:.4f}")
            if val_loss < best_loss - 1e-6:
                best_loss, best_state, stale = val_loss, copy.deepcopy(self.module_.state_dict()), 0
            else:
                stale += 1
                if stale >= self.n_iter_no_change:
                    break
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.module_.eval()
        self.fidelity_ = float("nan")
        if n_val:
            with torch.no_grad():
                student = self.module_(x[val]).argmax(dim=1)
            teacher = targets[val] if kind == "labels" else targets[val].argmax(dim=1)
            self.fidelity_ = float((student == teacher).double().mean())

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(N, C)``, columns in ``classes_`` order."""
        check_is_fitted(self, "module_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        with torch.no_grad():
            logits = self.module_(torch.tensor(X, dtype=torch.float32))
        return torch.softmax(logits.double(), dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``(N,)`` drawn from ``classes_``."""
        check_is_fitted(self, "module_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
