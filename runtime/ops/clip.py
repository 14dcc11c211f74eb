"""Global gradient-norm clipping over parameters that live on several ranks (torch's clip_grad_norm_ rule)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

EPS = 1e-6  # added to the norm before dividing, as torch.nn.utils.clip_grad_norm_ does


def clip_grad_norm(grads: Sequence[torch.Tensor], max_norm: float,
                   sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Scale ``grads`` in place so that the 2-norm over all of them (and all ranks) is at most ``max_norm``.

    Each rank squares the norms of the gradients it holds; ``sum_over_ranks`` adds those partial sums over
    the ranks that hold the rest of the model (one pipeline), so every rank scales by the same coefficient,
    ``min(1, max_norm / (norm + 1e-6))``, exactly the rule of ``torch.nn.utils.clip_grad_norm_`` on the
    unsplit model. Returns the norm before clipping.
    """
    if max_norm <= 0:
        raise ValueError(f"clip-grad-norm: must be > 0, got {max_norm}")
    squares = torch.zeros(1, dtype=torch.float64)
    for g in grads:
        squares += torch.linalg.vector_norm(g.detach().to(torch.float64)).square().cpu()
    if sum_over_ranks is not None:
        squares = sum_over_ranks(squares)
    total = squares.sqrt()[0]
    coef = torch.clamp(max_norm / (total + EPS), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return float(total)
