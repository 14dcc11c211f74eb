"""Exact capped schedules by branch and bound over every per-rank order of the F/B/W actions.

The space: each rank's list orders the F, B and W (or fused BW) of its stages, each (stage, op) taking
microbatches 0..m-1 in turn, with every rank's byte budget and the in-flight cap respected (``capped_state``);
BW is tried only on stages whose deferred set is larger than the backward window (elsewhere B then W at once is
as fast and holds no more). The search builds a schedule action by action in the order of start times (ties by
rank), which visits every combination of rank lists exactly once: the simulator's timeline of any combination,
sorted that way, is a sequence in which every action's inputs come before it, because F and B take time (so the
search needs F, B > 0 on every stage). A branch is cut when a lower bound reaches the best makespan found: for
every rank, its unplaced work after the earliest start of any of its next actions (its free time, their inputs'
arrival, or an unplaced input's producer starting now); for every stage, its unplaced F (or B) run back to back
from that start followed by the shortest chain from that action to the end of the step. The answer says
whether the search finished (a proven optimum) or ran out of its node budget first.
"""

from __future__ import annotations

from dataclasses import dataclass

from partition.schedule.actions import Action
from partition.schedule.capped_state import BW, B, F, Pipe, State, W

EPS = 1e-9  # relative: an improvement must beat the incumbent by more than this


@dataclass(frozen=True)
class Exact:
    """The search's answer: ``lists`` is None when nothing beat ``upper``; ``proven`` False when out of nodes."""

    makespan: float
    lists: tuple[tuple[Action, ...], ...] | None
    proven: bool
    nodes: int


def exact_search(pipe: Pipe, upper: float, max_nodes: int = 2_000_000) -> Exact:
    """The fastest schedule of the space if it beats ``upper`` (e.g. a known makespan) by more than a rounding error."""
    if any(c[F] <= 0 or c[B] <= 0 for c in pipe.cost):
        raise ValueError("exact capped search: every stage needs F and B times > 0")
    search = _Search(pipe, upper, max_nodes)
    search.run(-1.0, -1)
    return Exact(search.best, search.lists, search.nodes <= max_nodes, search.nodes)


class _Search:
    def __init__(self, pipe: Pipe, upper: float, max_nodes: int) -> None:
        self.pipe, self.state = pipe, State(pipe)
        self.best, self.lists, self.nodes, self.max_nodes = upper, None, 0, max_nodes
        S, m = pipe.num_stages, pipe.num_microbatches
        self.left = [sum(sum(pipe.cost[s]) * m for s in stages) for stages in self.state.rank_stages]
        tail_b = [0.0] * S  # shortest time from the start of B(s, k) to the end of the step
        for s in range(S):
            b, w = pipe.cost[s][B], pipe.cost[s][W]
            tail_b[s] = b + (max(w, pipe.transfer[s - 1] + tail_b[s - 1]) if s else w)
        tail_f = [0.0] * S
        for s in reversed(range(S)):
            f = pipe.cost[s][F]
            tail_f[s] = f + (pipe.transfer[s] + tail_f[s + 1] if s < S - 1 else tail_b[s])
        self.tail = (tail_f, tail_b)

    def bound(self, now: float) -> float:
        st, pipe, m = self.state, self.pipe, self.pipe.num_microbatches
        low, first = st.makespan, [float("inf")] * pipe.num_ranks
        est = [[0.0] * pipe.num_stages for _ in range(3)]
        for op in (F, B, W):
            for s, k in enumerate(st.next[op]):
                if k < m:
                    r = pipe.placement[s]
                    est[op][s] = at = max(st.free[r], self.earliest(op, s, now))
                    first[r] = min(first[r], at)
        for r, left in enumerate(self.left):
            if first[r] < float("inf"):  # a rank with nothing left may keep a rounding residue in ``left``
                low = max(low, first[r] + left)
        for op in (F, B):
            tail = self.tail[op]
            for s, k in enumerate(st.next[op]):
                if k < m:
                    low = max(low, est[op][s] + (m - 1 - k) * pipe.cost[s][op] + tail[s])
        return low

    def earliest(self, op: int, s: int, now: float) -> float:
        """A lower bound on the start of the next ``op`` of stage ``s``: its ready time, or an unplaced input's
        producer starting no earlier than ``now`` and taking its time (and its transfer)."""
        st, pipe = self.state, self.pipe
        at = st.ready(op, s)
        if at >= 0:
            return max(at, now)
        m, k, cost = pipe.num_microbatches, st.next[op][s], pipe.cost
        if op == F:
            return now + cost[s - 1][F] + pipe.transfer[s - 1]
        if op == W:
            return now + cost[s][B]
        low = now if st.end[F][s * m + k] >= 0 else now + cost[s][F]
        if s < pipe.num_stages - 1 and st.end[B][(s + 1) * m + k] < 0:
            low = max(low, now + cost[s + 1][B] + pipe.transfer[s])
        return low

    def run(self, now: float, last_rank: int) -> None:
        self.nodes += 1
        st = self.state
        if st.done == st.total:
            if st.makespan < self.best * (1 - EPS):
                self.best, self.lists = st.makespan, tuple(tuple(acts) for acts in st.lists)
            return
        if self.nodes > self.max_nodes or self.bound(now) >= self.best * (1 - EPS):
            return
        options = []
        for r, stages in enumerate(st.rank_stages):
            for op in (B, F, W, BW):
                for s in stages:
                    if op == BW and not self.pipe.fuse_helps(s):
                        continue  # B then W at once is as fast and holds no more
                    at = st.ready(op, s)
                    if at < 0:
                        continue
                    start = max(at, st.free[r])
                    if start < now or (start == now and r < last_rank) or not st.allowed(op, s):
                        continue
                    options.append((start, op, s, r))
        options.sort(key=lambda o: (o[0], o[1]))
        for start, op, s, r in options:
            st.apply(op, s, start)
            self.left[r] -= st.cost(op, s)
            self.run(start, r)
            self.left[r] += st.cost(op, s)
            st.undo()
