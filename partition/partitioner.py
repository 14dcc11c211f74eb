"""Graph partitioner: contiguous layer ranges over k stages minimizing the bottleneck stage under memory caps.

A stage's time per microbatch is its layers' F + B + W on its device, the messages at its cuts and, with D
data-parallel replicas, its share of its gradients' ring all-reduce (``partition.problem``); its peak memory is
``LayerMemory.stage`` with the stage's in-flight and deferred-W counts. ``Method.OPTIMAL`` minimizes
max_s time(s, a_s, b_s) subject to memory(s, ...) <= cap_s exactly (``partition.minmax``); the baselines ignore
caps, links and reductions and report whether they fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from partition.baselines import by_parameters, time_blocks, uniform
from partition.cost import DType, Optimizer, flop_times, layer_costs
from partition.data_parallel import ring_all_reduce_times
from partition.memory import layer_memory
from partition.minmax import minmax_partition
from partition.plan import Method, Plan, Ranges, format_ranges, parse_ranges
from partition.problem import Problem
from partition.spec import MLPSpec
from partition.timing import LinkModel, StageCost
from partition.units import format_bytes

__all__ = ["Method", "Plan", "Problem", "parse_ranges", "partition", "plan_for", "plan_ranges", "problem_for", "smallest_cap"]

DEFAULT_FLOPS = 100e12  # a round figure for a modern accelerator; times are relative unless a link is set


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
    # a bound on the answer: the slowest layer alone, the work spread evenly (links and reductions only add to it)
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
    """Vectorized stage time (inf over the cap) and its lower bound for all earlier starts.

    The bound keeps the all-reduce: an earlier start only adds gradient bytes, and a ring grows with its bytes.
    """
    totals = np.concatenate([[0.0], np.cumsum([t.total for t in problem.layer_times])])
    grads = np.concatenate([[0.0], np.cumsum(problem.grad_bytes)])

    def reduce(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ring_all_reduce_times(grads[b] - grads[a], problem.replicas, problem.link) / problem.microbatches

    edges = np.zeros(problem.num_layers + 1)
    edges[1:-1] = [2 * problem.link.time(nbytes) for nbytes in problem.boundary_bytes]
    speeds = np.asarray(problem.device_speeds, dtype=np.float64)
    if problem.memory_caps:
        mem, mono, caps = _memory_functions(problem)
    else:
        mem = mono = caps = None

    def bound(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        low = (totals[b] - totals[a]) / speeds[s] + edges[b] + reduce(a, b)
        return low if mono is None else np.where(mono(s, a, b) > caps[s], np.inf, low)

    def cost(s: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        time = (totals[b] - totals[a]) / speeds[s] + edges[a] + edges[b] + reduce(a, b)
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
    replicas: int = 1,
    microbatches: int = 1,
) -> Problem:
    """The :class:`Problem` for ``spec`` at ``microbatch`` samples (FLOP-based times unless ``layer_times``).

    ``inflight``/``deferred_w`` may be per-stage counts or a function of the number of stages (e.g. from
    the simulator); ``memory_caps`` one cap for every device or one per stage. With ``replicas`` D > 1 each
    stage's gradients are all-reduced over D copies of the pipeline once per step of ``microbatches`` microbatches
    (a ring on ``link``; see ``partition.problem``).
    """
    if layer_times is None:
        layer_times = flop_times(layer_costs(spec, dtype, optimizer), flops_per_second, microbatch)
    if len(layer_times) != spec.num_layers:
        raise ValueError(f"layer_times: expected {spec.num_layers} layers for widths {list(spec.widths)}, "
                         f"got {len(layer_times)} (was the profile measured for another model?)")
    memory = layer_memory(spec, microbatch, dtype, optimizer)
    grads = tuple(float(c.grad_bytes) for c in layer_costs(spec, dtype, optimizer))
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
        grad_bytes=grads,
        replicas=replicas,
        microbatches=microbatches,
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
