"""The partitioning problem as numbers: per-layer times, cut bytes, memory, caps, devices and data-parallel replicas.

A stage s owning layers [a, b) costs, per microbatch,

    time(s, a, b)   = sum_{l in [a, b)} (F + B + W)_l / speed_s
                      + 2 link(bytes at cut a) [a > 0] + 2 link(bytes at cut b) [b < L]
                      + ring(sum_{l in [a, b)} grad_bytes_l, D) / m

(every cut carries an activation forward and a gradient of the same size backward, and both ends pay for the
message). The last term is the stage's gradient all-reduce over D data-parallel replicas, a ring on the link
(``partition.data_parallel.ring_all_reduce_time``), charged 1/m per microbatch for m microbatches per step: a
stage's reduction starts after its last weight gradient of the step, so the stage is busy for m times its compute
and messages and then for its whole reduction. Charging the reduction to the stage's own time thus bounds when
that stage is done with the step (the schedule may hide part of it behind other stages' work, never the stage's
own); with D = 1 the term is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from partition.data_parallel import ring_all_reduce_time
from partition.memory import LayerMemory
from partition.plan import Method, Plan, Ranges, format_ranges, parse_ranges
from partition.recompute import Recompute, per_stage, recompute_stage_cost
from partition.timing import LinkModel, StageCost


@dataclass(frozen=True)
class Problem:
    """Everything a partitioner needs, as numbers. Empty tuples take the documented defaults.

    layer_times: per-layer F/B/W seconds for one microbatch on a reference device (speed 1).
    boundary_bytes: bytes of one microbatch's activation after layer l, for l < L-1 (default 0).
    device_speeds: per stage, relative to the reference (a stage's time is divided by it; default 1).
    memory, memory_caps: per-layer bytes and per-stage caps (no caps: memory only reported).
    inflight, deferred_w: per stage, peak microbatches held (default 1F1B with m >= k: k - s) and
    peak deferred weight gradients (default 0).
    parameters: per-layer parameter counts, for ``Method.PARAMETERS``.
    grad_bytes: per-layer gradient bytes (default 0), all-reduced over ``replicas`` copies of the pipeline once
    per step of ``microbatches`` microbatches (see the module docstring).
    """

    layer_times: tuple[StageCost, ...]
    num_stages: int
    boundary_bytes: tuple[float, ...] = ()
    link: LinkModel = field(default_factory=LinkModel)
    device_speeds: tuple[float, ...] = ()
    memory: LayerMemory | None = None
    memory_caps: tuple[float, ...] = ()
    inflight: tuple[int, ...] = ()
    deferred_w: tuple[int, ...] = ()
    parameters: tuple[int, ...] = ()
    grad_bytes: tuple[float, ...] = ()
    replicas: int = 1
    microbatches: int = 1

    def __post_init__(self) -> None:
        layers, k = len(self.layer_times), self.num_stages
        if layers < 1:
            raise ValueError("layer_times: need at least one layer")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"num_stages: expected an integer >= 1, got {k!r}")
        if k > layers:
            raise ValueError(f"num_stages: cannot place {layers} layers on {k} stages (a stage needs at least "
                             f"one layer); use at most {layers} stages")
        for name in ("replicas", "microbatches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        defaults = {"boundary_bytes": (0.0,) * (layers - 1), "device_speeds": (1.0,) * k,
                    "inflight": tuple(k - s for s in range(k)), "deferred_w": (0,) * k, "grad_bytes": (0.0,) * layers}
        for name, default in defaults.items():
            value = tuple(getattr(self, name)) or default
            if len(value) != len(default):
                raise ValueError(f"{name}: expected {len(default)} values, got {len(value)}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "layer_times", tuple(self.layer_times))
        object.__setattr__(self, "memory_caps", tuple(self.memory_caps))
        object.__setattr__(self, "parameters", tuple(self.parameters))
        if any(not v > 0 or math.isinf(v) for v in self.device_speeds):
            raise ValueError(f"device_speeds: expected finite numbers > 0, got {list(self.device_speeds)}")
        if any(b < 0 for b in self.boundary_bytes) or min(self.inflight) < 0 or min(self.deferred_w) < 0 \
                or min(self.grad_bytes) < 0:
            raise ValueError("boundary_bytes/inflight/deferred_w/grad_bytes: expected values >= 0")
        if self.memory_caps:
            if self.memory is None:
                raise ValueError("memory_caps: need a memory model (memory=LayerMemory) to check caps")
            if len(self.memory_caps) != k or any(not c > 0 for c in self.memory_caps):
                raise ValueError(f"memory_caps: expected {k} caps > 0 (one per stage), got {list(self.memory_caps)}")
        if self.memory is not None and self.memory.num_layers != layers:
            raise ValueError(f"memory: describes {self.memory.num_layers} layers, layer_times {layers}")

    @property
    def num_layers(self) -> int:
        """Number of layers L."""
        return len(self.layer_times)

    def comm_time(self, start: int, stop: int) -> float:
        """Link seconds of a stage [start, stop): activation + gradient at each of its cuts."""
        edges = [c for c in (start, stop) if 0 < c < self.num_layers]
        return sum(2 * self.link.time(self.boundary_bytes[c - 1]) for c in edges)

    def reduce_time(self, start: int, stop: int) -> float:
        """A stage [start, stop)'s ring all-reduce over the replicas, charged per microbatch (one step's / m)."""
        return ring_all_reduce_time(sum(self.grad_bytes[start:stop]), self.replicas, self.link) / self.microbatches

    def evaluate(self, ranges: Ranges, method: Method | None = None, recompute: Sequence[Recompute] = ()) -> Plan:
        """The plan for given ranges (and per-stage recomputation): costs on each stage's device, links, memory, caps."""
        if len(ranges) != self.num_stages:
            raise ValueError(f"ranges: expected {self.num_stages} stages, got {len(ranges)}")
        parse_ranges(format_ranges(ranges), self.num_layers)  # validates contiguity and coverage
        choices = per_stage(recompute, self.num_stages)
        costs = []
        for (a, b), speed, choice in zip(ranges, self.device_speeds, choices):
            costs.append(recompute_stage_cost(self.layer_times, a, b, choice).scaled(1 / speed))
        memory = None
        if self.memory is not None:
            memory = tuple(self.memory.stage(a, b, i, d, c)
                           for (a, b), i, d, c in zip(ranges, self.inflight, self.deferred_w, choices))
        return Plan(
            method=method,
            ranges=tuple(ranges),
            stage_costs=tuple(costs),
            comm_times=tuple(self.comm_time(a, b) for a, b in ranges),
            boundary_bytes=tuple(self.boundary_bytes[b - 1] for _, b in ranges[:-1]),
            parameters=tuple(sum(self.parameters[a:b]) for a, b in ranges) if self.parameters else (0,) * len(ranges),
            memory_terms=memory,
            memory_caps=self.memory_caps or None,
            recompute=choices if recompute else None,
            reduce_times=tuple(self.reduce_time(a, b) for a, b in ranges) if self.replicas > 1 else (),
        )
