"""Exact min-max contiguous partition by dynamic programming over stages, pruned by monotone lower bounds.

For k stages over L layers, ``best[s][b]`` is the smallest bottleneck of stages 0..s covering layers
[0, b) with stage s ending at b:

    best[0][b] = cost(0, 0, b)
    best[s][b] = min over a < b of max(best[s-1][a], cost(s, a, b))

Stage costs may depend on both ends (bytes crossing the cuts at a and b) and on the stage (device
speed, memory cap, in-flight count), so neither greedy filling nor binary search with a monotone
feasibility test is exact; this dynamic program is (PipeDream's partitioner is the same recurrence).
To make it fast, for each end b the candidates a = b-1, b-2, ... are scanned in growing chunks, all b
at once with numpy, and the scan stops once ``bound(s, a, b)`` (a lower bound on the cost of every
stage [a', b) with a' <= a, e.g. its compute time alone) exceeds the best value found for b: earlier
starts can only cost more. Given a ``lower`` bound on the final answer (e.g. the slowest single layer),
the scan for b also stops once best[b] <= lower: the answer is a max over stages, so driving one entry
below ``lower`` cannot change it. The result is exact for any cost whose bounds are valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# cost(s, a, b) and bound(s, a, b) take integer arrays a, b (broadcastable) and return float arrays.
StageFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]

FIRST_CHUNK = 8
MAX_CHUNK = 512


def minmax_partition(
    num_layers: int, num_stages: int, cost: StageFn, bound: StageFn, upper: float = math.inf, lower: float = -math.inf
) -> tuple[float, tuple[tuple[int, int], ...]]:
    """The smallest max stage cost over contiguous splits, and its half-open ranges.

    ``cost`` is ``inf`` where a stage is infeasible (e.g. over its memory cap). ``upper`` is a value
    known to be reachable (or ``inf``); values above it are not refined. ``lower`` is a value the answer
    cannot beat; values below it are not refined. Returns ``(inf, ())`` when no split is feasible.
    """
    if not 1 <= num_stages <= num_layers:
        raise ValueError(f"num_stages: expected 1 <= num_stages <= {num_layers} layers, got {num_stages}")
    size = num_layers + 1
    ends = np.arange(1, num_layers - num_stages + 2)
    prev = np.full(size, np.inf)
    prev[ends] = cost(0, np.zeros_like(ends), ends)
    prev[prev > upper] = np.inf
    choices = []
    for stage in range(1, num_stages):
        last_end = num_layers - (num_stages - 1 - stage)
        first_end = stage + 1 if stage < num_stages - 1 else num_layers
        best, arg = _relax(stage, prev, np.arange(first_end, last_end + 1), cost, bound, upper, lower)
        choices.append(arg)
        prev = best
    value = float(prev[num_layers])
    if not math.isfinite(value):
        return math.inf, ()
    cuts = [num_layers]
    for arg in reversed(choices):
        cuts.append(int(arg[cuts[-1]]))
    cuts.append(0)
    cuts.reverse()
    return value, tuple(zip(cuts[:-1], cuts[1:]))


def _relax(
    stage: int, prev: np.ndarray, ends: np.ndarray, cost: StageFn, bound: StageFn, upper: float, lower: float
) -> tuple[np.ndarray, np.ndarray]:
    """best[b] = min_a max(prev[a], cost(stage, a, b)) for b in ``ends``, and the minimizing a."""
    best = np.full(prev.shape, np.inf)
    arg = np.full(prev.shape, -1, dtype=np.int64)
    active = ends
    offset, chunk = 1, FIRST_CHUNK
    while active.size:
        starts = active[:, None] - np.arange(offset, offset + chunk)[None, :]
        valid = starts >= stage
        safe = np.where(valid, starts, stage)
        ends2d = active[:, None]
        cand = np.maximum(prev[safe], cost(stage, safe, ends2d))
        cand[~valid] = np.inf
        pick = np.argmin(cand, axis=1)
        value = cand[np.arange(active.size), pick]
        better = value < best[active]
        best[active[better]] = value[better]
        arg[active[better]] = safe[better, pick[better]]
        threshold = np.minimum(best[active], upper)
        last = safe[:, -1]
        low = bound(stage, last, active)
        done = (starts[:, -1] <= stage) | (low > threshold) | np.isinf(low) | (best[active] <= lower)
        active = active[~done]
        offset += chunk
        chunk = min(2 * chunk, MAX_CHUNK)
    best[best > upper] = np.inf
    return best, arg
