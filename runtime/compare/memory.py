"""Measured peak memory per device: one instrumented step that tracks every tensor each device's actions create.

What a device holds during a step: its parameters and their optimizer state, the input rows (first stage) or
targets (last stage) of the step, and what its actions create and keep: activations saved for backward,
deferred weight-gradient inputs, gradients, and messages not yet received. One extra step of a fresh copy of the
candidate runs under a ``TorchDispatchMode`` that records each tensor an operation returns, with the device
(rank) whose action returned it. After every action, and inside a recomputing B once its forward has been rebuilt,
the still-alive tensors are summed per rank (each storage once), and the largest sum is kept. Temporaries created
and freed inside one action are not seen, as in the memory model. On CUDA, ``torch.cuda.max_memory_allocated``
of every device is recorded as well. A PP x DP candidate's devices are measured on one replica (its pipeline of m
microbatches on its B/D rows): every replica holds the same (under torchrun every replica measures its own, and
the mean over the replicas is kept).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from partition.spec import MLPSpec
from runtime.compare.run import RunContext, build, step_inputs
from runtime.compare.types import Candidate
from runtime.engine.pipeline import Pipeline
from runtime.engine.stage import Stage
from runtime.train.measure import replica_mean

STAGE_METHODS = ("forward", "backward_input", "recompute", "backward_weight", "backward_weight_fused")
METHOD = ("one extra step under a TorchDispatchMode: per device, parameters + optimizer state + the step's input rows "
          "(first stage) or targets (last stage) + the largest sum, after any action, of the live tensors its actions "
          "created (saved activations, deferred weight-gradient inputs, gradients, messages not yet received)")


class _Tracker(TorchDispatchMode):
    """Remembers (weak reference, owner rank, storage, bytes) of every tensor returned while an owner is set.

    Storages in ``counted`` (the parameters, the step's rows and targets, added to the figure apart) are skipped,
    so that a view of them made inside an action (a detached input, a transposed weight) is not counted twice.
    """

    def __init__(self, counted: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.owner: int | None = None
        self.counted = counted
        self.items: list[tuple[weakref.ref, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if self.owner is not None:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.counted:
                    storage = t.untyped_storage()
                    self.items.append((weakref.ref(t), self.owner, storage.data_ptr(), storage.nbytes()))
        return out

    def live(self) -> dict[int, int]:
        """Bytes of the still-alive tracked storages, per owner rank (dead entries are dropped)."""
        self.items = [item for item in self.items if item[0]() is not None]
        unique = {(owner, ptr): nbytes for _, owner, ptr, nbytes in self.items}
        per_rank: dict[int, int] = {}
        for (owner, _), nbytes in unique.items():
            per_rank[owner] = per_rank.get(owner, 0) + nbytes
        return per_rank


def _instrument(stage: Stage, rank: int, tracker: _Tracker, peaks: dict[int, int]) -> None:
    """Make this (throw-away) stage's actions set the owner while they run and sample the live bytes after."""
    for name in STAGE_METHODS:
        method = getattr(stage, name)

        def wrapped(*args: object, _method: Callable = method, **kwargs: object) -> object:
            outer, tracker.owner = tracker.owner, rank  # a recompute runs inside its B: the B keeps its owner after
            try:
                return _method(*args, **kwargs)
            finally:
                tracker.owner = outer
                for r, nbytes in tracker.live().items():
                    peaks[r] = max(peaks.get(r, 0), nbytes)

        setattr(stage, name, wrapped)


def _nbytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(tensors)[0] if isinstance(t, torch.Tensor))


def measure_memory(pipe: Pipeline, x: torch.Tensor | None, y: torch.Tensor | None, batch: int, distributed: bool) -> dict:
    """Run one step of ``pipe`` (a fresh copy, spent afterwards) on ``x``, ``y``; peak bytes per device and the method."""
    placement = pipe.schedule.placement
    num_ranks = pipe.schedule.num_ranks
    given = [x, y, *(p for stage in pipe.stages.values() for p in stage.parameters())]
    tracker, peaks = _Tracker(frozenset(t.untyped_storage().data_ptr() for t in given if t is not None)), {}
    for s, stage in pipe.stages.items():
        _instrument(stage, placement[s], tracker, peaks)
    devices = sorted({str(st.device) for st in pipe.stages.values() if st.device.type == "cuda"})
    for dev in devices:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    with tracker:
        pipe.step(x, y, batch)
    held = [0.0] * num_ranks
    for s, stage in pipe.stages.items():
        state = [pipe.optimizers[s].state[p] for p in stage.parameters()]
        held[placement[s]] += _nbytes(stage.parameters()) + _nbytes(state)
    if pipe.first is not None and x is not None:
        held[placement[0]] += _nbytes(x)
    if pipe.last is not None and y is not None:
        held[placement[pipe.cfg.num_stages - 1]] += _nbytes(y)
    for r, nbytes in peaks.items():
        held[r] += nbytes
    if distributed:  # each rank measured its own stages; each replica the same ones
        held = replica_mean(torch.tensor(held, dtype=torch.float64), num_ranks).tolist()
    cuda = {dev: int(torch.cuda.max_memory_allocated(dev)) for dev in devices}
    return {"per_device": [round(v) for v in held], "cuda_max_allocated": cuda or None}


def candidate_memory(ctx: RunContext, spec: MLPSpec, cand: Candidate, x: torch.Tensor, y: torch.Tensor) -> dict:
    """:func:`measure_memory` of a fresh copy of ``cand`` on the first rows of ``x``, ``y`` (a step's worth; a PP x DP
    candidate: one replica's share, its figures repeated for every replica)."""
    rows = cand.minibatch // cand.replicas
    pipe = build(ctx, spec, cand, one_replica=True)
    found = measure_memory(pipe, *step_inputs(pipe, x[:rows], y[:rows]), rows, ctx.spans_processes(cand))
    return {**found, "per_device": found["per_device"] * cand.replicas}
