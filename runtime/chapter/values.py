"""One forward and backward pass through the hand-derived Functions with every graph node kept by its graph name."""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType

import torch
import torch.nn.functional as F

from partition.spec import Activation, Loss, MLPSpec
from runtime.chapter.common import ChapterConfig, minibatch, model
from runtime.ops.functions import activation, l2_term, linear
from runtime.ops.model import loss_term

REFERENCE_PHI = MappingProxyType({Activation.RELU: F.relu, Activation.TANH: torch.tanh, Activation.SIGMOID: torch.sigmoid})


def node_values(cfg: ChapterConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(values, gradients) by the graph's node names after J.backward(): x, W(l), b(l), z(l), h(l), o, y, L, s, J
    and dJ/d of each of them that has one (dJ/dx included, which the graph leaves out: x is data)."""
    spec = cfg.spec
    net = model(cfg)
    x, y = minibatch(cfg)
    x.requires_grad_(True)
    values: dict[str, torch.Tensor] = {"x": x, "y": y}
    h = x
    for layer, (w, b) in enumerate(net.layer_params()):
        k = layer + 1
        values[f"W({k})"] = w
        if b is not None:
            values[f"b({k})"] = b
        z = linear(h, w, b)
        values["o" if k == spec.num_layers else f"z({k})"] = z
        h = z
        if spec.has_activation(layer):
            h = activation(z, spec.activation)
            values[f"h({k})"] = h
    values["L"] = loss_term(spec, values["o"], y, float(x.shape[0]))
    values["s"] = l2_term(spec.l2, list(net.weights))
    values["J"] = values["L"] + values["s"]
    for t in values.values():
        if t.requires_grad and not t.is_leaf:
            t.retain_grad()
    values["J"].backward()
    grads = {f"dJ/d{name}": t.grad for name, t in values.items() if name != "J" and t.grad is not None}
    return values, grads


def reference_objective(spec: MLPSpec, params: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """J written with torch.nn.functional (plain autograd, none of our Functions); ``params`` flat: W(1), b(1)?, ..."""
    flat = iter(params)
    h = x
    for layer in range(spec.num_layers):
        w = next(flat)
        b = next(flat) if spec.layer_has_bias(layer) else None
        h = F.linear(h, w, b)
        if spec.has_activation(layer):
            h = REFERENCE_PHI[spec.activation](h)
    weights = [p for p in params if p.dim() == 2]
    if spec.loss is Loss.CROSS_ENTROPY:
        data = F.cross_entropy(h, y)
    else:
        data = 0.5 * (h - y).pow(2).sum(1).mean()
    return data + spec.l2 / 2 * sum(w.pow(2).sum() for w in weights)


def flat_params(cfg: ChapterConfig) -> list[torch.Tensor]:
    """The model's parameters in layer order, W(1), b(1) (where present), W(2), ..., as fresh leaves."""
    return [p.detach().clone().requires_grad_(True) for pair in model(cfg).layer_params() for p in pair if p is not None]
