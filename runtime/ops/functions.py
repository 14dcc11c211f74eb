"""The chapter's operators as torch.autograd.Functions whose backward passes are derived by hand.

Notation follows the chapter, batched (exercise 1): rows of ``x`` are examples, so a layer computes
z = x W^T (+ b) with W of shape (out, in). With g = dJ/dz of shape (n, out):

    dJ/dx = g W            (the input gradient, "B")
    dJ/dW = g^T x          (the weight gradient, "W"; the l2 term adds lambda W separately)
    dJ/db = sum_rows g

Activations save their output h = phi(z) (which is the next layer's input, so it costs no extra memory)
and use phi'(z) written in terms of h. Every backward is built from differentiable torch operations on
saved inputs/outputs, so backward passes are themselves differentiable (exercise 4: gradgradcheck).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd import Function

from partition.spec import Activation, Loss
from runtime.ops.equations import (
    activation_backward,
    activation_forward,
    linear_forward,
    linear_grad_input,
    linear_grad_weight,
    loss_backward,
    loss_forward,
)
from runtime.ops.wgrad import WeightGradStore


class LinearFn(Function):
    """z = x W^T + b. With a ``store`` the backward returns dJ/dx only and defers dJ/dW, dJ/db."""

    @staticmethod
    def forward(ctx, x, weight, bias, store):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, weight)
        ctx.store = store
        ctx.has_bias = bias is not None
        ctx.bias_param = bias if store is not None else None
        return linear_forward(x, weight, bias)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        grad_x = linear_grad_input(g, weight) if ctx.needs_input_grad[0] else None
        store: WeightGradStore | None = ctx.store
        if store is not None and not torch.is_grad_enabled() and ctx.needs_input_grad[1]:
            store.defer(weight, ctx.bias_param, g, x)
            return grad_x, None, None, None
        grad_w = linear_grad_weight(g, x) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, store: WeightGradStore | None = None
) -> torch.Tensor:
    """Apply :class:`LinearFn`; with ``store`` the weight gradient is deferred into it.

    ``x`` is a minibatch (n, in) or one example (in,), the chapter's x, computed as a minibatch of one row.
    """
    if x.dim() == 1:
        return LinearFn.apply(x.unsqueeze(0), weight, bias, store).squeeze(0)
    if x.dim() != 2:
        raise ValueError(f"linear: x must be one example (in,) or a minibatch (n, in), got shape {tuple(x.shape)}")
    return LinearFn.apply(x, weight, bias, store)


class ActivationFn(Function):
    """h = phi(z) for relu, tanh or sigmoid; dJ/dz = dJ/dh * phi'(z) with phi' written in terms of h:
    [h > 0] for relu, 1 - h^2 for tanh, h (1 - h) for sigmoid (``runtime.ops.equations.activation_backward``)."""

    @staticmethod
    def forward(ctx, z, kind):  # noqa: ANN001, ANN205
        h = activation_forward(kind, z)
        ctx.kind = kind
        ctx.save_for_backward(h)
        return h

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (h,) = ctx.saved_tensors
        return activation_backward(ctx.kind, g, h), None


def activation(z: torch.Tensor, kind: Activation) -> torch.Tensor:
    """Apply :class:`ActivationFn` of ``kind``."""
    return ActivationFn.apply(z, kind)


class LossFn(Function):
    """L = (1/denom) sum_i l(o_i, y_i) for cross-entropy or 0.5 ||o_i - y_i||^2 (``kind``).

    dJ/do = (softmax(o) - onehot(y)) / denom or (o - y) / denom; for squared error dJ/dy = -dJ/do.
    """

    @staticmethod
    def forward(ctx, o, y, denom, kind):  # noqa: ANN001, ANN205
        ctx.save_for_backward(o, y)
        ctx.denom = denom
        ctx.kind = kind
        return loss_forward(kind, o, y, denom)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        o, y = ctx.saved_tensors
        grad_o = loss_backward(ctx.kind, o, y, g / ctx.denom)
        grad_y = -grad_o if ctx.needs_input_grad[1] else None  # only a float target (squared error) asks
        return grad_o, grad_y, None, None


def loss(o: torch.Tensor, y: torch.Tensor, denom: float, kind: Loss) -> torch.Tensor:
    """Apply :class:`LossFn` of ``kind``."""
    return LossFn.apply(o, y, denom, kind)


class L2Fn(Function):
    """s = lambda/2 sum_l ||W(l)||_F^2; ds/dW(l) = lambda W(l) (the chapter's regularisation term)."""

    @staticmethod
    def forward(ctx, lam, *weights):  # noqa: ANN001, ANN205
        ctx.lam = lam
        ctx.save_for_backward(*weights)
        total = weights[0].new_zeros(())
        for w in weights:
            total = total + (w * w).sum()
        return total * (lam / 2)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        weights = ctx.saved_tensors
        return (None, *[w * (g * ctx.lam) if need else None for w, need in zip(weights, ctx.needs_input_grad[1:])])


def l2_term(lam: float, weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """The regularisation term s for ``weights`` (a 0-dim tensor; zero when lambda is 0)."""
    return L2Fn.apply(lam, *weights)
