"""The chapter's forward and backward equations as plain tensor functions, shared by both stage engines.

The autograd Functions in ``runtime.ops.functions`` call these from their ``backward``; the direct engine in
``runtime.engine.direct`` calls them without building an autograd graph. One copy of the math, two drivers.
Rows are examples (exercise 1): z = x W^T + b, dJ/dx = g W, dJ/dW = g^T x, dJ/db = sum_rows g.
"""

from __future__ import annotations

import torch

from partition.spec import Activation, Loss
from runtime.ops.gemm import Gemm, onednn_grad_input, onednn_linear


def linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   gemm: Gemm = Gemm.TORCH) -> torch.Tensor:
    """z = x W^T (+ b), as one fused GEMM with bias when x is a matrix (by oneDNN when ``gemm`` says so)."""
    if gemm is Gemm.ONEDNN and x.dim() == 2:
        return onednn_linear(x, weight, bias)
    if bias is not None and x.dim() == 2:
        return torch.addmm(bias, x, weight.t())
    z = x.matmul(weight.t())
    return z + bias if bias is not None else z


def linear_grad_input(g: torch.Tensor, weight: torch.Tensor, gemm: Gemm = Gemm.TORCH) -> torch.Tensor:
    """dJ/dx = g W (the B half; by oneDNN when ``gemm`` says so)."""
    if gemm is Gemm.ONEDNN and g.dim() == 2:
        return onednn_grad_input(g, weight)
    return g.matmul(weight)


def linear_grad_weight(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dJ/dW = g^T x (the W half)."""
    return g.t().matmul(x)


def activation_forward(kind: Activation, z: torch.Tensor) -> torch.Tensor:
    """h = phi(z)."""
    if kind is Activation.RELU:
        return z.clamp_min(0)
    if kind is Activation.TANH:
        return torch.tanh(z)
    return torch.sigmoid(z)


def activation_backward(kind: Activation, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """dJ/dz = dJ/dh * phi'(z), with phi' written in terms of the output h."""
    if kind is Activation.RELU:
        # g * [h > 0] in one kernel; differentiable again (its own derivative is itself), so gradgradcheck holds.
        return torch.ops.aten.threshold_backward(g, h, 0)
    if kind is Activation.TANH:
        return g * (1 - h * h)
    return g * (h * (1 - h))


def one_hot_like(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Class indices ``y`` as rows of one-hot vectors shaped like ``o``."""
    return torch.zeros_like(o).scatter_(1, y.unsqueeze(1), 1.0)


def loss_forward(kind: Loss, o: torch.Tensor, y: torch.Tensor, denom: float) -> torch.Tensor:
    """L = (1/denom) sum_i l(o_i, y_i): cross-entropy on class indices, or 0.5 ||o - y||^2."""
    acc = torch.float32 if o.dtype in (torch.float16, torch.bfloat16) else o.dtype  # a half sum overflows
    if kind is Loss.CROSS_ENTROPY:
        picked = o.gather(1, y.unsqueeze(1)).squeeze(1)
        return (torch.logsumexp(o, dim=1) - picked).sum(dtype=acc) / denom
    diff = o - y
    return (diff * diff).sum(dtype=acc) * (0.5 / denom)


def loss_backward(kind: Loss, o: torch.Tensor, y: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """dJ/do times ``scale`` (= dJ/dL / denom): softmax(o) - onehot(y), or o - y."""
    if kind is Loss.CROSS_ENTROPY:
        return (torch.softmax(o, dim=1) - one_hot_like(o, y)) * scale
    return (o - y) * scale
