"""The same model and data for every benchmark contender: seeded weights, batches, reference loss, stage modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from partition.spec import Activation, Loss, MLPSpec
from runtime.ops.model import PipeModel, init_parameters

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = list[tuple[torch.Tensor, torch.Tensor | None]]


def bench_spec(width: int, layers: int, loss: Loss = Loss.SQUARED_ERROR) -> MLPSpec:
    """``layers`` Linear(width, width) with ReLU between them (the 8 x 8192 shape of the GPU reference figures, or smaller)."""
    if width < 1 or layers < 1:
        raise ValueError(f"width/layers: expected >= 1, got {width} and {layers}")
    return MLPSpec((width,) * (layers + 1), Activation.RELU, True, 0.0, loss)


@dataclass(frozen=True)
class Batch:
    """One batch of inputs and targets on the device, in the compute dtype (class indices for cross-entropy)."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def rows(self) -> int:
        """Examples in the batch."""
        return self.x.shape[0]


def make_batch(spec: MLPSpec, rows: int, dtype: torch.dtype, device: torch.device, seed: int = 1) -> Batch:
    """Random inputs and targets drawn on ``device`` (seeded)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(rows, spec.widths[0], generator=gen, device=device, dtype=dtype)
    if spec.loss is Loss.CROSS_ENTROPY:
        y = torch.randint(0, spec.widths[-1], (rows,), generator=gen, device=device)
    else:
        y = torch.randn(rows, spec.widths[-1], generator=gen, device=device, dtype=dtype)
    return Batch(x, y)


def reference_loss(spec: MLPSpec) -> LossFn:
    """L averaged over the rows of ``o`` with torch's own ops: what plain-autograd code would write."""
    if spec.loss is Loss.CROSS_ENTROPY:
        return nn.functional.cross_entropy

    def squared_error(o: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(o, y, reduction="sum") * (0.5 / o.shape[0])

    return squared_error


def scaled(loss_fn: LossFn, factor: float) -> LossFn:
    """``loss_fn`` times ``factor`` (a microbatch's share of the batch mean)."""
    return lambda o, y: loss_fn(o, y) * factor


def device_params(params: Params, dtype: torch.dtype, device: torch.device) -> Params:
    """The float64 seeded parameters converted to ``dtype`` on ``device``."""
    return [(w.to(device, dtype), None if b is None else b.to(device, dtype)) for w, b in params]


def reference_sequential(spec: MLPSpec, params: Params, dtype: torch.dtype, device: torch.device) -> nn.Sequential:
    """nn.Sequential of nn.Linear + ReLU holding exactly the seeded weights."""
    return PipeModel(spec, device_params(params, dtype, device)).to_sequential()


def stage_modules(spec: MLPSpec, seq: nn.Sequential, ranges: Sequence[tuple[int, int]]) -> list[nn.Sequential]:
    """Slices of ``seq`` holding layers [start, stop) each (sharing its parameters), one per stage."""
    first_module = []
    pos = 0
    for layer in range(spec.num_layers):
        first_module.append(pos)
        pos += 2 if spec.has_activation(layer) else 1
    first_module.append(pos)
    return [seq[first_module[start] : first_module[stop]] for start, stop in ranges]


def sgd_frozen(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with lr = 0: the update's arithmetic runs, the weights stay seeded, so every contender sees the same ones."""
    return torch.optim.SGD(params, lr=0.0)


@contextmanager
def shared_init(spec: MLPSpec, seed: int) -> Iterator[Params]:
    """Draw the seeded float64 parameters once for a block that builds several pipelines of one spec.

    ``runtime.ops.model.init_parameters`` draws on the CPU (about 2 s per 8192 x 8192 layer); the block passes
    the values (exactly what each Pipeline would draw) as ``Pipeline(..., init=params)``.
    """
    yield init_parameters(spec, seed)
