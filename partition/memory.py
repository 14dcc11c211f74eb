"""Analytic memory model: training vs inference footprint (exercise 3) and each pipeline stage's peak bytes.

A stage owning layers [a, b) of an L-layer spec, for microbatches of n samples, peaks at

    parameters + gradients + optimizer state                 (layers a..b-1)
    + inflight   x saved bytes of one microbatch             (inputs x of layers a..b-1, plus the output h of
                                                              layer b-1 that phi keeps when b < L, or o and the
                                                              target when b = L)
    + deferred_w x deferred-W bytes of one microbatch        (g = dJ/dz of every layer, kept from B to W by the
                                                              WeightGradStore next to the inputs x it also needs)
    + communication buffers                                  (one gradient message each way: dJ/dh from the
                                                              next stage, dJ/dx to the previous one)

The counts follow ``partition.schedule.simulate``: ``inflight`` is the peak number of microbatches whose activations
the stage holds (from F until BW, or until W when B and W are split) and ``deferred_w`` the peak number
whose B ran and whose W has not (a subset of the in-flight ones). Between B and W the runtime frees the
stage's output h (or o and the target) but keeps every x; counting the whole saved set until W
overstates that by one activation per deferred microbatch. Adding the two peaks is exact when they
coincide (always, without a B/W split) and an upper bound otherwise. This module never imports the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from partition.cost import DType, Optimizer, as_dtype, layer_costs
from partition.spec import MLPSpec


@dataclass(frozen=True)
class MemoryReport:
    """Bytes by term; ``total`` is their sum."""

    parameters: int = 0
    gradients: int = 0
    optimizer: int = 0
    saved_activations: int = 0
    deferred_w: int = 0
    communication: int = 0
    live_activations: int = 0

    @property
    def total(self) -> int:
        """Sum of every term."""
        return sum(getattr(self, f.name) for f in fields(self))

    def rows(self) -> tuple[tuple[str, int], ...]:
        """(term, bytes) for every term, in declaration order, names with spaces."""
        return tuple((f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self))


@dataclass(frozen=True)
class LayerMemory:
    """Per-layer bytes for one microbatch size, from which any stage's peak is summed (see module docstring)."""

    params: tuple[int, ...]
    grads: tuple[int, ...]
    optimizer: tuple[int, ...]
    saved: tuple[int, ...]
    boundary: tuple[int, ...]
    deferred: tuple[int, ...]

    @property
    def num_layers(self) -> int:
        """Number of layers described."""
        return len(self.params)

    def static(self, layer: int) -> int:
        """Parameters + gradients + optimizer state of ``layer``."""
        return self.params[layer] + self.grads[layer] + self.optimizer[layer]

    def stage(self, start: int, stop: int, inflight: int, deferred_w: int = 0) -> MemoryReport:
        """Peak bytes of a stage owning layers [start, stop)."""
        if not 0 <= start < stop <= self.num_layers:
            raise ValueError(f"layer range: expected 0 <= start < stop <= {self.num_layers}, got [{start}, {stop})")
        if inflight < 0 or deferred_w < 0:
            raise ValueError(f"inflight/deferred_w: expected counts >= 0, got {inflight}, {deferred_w}")
        span = range(start, stop)
        out_edge = self.boundary[stop - 1] if stop < self.num_layers else 0
        in_edge = self.boundary[start - 1] if start > 0 else 0
        return MemoryReport(
            parameters=sum(self.params[i] for i in span),
            gradients=sum(self.grads[i] for i in span),
            optimizer=sum(self.optimizer[i] for i in span),
            saved_activations=inflight * (sum(self.saved[i] for i in span) + out_edge),
            deferred_w=deferred_w * sum(self.deferred[i] for i in span),
            communication=in_edge + out_edge,
        )


def layer_memory(
    spec: MLPSpec, microbatch: int, dtype: DType | str = DType.FLOAT32, optimizer: Optimizer | str = Optimizer.SGD
) -> LayerMemory:
    """Per-layer byte counts of ``spec`` for microbatches of ``microbatch`` samples."""
    _check_count(microbatch, "microbatch")
    costs = layer_costs(spec, dtype, optimizer)
    return LayerMemory(
        params=tuple(c.param_bytes for c in costs),
        grads=tuple(c.grad_bytes for c in costs),
        optimizer=tuple(c.optimizer_bytes for c in costs),
        saved=tuple(c.saved_bytes_per_sample * microbatch for c in costs),
        boundary=tuple(c.boundary_bytes_per_sample * microbatch for c in costs),
        deferred=tuple(c.deferred_w_bytes_per_sample * microbatch for c in costs),
    )


def training_memory(
    spec: MLPSpec, batch: int, dtype: DType | str = DType.FLOAT32, optimizer: Optimizer | str = Optimizer.SGD
) -> MemoryReport:
    """Training on one device with minibatch ``batch``: params, grads, optimizer state and saved activations."""
    return layer_memory(spec, batch, dtype, optimizer).stage(0, spec.num_layers, inflight=1)


def inference_memory(spec: MLPSpec, batch: int, dtype: DType | str = DType.FLOAT32) -> MemoryReport:
    """Inference: parameters plus the live activations of two adjacent layers (input and output of one)."""
    _check_count(batch, "batch")
    size = as_dtype(dtype).nbytes
    widths = spec.widths
    live = max(widths[i] + widths[i + 1] for i in range(spec.num_layers)) * batch * size
    return MemoryReport(parameters=spec.num_parameters() * size, live_activations=live)


def stage_memory(
    spec: MLPSpec,
    layer_range: tuple[int, int],
    microbatch: int,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
    inflight: int = 1,
    deferred_w: int = 0,
) -> MemoryReport:
    """Peak bytes of the stage owning half-open ``layer_range`` (the last stage is the one ending at L)."""
    start, stop = layer_range
    return layer_memory(spec, microbatch, dtype, optimizer).stage(start, stop, inflight, deferred_w)


def plan_memory(
    spec: MLPSpec,
    ranges: Sequence[tuple[int, int]],
    microbatch: int,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
    inflight: Sequence[int] = (),
    deferred_w: Sequence[int] = (),
) -> tuple[MemoryReport, ...]:
    """Peak bytes of every stage of a plan; ``inflight``/``deferred_w`` per stage (default 1 and 0)."""
    inflight = tuple(inflight) or (1,) * len(ranges)
    deferred_w = tuple(deferred_w) or (0,) * len(ranges)
    if not len(inflight) == len(deferred_w) == len(ranges):
        raise ValueError(f"inflight/deferred_w: expected {len(ranges)} per-stage counts, "
                         f"got {len(inflight)} and {len(deferred_w)}")
    layers = layer_memory(spec, microbatch, dtype, optimizer)
    return tuple(layers.stage(a, b, i, d) for (a, b), i, d in zip(ranges, inflight, deferred_w))


def _check_count(value: int, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field}: expected an integer >= 1, got {value!r}")
