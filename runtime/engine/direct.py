"""The direct stage engine: a stage's forward and backward as explicit calls of the chapter's equations.

No autograd graph is built and no autograd engine runs: forward keeps exactly what the chapter's backward
needs (each layer's input x, each activation's output h, and o, y on the last stage), and backward walks the
layers in reverse, calling the same equations the autograd Functions' backward passes call
(``runtime.ops.equations``). Same math, same order, so the result equals the autograd engine's (bitwise, on
torch's GEMM kernel; the direct engine alone may also use oneDNN's, ``runtime.ops.gemm``); what it saves
is per-call overhead (graph nodes, the engine's device thread), which matters when a step has hundreds of
pipeline actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from partition.spec import MLPSpec
from runtime.ops.equations import (
    activation_backward,
    activation_forward,
    linear_forward,
    linear_grad_input,
    loss_backward,
    loss_forward,
)
from runtime.ops.gemm import Gemm
from runtime.ops.wgrad import WeightGradStore

Params = Sequence[tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class DirectSaved:
    """One microbatch's tensors kept from forward to backward on one stage."""

    inputs: list[torch.Tensor]  # x of every layer (the previous layer's h)
    hidden: list[torch.Tensor | None]  # h after every layer (None where no activation follows)
    output: torch.Tensor | None = None  # o, on the last stage
    target: torch.Tensor | None = None
    denom: float = 1.0


@torch.no_grad()
def forward(spec: MLPSpec, params: Params, x: torch.Tensor, start: int,
            gemm: Gemm = Gemm.TORCH) -> tuple[torch.Tensor, DirectSaved]:
    """Run the layers (their GEMMs on ``gemm``); returns the stage output (o on the last stage) and what backward needs."""
    saved = DirectSaved([], [])
    for offset, (w, b) in enumerate(params):
        saved.inputs.append(x)
        x = linear_forward(x, w, b, gemm)
        if spec.has_activation(start + offset):
            x = activation_forward(spec.activation, x)
            saved.hidden.append(x)
        else:
            saved.hidden.append(None)
    return x, saved


@torch.no_grad()
def loss(spec: MLPSpec, saved: DirectSaved, o: torch.Tensor, y: torch.Tensor, denom: float) -> torch.Tensor:
    """L for the last stage's output ``o``; remembers o and y for the backward."""
    saved.output, saved.target, saved.denom = o, y, denom
    return loss_forward(spec.loss, o, y, denom)


@torch.no_grad()
def backward(
    spec: MLPSpec, params: Params, saved: DirectSaved, grad: torch.Tensor | None, start: int, store: WeightGradStore,
    need_input_grad: bool, gemm: Gemm = Gemm.TORCH,
) -> torch.Tensor | None:
    """Walk the layers in reverse: dJ/dz = dJ/dh * phi'(z), dW deferred into ``store``, dJ/dx = g W."""
    if saved.output is not None:
        g = loss_backward(spec.loss, saved.output, saved.target, 1.0 / saved.denom)
        saved.output = saved.target = None
    else:
        g = grad
    for offset in range(len(params) - 1, -1, -1):
        w, b = params[offset]
        h = saved.hidden[offset]
        if h is not None:
            g = activation_backward(spec.activation, g, h)
        store.defer(w, b, g, saved.inputs[offset])
        if offset > 0 or need_input_grad:
            g = linear_grad_input(g, w, gemm)
    saved.inputs, saved.hidden = [], []
    return g if need_input_grad else None
