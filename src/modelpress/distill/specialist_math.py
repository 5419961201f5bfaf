"""The tensor arithmetic of specialists (Hinton, Vinyals & Dean 2015, Sec. 5): label and soft-target
remapping onto a specialist's classes plus a dustbin, the dustbin's prior correction, the enriched
training sets, and the KL combination of generalist and specialists at test time. Pure functions of
tensors; :mod:`modelpress.distill.specialists` trains and assembles the models."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from modelpress.core.errors import ConfigError, DataError


def remap_labels(y: torch.Tensor, special: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels ``(N,)`` in ``[0, C)`` -> specialist labels: ``special[i]`` -> i, any other class -> ``len(special)`` (dustbin)."""
    table = torch.full((num_classes,), len(special), dtype=torch.long)
    table[torch.as_tensor(list(special), dtype=torch.long)] = torch.arange(len(special))
    return table[y]


def grouped_log_probs(log_probs: torch.Tensor, special: Sequence[int]) -> torch.Tensor:
    """A full distribution seen by a specialist: ``(B, C)`` log-probs -> ``(B, C_m + 1)``.

    Entry i is ``log p[special[i]]``; the last is the dustbin, ``log sum_{j not special} p_j``.
    """
    idx = torch.as_tensor(list(special), dtype=torch.long, device=log_probs.device)
    others = torch.ones(log_probs.shape[1], dtype=torch.bool, device=log_probs.device)
    others[idx] = False
    dustbin = torch.logsumexp(log_probs[:, others], dim=1, keepdim=True)  # (B, 1)
    return torch.cat([log_probs[:, idx], dustbin], dim=1)  # (B, C_m + 1)


def specialist_log_targets(teacher_logits: torch.Tensor, special: Sequence[int], temperature: float) -> torch.Tensor:
    """The generalist's soft targets for a specialist: ``(B, C)`` logits -> ``(B, C_m + 1)`` log-probs at T.

    ``p_T = softmax(z / T)`` restricted to the special classes, plus the summed mass of the others
    as the dustbin, so each row still sums to 1.
    """
    return grouped_log_probs(F.log_softmax(teacher_logits / temperature, dim=1), special)


def dustbin_logit_correction(true_fraction: float, enriched_fraction: float) -> float:
    """Undo the oversampling of the special classes (Hinton et al. 2015, Sec. 5.1).

    Training on a set where the dustbin has frequency ``pi'`` instead of its true ``pi`` multiplies the
    posterior of each class by its prior ratio (Bayes). Special examples are sampled uniformly among
    themselves, so all special classes share one ratio ``(1 - pi) / (1 - pi')``; relative to them the
    dustbin logit must move by the log odds ratio ``log(pi / (1 - pi)) - log(pi' / (1 - pi'))``.
    (Hinton et al. phrase this as the log of the oversampling factor; the odds ratio is the exact
    amount when only the dustbin logit is changed.)

    Raises:
        ConfigError: a fraction outside ``(0, 1)``.
    """
    for name, value in (("true_fraction", true_fraction), ("enriched_fraction", enriched_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{name} must be in (0, 1); got {value!r}")
    odds = lambda p: torch.logit(torch.tensor(float(p), dtype=torch.float64))  # noqa: E731
    return float(odds(true_fraction) - odds(enriched_fraction))


def enriched_indices(y: torch.Tensor, special: Sequence[int], special_fraction: float, *, seed: int = 0) -> torch.Tensor:
    """Every example of the special classes plus a seeded uniform sample of the rest (Hinton et al. 5.1).

    The rest are sampled without replacement so that special examples make up ``special_fraction``
    of the set, or as close as the available others allow (at least one).

    Returns:
        Sorted indices into ``y`` ``(n,)``.

    Raises:
        DataError: no example of a special class, or none outside them.
    """
    is_special = torch.isin(y, torch.as_tensor(list(special), dtype=y.dtype))
    special_idx, other_idx = is_special.nonzero().flatten(), (~is_special).nonzero().flatten()
    if len(special_idx) == 0 or len(other_idx) == 0:
        raise DataError(f"classes {list(special)} need examples both inside and outside them; "
                        f"got {len(special_idx)} inside and {len(other_idx)} outside")
    wanted = round(len(special_idx) * (1.0 - special_fraction) / special_fraction)
    n_other = min(len(other_idx), max(1, wanted))
    order = torch.randperm(len(other_idx), generator=torch.Generator().manual_seed(seed))
    return torch.cat([special_idx, other_idx[order[:n_other]]]).sort().values


def combine_distributions(
    generalist_logits: torch.Tensor,
    specialist_log_probs: Sequence[torch.Tensor],
    class_sets: Sequence[Sequence[int]],
    active: torch.Tensor,
    *,
    steps: int = 50,
    lr: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinton et al. 2015, Sec. 5.3: ``q = argmin KL(p^g, q) + sum_{m in A_k} KL(p^m, q)``.

    ``q = softmax(u)`` with ``u`` started at the generalist's logits; ``KL(p^m, q)`` compares ``p^m``
    with q grouped as the specialist sees it (special classes plus dustbin). Each row's objective is
    divided by its number of terms and minimised by ``steps`` plain gradient-descent steps of size
    ``lr``, all rows at once. Runs with autograd on even inside ``no_grad`` / ``inference_mode``.

    Args:
        generalist_logits: ``(B, C)``.
        specialist_log_probs: per specialist ``(B, C_m + 1)`` log-probabilities.
        class_sets: per specialist its special classes.
        active: ``(B, M)`` bool; rows with no active specialist return the generalist's log-probs.

    Returns:
        ``log q`` ``(B, C)`` (no gradient) and the mean objective over active rows per step ``(steps + 1,)``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        log_pg = F.log_softmax(generalist_logits.detach().clone().float(), dim=1)  # (B, C)
        rows = active.clone().any(dim=1)  # (B,)
        if not bool(rows.any()):
            return log_pg, torch.zeros(steps + 1)
        weights = active.clone()[rows].float()  # (R, M)
        targets = [lp.detach().clone().float()[rows] for lp in specialist_log_probs]  # (R, C_m + 1) each
        target_g = log_pg[rows]  # (R, C)

        def objective(u: torch.Tensor) -> torch.Tensor:  # (R,)
            log_q = F.log_softmax(u, dim=1)
            total = F.kl_div(log_q, target_g, log_target=True, reduction="none").sum(1)
            for m, special in enumerate(class_sets):
                kl = F.kl_div(grouped_log_probs(log_q, special), targets[m], log_target=True, reduction="none").sum(1)
                total = total + weights[:, m] * kl
            return total / (1.0 + weights.sum(1))

        u = target_g.clone().requires_grad_(True)
        trace = []
        for step in range(steps + 1):
            loss = objective(u)
            trace.append(float(loss.detach().mean()))
            if step < steps:
                (grad,) = torch.autograd.grad(loss.sum(), u)
                u = (u - lr * grad).detach().requires_grad_(True)
        log_q = log_pg.clone()
        log_q[rows] = F.log_softmax(u.detach(), dim=1)
    return log_q, torch.tensor(trace)
