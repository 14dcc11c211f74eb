"""An MLP built from the hand-derived Functions: seeded parameters, forward by layer range, nn.Sequential I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from partition.spec import Activation, Loss, MLPSpec
from runtime.ops.functions import activation, l2_term, linear, loss
from runtime.ops.wgrad import WeightGradStore

ACTIVATION_MODULE = {Activation.RELU: nn.ReLU, Activation.TANH: nn.Tanh, Activation.SIGMOID: nn.Sigmoid}


def init_parameters(spec: MLPSpec, seed: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Seeded float64 CPU parameters, U(-1/sqrt(in), 1/sqrt(in)) like nn.Linear; the same on every machine."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for layer in range(spec.num_layers):
        out_f, in_f = spec.layer_shape(layer)
        bound = 1.0 / math.sqrt(in_f)
        w = (torch.rand(out_f, in_f, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(out_f, generator=gen, dtype=torch.float64) * 2 - 1) * bound if spec.layer_has_bias(layer) else None
        params.append((w, b))
    return params


def forward_layers(
    spec: MLPSpec,
    params: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    x: torch.Tensor,
    start: int,
    store: WeightGradStore | None = None,
) -> torch.Tensor:
    """Run layers ``start .. start+len(params)-1`` of ``spec`` on ``x``: z = x W^T (+b), then phi if hidden."""
    for offset, (w, b) in enumerate(params):
        x = linear(x, w, b, store)
        if spec.has_activation(start + offset):
            x = activation(x, spec.activation)
    return x


def loss_target(spec: MLPSpec, o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The target the loss compares ``o`` with: class indices for cross-entropy, one-hot rows (or y) for squared error."""
    if spec.loss is Loss.CROSS_ENTROPY or y.dim() != 1:
        return y
    if y.is_floating_point():  # one regression target per row
        return y.to(o.dtype).reshape(-1, 1)
    return torch.nn.functional.one_hot(y, o.shape[1]).to(o.dtype)


def loss_term(spec: MLPSpec, o: torch.Tensor, y: torch.Tensor, denom: float) -> torch.Tensor:
    """L summed over the rows of ``o`` and divided by ``denom`` (the full batch size in a pipeline step)."""
    return loss(o, loss_target(spec, o, y), denom, spec.loss)


class PipeModel(nn.Module):
    """The chapter's MLP as parameters plus the custom Functions; J = L + s."""

    def __init__(self, spec: MLPSpec, params: Sequence[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        super().__init__()
        if len(params) != spec.num_layers:
            raise ValueError(f"params: expected {spec.num_layers} layers for widths {list(spec.widths)}, got {len(params)}")
        self.spec = spec
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (w, b) in enumerate(params):
            if tuple(w.shape) != spec.layer_shape(layer):
                raise ValueError(f"widths: layer {layer} weight has shape {tuple(w.shape)}, spec says {spec.layer_shape(layer)}")
            self.weights.append(nn.Parameter(w.detach().clone()))
            if spec.layer_has_bias(layer) != (b is not None):
                raise ValueError(f"bias: the spec gives layer {layer} {'a' if b is None else 'no'} bias, "
                                 f"its parameters {'have none' if b is None else 'have one'}")
            if b is not None:
                self.biases.append(nn.Parameter(b.detach().clone()))

    @classmethod
    def from_spec(
        cls, spec: MLPSpec, seed: int = 0, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> PipeModel:
        """A model with seeded parameters (identical for a seed whatever the dtype or device)."""
        params = [(w.to(device, dtype), None if b is None else b.to(device, dtype)) for w, b in init_parameters(spec, seed)]
        return cls(spec, params)

    def layer_params(self, start: int = 0, stop: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(W, b) pairs of layers [start, stop)."""
        stop = self.spec.num_layers if stop is None else stop
        biased = sorted(self.spec.bias)  # self.biases holds the biased layers only, in layer order
        return [(self.weights[i], self.biases[biased.index(i)] if self.spec.layer_has_bias(i) else None)
                for i in range(start, stop)]

    def forward(self, x: torch.Tensor, store: WeightGradStore | None = None) -> torch.Tensor:
        """The output o for inputs ``x`` (rows are examples)."""
        return forward_layers(self.spec, self.layer_params(), x, 0, store)

    def regularizer(self) -> torch.Tensor:
        """s = lambda/2 sum ||W||_F^2."""
        return l2_term(self.spec.l2, list(self.weights))

    def objective(self, x: torch.Tensor, y: torch.Tensor, denom: float | None = None) -> torch.Tensor:
        """J = L + s for a minibatch, L averaged over its rows (or divided by ``denom``)."""
        o = self(x)
        return loss_term(self.spec, o, y, float(x.shape[0] if denom is None else denom)) + self.regularizer()

    def to_sequential(self) -> nn.Sequential:
        """The same network as nn.Sequential of nn.Linear + activation modules, weights copied exactly."""
        mods: list[nn.Module] = []
        for layer, (w, b) in enumerate(self.layer_params()):
            out_f, in_f = self.spec.layer_shape(layer)
            lin = nn.Linear(in_f, out_f, bias=b is not None, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
                if b is not None:
                    lin.bias.copy_(b)
            mods.append(lin)
            if self.spec.has_activation(layer):
                mods.append(ACTIVATION_MODULE[self.spec.activation]())
        return nn.Sequential(*mods)

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, l2: float = 0.0, loss: Loss | str = Loss.CROSS_ENTROPY) -> PipeModel:
        """Read an nn.Sequential of nn.Linear (+ one activation kind between them) into a model."""
        linears = [m for m in seq if isinstance(m, nn.Linear)]
        acts = {type(m) for m in seq if not isinstance(m, nn.Linear)}
        if not linears:
            raise ValueError("model: nn.Sequential holds no nn.Linear")
        kinds = [k for k, mod in ACTIVATION_MODULE.items() if mod in acts]
        unknown = acts - set(ACTIVATION_MODULE.values())
        if unknown or len(kinds) > 1:
            raise ValueError(f"model: expected one activation among ReLU/Tanh/Sigmoid, found {sorted(a.__name__ for a in acts)}")
        widths = (linears[0].in_features, *[m.out_features for m in linears])
        bias = frozenset(layer for layer, m in enumerate(linears) if m.bias is not None)
        spec = MLPSpec(widths, kinds[0] if kinds else Activation.RELU, bias, l2, loss)
        return cls(spec, [(m.weight, m.bias) for m in linears])
