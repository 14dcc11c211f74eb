"""The state both capped-schedule searches advance: F/B/W of every stage placed in time, with memory per rank.

Each (stage, op) runs its microbatches in order 0, 1, ..., m-1, and a backward is either split (B, later W)
or fused (BW: B and W at once, which defers nothing); that is the space the searches explore. Timing is the
simulator's (``partition.schedule.replay`` without send/recv actions): a rank runs one action at a time, F(s, k)
waits for F(s-1, k), B(s, k) for F(s, k) and B(s+1, k), W(s, k) for B(s, k), and a tensor crossing ranks arrives
``transfer[s]`` seconds after its producer ends. Memory is ``partition.activation_peak``'s walk, kept as a
running sum per rank: a microbatch holds ``forward`` bytes from F to B, ``backward`` during B, ``deferred``
from a split B to its W; an action is allowed when the rank's peak stays within its budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from partition.memory import MicrobatchBytes
from partition.schedule.actions import Action, Op

OPS = (Op.F, Op.B, Op.W, Op.BW)
F, B, W, BW = range(4)


@dataclass(frozen=True)
class Pipe:
    """The numbers a search needs: placement, per-stage seconds and bytes, per-rank budgets."""

    num_ranks: int
    num_microbatches: int
    placement: tuple[int, ...]  # placement[stage] = rank
    cost: tuple[tuple[float, float, float], ...]  # per stage: (f, b, w) seconds
    transfer: tuple[float, ...]  # per stage s: seconds from s to s + 1 (0 on one rank, and for the last)
    bytes: tuple[MicrobatchBytes, ...]  # per stage: one microbatch's bytes in each phase
    budget: tuple[float, ...]  # per rank: activation bytes allowed
    max_inflight: int  # per stage: most microbatches in flight (from F until W or BW)

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.placement)

    def stages_of(self, rank: int) -> tuple[int, ...]:
        """The stages on ``rank``."""
        return tuple(s for s, r in enumerate(self.placement) if r == rank)

    def fuse_helps(self, s: int) -> bool:
        """Whether a fused BW can hold less than B then W at once on stage ``s`` (its deferred set is larger)."""
        return self.bytes[s].deferred > self.bytes[s].backward


class State:
    """Mutable progress of one search: ``ready``/``allowed`` ask, ``apply``/``undo`` move (last in, first out)."""

    def __init__(self, pipe: Pipe) -> None:
        S, m = pipe.num_stages, pipe.num_microbatches
        self.pipe = pipe
        self.end = [[-1.0] * (S * m) for _ in range(3)]  # end[op][s * m + k] for F, B, W (BW sets B's and W's)
        self.next = [[0] * S for _ in range(3)]  # next microbatch of (op, stage) for F, B, W
        self.inflight = [0] * S  # microbatches from F until W or BW
        self.held = [0.0] * pipe.num_ranks  # activation bytes now
        self.peak = [0.0] * pipe.num_ranks
        self.free = [0.0] * pipe.num_ranks  # when each rank's last action ends
        self.lists: list[list[Action]] = [[] for _ in range(pipe.num_ranks)]
        self.rank_stages = [pipe.stages_of(r) for r in range(pipe.num_ranks)]
        self.done = 0  # parts placed (F, B, W; a BW counts as two)
        self._undo: list[tuple] = []

    @property
    def total(self) -> int:
        """F, B and W parts in a complete schedule (a BW counts as two): 3 per stage and microbatch."""
        return 3 * self.pipe.num_stages * self.pipe.num_microbatches

    @property
    def makespan(self) -> float:
        """When the last placed action ends."""
        return max(self.free)

    def cost(self, op: int, s: int) -> float:
        """Seconds of ``op`` on stage ``s`` (BW: b + w)."""
        c = self.pipe.cost[s]
        return c[B] + c[W] if op == BW else c[op]

    def ready(self, op: int, s: int) -> float:
        """When the next ``op`` of stage ``s`` has its inputs (-1: an input is not placed yet, or none is left)."""
        if op == BW:
            return self.ready(B, s) if self.next[W][s] == self.next[B][s] else -1.0
        pipe, m = self.pipe, self.pipe.num_microbatches
        k = self.next[op][s]
        if k >= m:
            return -1.0
        if op == F:
            if s == 0:
                return 0.0
            got = self.end[F][(s - 1) * m + k]
            return got + pipe.transfer[s - 1] if got >= 0 else -1.0
        if op == W:
            return self.end[B][s * m + k]
        mine = self.end[F][s * m + k]
        if mine < 0 or s == pipe.num_stages - 1:
            return mine
        grad = self.end[B][(s + 1) * m + k]
        return max(mine, grad + pipe.transfer[s]) if grad >= 0 else -1.0

    def _after(self, op: int, s: int) -> tuple[float, float]:
        """(bytes held after, peak during) the next ``op`` of stage ``s`` on its rank."""
        mb, r = self.pipe.bytes[s], self.pipe.placement[s]
        held = self.held[r]
        if op == F:
            return held + mb.forward, held + mb.forward
        if op == W:
            return held - mb.deferred, held
        during = held - mb.forward + mb.backward
        after = held - mb.forward + (mb.deferred if op == B else 0)
        return after, max(during, after)

    def allowed(self, op: int, s: int) -> bool:
        """Whether the next ``op`` of stage ``s`` keeps its rank within the budget and the in-flight cap."""
        if op == F and self.inflight[s] >= self.pipe.max_inflight:
            return False
        r = self.pipe.placement[s]
        return self._after(op, s)[1] <= self.pipe.budget[r]

    def apply(self, op: int, s: int, start: float) -> None:
        """Place the next ``op`` of stage ``s`` at ``start`` (the caller checked ``ready`` and ``allowed``)."""
        pipe, m = self.pipe, self.pipe.num_microbatches
        r, k = pipe.placement[s], self.next[B if op == BW else op][s]
        self._undo.append((op, s, r, self.free[r], self.held[r], self.peak[r]))
        self.free[r] = start + self.cost(op, s)
        for part in (B, W) if op == BW else (op,):
            self.end[part][s * m + k] = self.free[r]
            self.next[part][s] = k + 1
        held, during = self._after(op, s)
        self.held[r], self.peak[r] = held, max(self.peak[r], during)
        self.inflight[s] += 1 if op == F else -1 if op in (W, BW) else 0
        self.lists[r].append(Action(s, OPS[op], k))
        self.done += 2 if op == BW else 1

    def undo(self) -> None:
        """Take back the last ``apply``."""
        op, s, r, free, held, peak = self._undo.pop()
        m = self.pipe.num_microbatches
        k = self.next[B if op == BW else op][s] - 1
        for part in (B, W) if op == BW else (op,):
            self.next[part][s] = k
            self.end[part][s * m + k] = -1.0
        self.free[r], self.held[r], self.peak[r] = free, held, peak
        self.inflight[s] -= 1 if op == F else -1 if op in (W, BW) else 0
        self.lists[r].pop()
        self.done -= 2 if op == BW else 1
