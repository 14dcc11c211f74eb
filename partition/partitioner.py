"""Graph partitioner: contiguous layer ranges over k stages minimizing the bottleneck stage under memory caps.

A stage s owning layers [a, b) costs, per microbatch,

    time(s, a, b)   = sum_{l in [a, b)} (F + B + W)_l / speed_s
                      + 2 link(bytes at cut a) [a > 0] + 2 link(bytes at cut b) [b < L]

(every cut carries an activation forward and a gradient of the same size backward, and both ends pay
for the message), and its peak memory is ``LayerMemory.stage`` with the stage's in-flight and deferred-W
counts. ``Method.OPTIMAL`` minimizes max_s time(s, a_s, b_s) subject to memory(s, ...) <= cap_s exactly
(``partition.minmax``); the baselines ignore caps and links and report whether they fit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from partition.baselines import by_parameters, time_blocks, uniform
from partition.cost import DType, Optimizer, flop_times, layer_costs
from partition.memory import LayerMemory, layer_memory
from partition.minmax import minmax_partition
from partition.plan import Method, Plan, Ranges, format_ranges, parse_ranges
from partition.recompute import Recompute, per_stage, recompute_stage_cost
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from partition.units import format_bytes

__all__ = ["Method", "Plan", "Problem", "parse_ranges", "partition", "plan_for", "plan_ranges", "problem_for", "smallest_cap"]

DEFAULT_FLOPS = 100e12  # a round figure for a modern accelerator; times are relative unless a link is set


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

    def __post_init__(self) -> None:
        layers, k = len(self.layer_times), self.num_stages
        if layers < 1:
            raise ValueError("layer_times: need at least one layer")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"num_stages: expected an integer >= 1, got {k!r}")
        if k > layers:
            raise ValueError(f"num_stages: cannot place {layers} layers on {k} stages (a stage needs at least "
                             f"one layer); use at most {layers} stages")
        defaults = {"boundary_bytes": (0.0,) * (layers - 1), "device_speeds": (1.0,) * k,
                    "inflight": tuple(k - s for s in range(k)), "deferred_w": (0,) * k}
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
        if any(b < 0 for b in self.boundary_bytes) or min(self.inflight) < 0 or min(self.deferred_w) < 0:
            raise ValueError("boundary_bytes/inflight/deferred_w: expected values >= 0")
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
        )


def partition(problem: Problem, method: Method | str = Method.OPTIMAL) -> Plan:
    """The plan ``method`` picks for ``problem``; ValueError (naming the smallest cap that fits) if none fits."""
    method = Method(method) if not isinstance(method, Method) else method
    k, layers = problem.num_stages, problem.num_layers
    if method is Method.UNIFORM:
        return problem.evaluate(uniform(layers, k), method)
    if method is Method.PARAMETERS:
        if not problem.parameters:
            raise ValueError("parameters: Method.PARAMETERS needs per-layer parameter counts (Problem.parameters)")
        return problem.evaluate(by_parameters(problem.parameters, k), method)
    if method is Method.TIME_BLOCKS:
        return problem.evaluate(time_blocks([t.total for t in problem.layer_times], k), method)
    time_cost, time_bound = _time_functions(problem)
    totals = [t.total for t in problem.layer_times]
    lower = max(max(totals) / max(problem.device_speeds), sum(totals) / sum(problem.device_speeds))
    _, ranges = minmax_partition(layers, k, time_cost, time_bound, lower=lower)
    if not ranges:
        raise ValueError(_infeasible_message(problem))
    return problem.evaluate(ranges, method)


def smallest_cap(problem: Problem) -> tuple[float, Ranges]:
    """The smallest memory cap that, given to every device, admits a plan; and that plan's ranges."""
    mem, mono, _ = _memory_functions(problem)
    layers = problem.memory
    lower = max(layers.static(i) for i in range(problem.num_layers)) if layers else 0  # a stage holds its layers
    return minmax_partition(problem.num_layers, problem.num_stages, mem, mono, lower=lower)


def _time_functions(problem: Problem) -> tuple[Callable, Callable]:
    """Vectorized stage time (inf over the cap) and its lower bound for all earlier starts."""
    totals = np.concatenate([[0.0], np.cumsum([t.total for t in problem.layer_times])])
    edges = np.zeros(problem.num_layers + 1)
    edges[1:-1] = [2 * problem.link.time(nbytes) for nbytes in problem.boundary_bytes]
    speeds = np.asarray(problem.device_speeds, dtype=np.float64)
    if problem.memory_caps:
        mem, mono, caps = _memory_functions(problem)
    else:
        mem = mono = caps = None

    def bound(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        low = (totals[b] - totals[a]) / speeds[s] + edges[b]
        return low if mono is None else np.where(mono(s, a, b) > caps[s], np.inf, low)

    def cost(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        time = (totals[b] - totals[a]) / speeds[s] + edges[a] + edges[b]
        return time if mem is None else np.where(mem(s, a, b) > caps[s], np.inf, time)

    return cost, bound


def _memory_functions(problem: Problem) -> tuple[Callable, Callable, np.ndarray]:
    """Vectorized stage peak bytes, its part monotone in the start (for pruning), and the caps."""
    lm = problem.memory
    if lm is None:
        raise ValueError("memory: this problem has no memory model")
    layers = problem.num_layers

    def prefix(values: Sequence[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(np.asarray(values, dtype=np.int64))])

    static = prefix([lm.static(i) for i in range(layers)])
    saved, deferred = prefix(lm.saved), prefix(lm.deferred)
    edge = np.zeros(layers + 1, dtype=np.int64)
    edge[1:-1] = lm.boundary[:-1]
    inflight = np.asarray(problem.inflight, dtype=np.int64)
    deferred_w = np.asarray(problem.deferred_w, dtype=np.int64)

    def mono(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (static[b] - static[a] + inflight[s] * (saved[b] - saved[a] + edge[b])
                + deferred_w[s] * (deferred[b] - deferred[a]) + edge[b])

    def mem(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return mono(s, a, b) + edge[a]

    caps = np.asarray(problem.memory_caps or [np.inf] * problem.num_stages, dtype=np.float64)
    return mem, mono, caps


def _infeasible_message(problem: Problem) -> str:
    """Why no plan fits, and the smallest per-device cap that would."""
    caps = ", ".join(format_bytes(c) for c in problem.memory_caps)
    need, ranges = smallest_cap(problem)
    return (f"memory caps: no split of {problem.num_layers} layers over {problem.num_stages} stages fits the caps "
            f"[{caps}]; the smallest cap that fits is {format_bytes(need)} ({int(need)} bytes) per device, "
            f"with layers {format_ranges(ranges)}")


def problem_for(
    spec: MLPSpec,
    num_stages: int,
    microbatch: int,
    *,
    layer_times: Sequence[StageCost] | None = None,
    flops_per_second: float = DEFAULT_FLOPS,
    dtype: DType | str = DType.FLOAT32,
    optimizer: Optimizer | str = Optimizer.SGD,
    link: LinkModel | None = None,
    inflight: Sequence[int] | Callable[[int], Sequence[int]] | None = None,
    deferred_w: Sequence[int] | Callable[[int], Sequence[int]] | None = None,
    memory_caps: float | Sequence[float] | None = None,
    device_speeds: Sequence[float] | None = None,
) -> Problem:
    """The :class:`Problem` for ``spec`` at ``microbatch`` samples (FLOP-based times unless ``layer_times``).

    ``inflight``/``deferred_w`` may be per-stage counts or a function of the number of stages (e.g. from
    the simulator); ``memory_caps`` one cap for every device or one per stage.
    """
    if layer_times is None:
        layer_times = flop_times(layer_costs(spec, dtype, optimizer), flops_per_second, microbatch)
    if len(layer_times) != spec.num_layers:
        raise ValueError(f"layer_times: expected {spec.num_layers} layers for widths {list(spec.widths)}, "
                         f"got {len(layer_times)} (was the profile measured for another model?)")
    memory = layer_memory(spec, microbatch, dtype, optimizer)
    if isinstance(memory_caps, (int, float)):
        memory_caps = (float(memory_caps),) * num_stages
    return Problem(
        layer_times=tuple(layer_times),
        num_stages=num_stages,
        boundary_bytes=memory.boundary[:-1],
        link=link or LinkModel(),
        device_speeds=tuple(device_speeds or ()),
        memory=memory,
        memory_caps=tuple(memory_caps or ()),
        inflight=tuple(inflight(num_stages) if callable(inflight) else inflight or ()),
        deferred_w=tuple(deferred_w(num_stages) if callable(deferred_w) else deferred_w or ()),
        parameters=tuple(spec.num_parameters(layer) for layer in range(spec.num_layers)),
    )


def plan_for(spec: MLPSpec, num_stages: int, microbatch: int, method: Method | str = Method.OPTIMAL,
             **options: object) -> Plan:
    """``partition(problem_for(spec, num_stages, microbatch, **options), method)``.

    When no plan fits one cap shared by all devices, the error also names the fewest stages that would
    fit (using the same in-flight rule, which should then be a function of the stage count).
    """
    problem = problem_for(spec, num_stages, microbatch, **options)
    try:
        return partition(problem, method)
    except ValueError as err:
        caps = problem.memory_caps
        rule_known = not any(isinstance(options.get(name), Sequence) for name in ("inflight", "deferred_w"))
        if not (str(err).startswith("memory caps") and len(set(caps)) == 1 and rule_known
                and not options.get("device_speeds")):
            raise
        options = {**options, "memory_caps": caps[0]}
        for stages in range(num_stages + 1, spec.num_layers + 1):
            need, _ = smallest_cap(problem_for(spec, stages, microbatch, **options))
            if need <= caps[0]:
                raise ValueError(f"{err}; or use at least {stages} stages") from None
        raise ValueError(f"{err}; more stages would not help (at most {spec.num_layers})") from None


def plan_ranges(spec: MLPSpec, num_stages: int, method: Method | str = Method.OPTIMAL, microbatch: int = 1,
                **options: object) -> Ranges:
    """Just the layer ranges of :func:`plan_for` (what the runtime's placement needs)."""
    return plan_for(spec, num_stages, microbatch, method, **options).ranges
