"""Published baseline partitioners to compare against: uniform, DeepSpeed's by parameters, torchgpipe's time blocks.

* ``uniform``: the same number of layers per stage (the first L mod k stages take one more).
* ``by_parameters``: DeepSpeed's ``partition_method="parameters"`` balances the parameter count of the
  stages (contiguous, min-max); it ignores time, activations and links.
* ``time_blocks``: torchgpipe's ``balance_by_time`` feeds per-layer times to the block partition
  algorithm of Bárány and Grinberg, "Block partitions of sequences" (Israel J. Math. 2015,
  arXiv:1308.2452): normalize the costs to [0, 1], start from equal-count blocks, then repeatedly move
  one element into a minimal block from its neighbour on the side of a maximal block until
  max <= min + 1 (in normalized units). It is fast and close to balanced but not optimal, and it sees
  neither memory nor communication. Unlike the paper we never empty a block (a stage needs a layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import numpy as np

from partition.minmax import minmax_partition

Ranges = tuple[tuple[int, int], ...]


def _check(num_items: int, num_stages: int) -> None:
    if not 1 <= num_stages <= num_items:
        raise ValueError(f"num_stages: cannot place {num_items} layers on {num_stages} stages; "
                         f"use between 1 and {num_items} stages")


def uniform(num_layers: int, num_stages: int) -> Ranges:
    """Equal layer counts per stage; the first ``num_layers % num_stages`` stages get one extra layer."""
    _check(num_layers, num_stages)
    base, extra = divmod(num_layers, num_stages)
    sizes = [base + (1 if s < extra else 0) for s in range(num_stages)]
    cuts = [0, *accumulate(sizes)]
    return tuple(zip(cuts[:-1], cuts[1:]))


def by_parameters(parameters: Sequence[float], num_stages: int) -> Ranges:
    """Contiguous ranges minimizing the largest per-stage parameter count (DeepSpeed's balance)."""
    _check(len(parameters), num_stages)
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(parameters, dtype=np.float64))])

    def total(_stage: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return prefix[b] - prefix[a]

    _, ranges = minmax_partition(len(parameters), num_stages, total, total)
    return ranges


def time_blocks(times: Sequence[float], num_stages: int) -> Ranges:
    """torchgpipe's block partition of per-layer times (Bárány-Grinberg moves, see the module docstring)."""
    n = len(times)
    _check(n, num_stages)
    low, span = min(times), max(times) - min(times)
    normal = [(t - low) / span if span > 0 else 0.0 for t in times]
    prefix = [0.0, *accumulate(normal)]
    cuts = [n // num_stages * i for i in range(num_stages)] + [n]

    def size(block: int) -> float:
        return prefix[cuts[block + 1]] - prefix[cuts[block]]

    biggest = max(range(num_stages), key=lambda i: (size(i), i))
    for _ in range(4 * n * num_stages + 16):  # the paper proves termination; this is only a guard
        bottom = min(size(i) for i in range(num_stages))
        if size(biggest) <= bottom + 1:
            break
        smallest = min((i for i in range(num_stages) if size(i) == bottom), key=lambda i: abs(i - biggest))
        donor = smallest - 1 if biggest < smallest else smallest + 1
        if cuts[donor + 1] - cuts[donor] == 1:
            break
        if biggest < smallest:
            cuts[smallest] -= 1
        else:
            cuts[smallest + 1] += 1
        if donor == biggest:
            biggest = max(range(num_stages), key=lambda i: (size(i), i))
    return tuple(zip(cuts[:-1], cuts[1:]))
