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
coincide (always, without a B/W split) and an upper bound otherwise; ``partition.activation_peak`` walks a
schedule's action lists for the exact peak. Recomputation (``partition.recompute``) changes what one microbatch
holds in each phase, as ``LayerMemory.microbatch`` states. This module never imports the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

from partition.cost import DType, Optimizer, as_dtype, layer_costs, target_bytes_per_sample
from partition.recompute import NO_RECOMPUTE, Recompute, per_stage
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
class MicrobatchBytes:
    """Activation bytes one microbatch holds on one stage in each phase of its life there.

    ``forward``: from its F until its B starts. ``backward``: during B, once the recomputed forward has run and
    before the backward does (equal to ``forward`` without recomputation). ``deferred``: from B until W when they
    are split (the input x and g = dJ/dz of every layer of the stage; nothing once W ran, or after a fused BW).
    ``recomputed``: how many leading layers of the stage are recomputed (one extra F of each per microbatch).
    """

    forward: int
    backward: int
    deferred: int
    recomputed: int = 0


@dataclass(frozen=True)
class LayerMemory:
    """Per-layer bytes for one microbatch size, from which any stage's peak is summed (see module docstring).

    ``saved``: what layer l saves for backward (its input x; the last layer also o and the target);
    ``inputs``: the input x alone; ``target``: the bytes of the target the loss keeps; ``boundary``: the
    activation h leaving layer l (0 for the last); ``deferred``: g = dJ/dz of layer l, kept from B to W.
    """

    params: tuple[int, ...]
    grads: tuple[int, ...]
    optimizer: tuple[int, ...]
    saved: tuple[int, ...]
    boundary: tuple[int, ...]
    deferred: tuple[int, ...]
    inputs: tuple[int, ...]
    target: int

    @property
    def num_layers(self) -> int:
        """Number of layers described."""
        return len(self.params)

    def static(self, layer: int) -> int:
        """Parameters + gradients + optimizer state of ``layer``."""
        return self.params[layer] + self.grads[layer] + self.optimizer[layer]

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= self.num_layers:
            raise ValueError(f"layer range: expected 0 <= start < stop <= {self.num_layers}, got [{start}, {stop})")

    def saved_range(self, start: int, stop: int) -> int:
        """Bytes layers [start, stop) save for backward in one microbatch, with the output h phi keeps when stop < L."""
        self._check_range(start, stop)
        out_edge = self.boundary[stop - 1] if stop < self.num_layers else 0
        return sum(self.saved[start:stop]) + out_edge

    def microbatch(self, start: int, stop: int, recompute: Recompute = NO_RECOMPUTE) -> MicrobatchBytes:
        """What one microbatch holds on the stage [start, stop) in each phase, recomputing the first k layers.

        With c = start + k and k > 0: F keeps only the stage input x (plus the target when the whole last stage is
        recomputed) and what layers [c, stop) save as usual. B first reruns the forward of layers [start, c) from x,
        which saves their usual set again: ``backward`` = ``forward`` + saved_range(start, c) - x (- the target
        when c = L), that is the no-recompute set, plus a second copy of the h leaving layer c - 1 when 0 < k <
        stop - start (the recomputed one beside the kept one). With B/W split, B then leaves, for W, the x and
        the g of every layer, recomputed ones included (``deferred``); W frees them.
        """
        self._check_range(start, stop)
        k = recompute.count(stop - start)
        mid, last = start + k, stop == self.num_layers
        forward = self.saved_range(start, stop)
        backward = forward
        if k:
            kept_tail = self.saved_range(mid, stop) if mid < stop else (self.target if last else 0)
            forward = self.inputs[start] + kept_tail
            window = self.saved_range(start, mid) - self.inputs[start] - (self.target if mid == self.num_layers else 0)
            backward = forward + window
        deferred = sum(self.inputs[start:stop]) + sum(self.deferred[start:stop])
        return MicrobatchBytes(forward, backward, deferred, k)

    def stage(
        self, start: int, stop: int, inflight: int, deferred_w: int = 0, recompute: Recompute = NO_RECOMPUTE
    ) -> MemoryReport:
        """Peak bytes (an upper bound, see module docstring) of a stage owning layers [start, stop).

        Each of ``inflight`` microbatches is charged ``microbatch(...).forward``, one of them the recompute window
        on top (``backward - forward``), and each of ``deferred_w`` the g of every layer plus the inputs x of the
        recomputed layers other than the stage input (rebuilt by B and held until W).
        """
        self._check_range(start, stop)
        if inflight < 0 or deferred_w < 0:
            raise ValueError(f"inflight/deferred_w: expected counts >= 0, got {inflight}, {deferred_w}")
        span = range(start, stop)
        mb = self.microbatch(start, stop, recompute)
        out_edge = self.boundary[stop - 1] if stop < self.num_layers else 0
        in_edge = self.boundary[start - 1] if start > 0 else 0
        window = mb.backward - mb.forward if inflight else 0
        held_for_w = sum(self.deferred[i] for i in span) + sum(self.inputs[start + 1 : start + mb.recomputed])
        return MemoryReport(
            parameters=sum(self.params[i] for i in span),
            gradients=sum(self.grads[i] for i in span),
            optimizer=sum(self.optimizer[i] for i in span),
            saved_activations=inflight * mb.forward + window,
            deferred_w=deferred_w * held_for_w,
            communication=in_edge + out_edge,
        )


def layer_memory(
    spec: MLPSpec, microbatch: int, dtype: DType | str = DType.FLOAT32, optimizer: Optimizer | str = Optimizer.SGD
) -> LayerMemory:
    """Per-layer byte counts of ``spec`` for microbatches of ``microbatch`` samples."""
    _check_count(microbatch, "microbatch")
    dtype = as_dtype(dtype)
    dsize = dtype.nbytes
    costs = layer_costs(spec, dtype, optimizer)
    return LayerMemory(
        params=tuple(c.param_bytes for c in costs),
        grads=tuple(c.grad_bytes for c in costs),
        optimizer=tuple(c.optimizer_bytes for c in costs),
        saved=tuple(c.saved_bytes_per_sample * microbatch for c in costs),
        boundary=tuple(c.boundary_bytes_per_sample * microbatch for c in costs),
        deferred=tuple(c.deferred_w_bytes_per_sample * microbatch for c in costs),
        inputs=tuple(in_f * dsize * microbatch for _, in_f in (spec.layer_shape(i) for i in range(spec.num_layers))),
        target=target_bytes_per_sample(spec, dtype) * microbatch,
    )


def training_memory(
    spec: MLPSpec, batch: int, dtype: DType | str = DType.FLOAT32, optimizer: Optimizer | str = Optimizer.SGD
) -> MemoryReport:
    """Training on one device with minibatch ``batch``: params, grads, optimizer state and saved activations."""
    return layer_memory(spec, batch, dtype, optimizer).stage(0, spec.num_layers, inflight=1)


def inference_memory(spec: MLPSpec, batch: int, dtype: DType | str = DType.FLOAT32) -> MemoryReport:
    """Inference: parameters plus the peak of live activation bytes of the no-grad forward, input batch counted.

    The caller holds the input batch x (w_0 features) throughout. Layer l first computes z from its input while
    both are live (x + x_l + z_l; x_l is x itself for l = 0), then, when phi follows, h = phi(z) out of place
    while z is live and x_l already dropped (x + z_l + h_l). So the peak is n * dsize * max over layers of
    [l > 0] w_0 + w_l + w_{l+1} and, with phi, w_0 + 2 w_{l+1}.
    """
    _check_count(batch, "batch")
    size = as_dtype(dtype).nbytes
    w = spec.widths
    moments = [(w[0] if layer else 0) + w[layer] + w[layer + 1] for layer in range(spec.num_layers)]
    moments += [w[0] + 2 * w[layer + 1] for layer in range(spec.num_layers) if spec.has_activation(layer)]
    return MemoryReport(parameters=spec.num_parameters() * size, live_activations=max(moments) * batch * size)


def stage_memory(
    spec: MLPSpec,
    layer_range: tuple[int, int],
    microbatch: int,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
    inflight: int = 1,
    deferred_w: int = 0,
    recompute: Recompute = NO_RECOMPUTE,
) -> MemoryReport:
    """Peak bytes of the stage owning half-open ``layer_range`` (the last stage is the one ending at L)."""
    start, stop = layer_range
    return layer_memory(spec, microbatch, dtype, optimizer).stage(start, stop, inflight, deferred_w, recompute)


def plan_memory(
    spec: MLPSpec,
    ranges: Sequence[tuple[int, int]],
    microbatch: int,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
    inflight: Sequence[int] = (),
    deferred_w: Sequence[int] = (),
    recompute: Sequence[Recompute] = (),
) -> tuple[MemoryReport, ...]:
    """Peak bytes of every stage of a plan; ``inflight``/``deferred_w``/``recompute`` per stage (default 1, 0, none)."""
    inflight = tuple(inflight) or (1,) * len(ranges)
    deferred_w = tuple(deferred_w) or (0,) * len(ranges)
    if not len(inflight) == len(deferred_w) == len(ranges):
        raise ValueError(f"inflight/deferred_w: expected {len(ranges)} per-stage counts, "
                         f"got {len(inflight)} and {len(deferred_w)}")
    choices = per_stage(recompute, len(ranges))
    layers = layer_memory(spec, microbatch, dtype, optimizer)
    return tuple(layers.stage(a, b, i, d, r) for (a, b), i, d, r in zip(ranges, inflight, deferred_w, choices))


def _check_count(value: int, field: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field}: expected an integer >= 1, got {value!r}")
