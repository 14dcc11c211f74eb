"""Zero-bubble schedules (Qi et al.): ZB-H1 in closed form and ZB-V by a unit-time greedy list scheduler."""

from __future__ import annotations

from collections import deque

from partition.schedule.actions import Action, Op


def zb_h1_lists(p: int, m: int) -> list[list[Action]]:
    """ZB-H1 ("Zero Bubble Pipeline Parallelism", ICLR 2024, section 3.1): 1F1B with B and W split.

    Rank r follows 1F1B's order of F and B (p-r-1 warm-up forwards, then F and B in turn), and runs W(k) right
    after B(k + r): rank r defers r weight gradients, so every rank holds at most p microbatches' activations,
    rank 0's 1F1B peak. The B chain runs back without waiting for W, and the deferred W fill the drain; with
    T_F = T_B = T_W every rank idles (p-1)*(T_F + T_B - T_W), a third of 1F1B's (p-1)*(T_F + T_B + T_W).
    """
    return [_zb_h1_rank(p, m, r) for r in range(p)]


def _zb_h1_rank(p: int, m: int, r: int) -> list[Action]:
    warm = min(p - r - 1, m)
    acts = [Action(r, Op.F, k) for k in range(warm)]
    for k in range(m):
        if warm + k < m:
            acts.append(Action(r, Op.F, warm + k))
        acts.append(Action(r, Op.B, k))
        if k >= r:
            acts.append(Action(r, Op.W, k - r))
    return acts + [Action(r, Op.W, k) for k in range(max(0, m - r), m)]


def zb_v_lists(p: int, m: int) -> list[list[Action]]:
    """ZB-V ("Pipeline Parallelism with Controllable Memory", Qi et al., 2024): 2p stages in a V over p ranks.

    Stage s is on rank s for s < p and on rank 2p-1-s after, so rank r holds an early stage r and a late stage
    2p-1-r, and rank 0 holds the first and the last. Each rank follows the paper's three phases:

    - warm-up: 2(p-r)-1 forwards of the early stage; then r pairs (late F, early F); then p-r rounds of the late
      stage's F, B, W;
    - steady state: early F, early B, early W, then late F, B, W, until every forward has run;
    - cool-down: the remaining input gradients B, early stage first in each round, each W held back until 2r
      more B have run (the B chain back to rank 0 is the critical path; the held W fill the waits), the last
      held W at the end.

    With T_F = T_B = T_W and m >= 2p the bubble is near zero, and a rank holds at most the activations of 1F1B's
    rank 0. The order equals the paper's figure (as torch.distributed.pipelining's ScheduleZBVZeroBubble builds
    it) except, at most, the order of the W that run after a rank's last B, which changes no finish time.
    """
    return [_zb_v_rank(p, m, r) for r in range(p)]


def _zb_v_rank(p: int, m: int, r: int) -> list[Action]:
    early, late = r, 2 * p - 1 - r
    acts: list[Action] = []
    f, b = {early: 0, late: 0}, {early: 0, late: 0}

    def forward(s: int) -> bool:
        if f[s] == m:
            return False
        acts.append(Action(s, Op.F, f[s]))
        f[s] += 1
        return True

    def backward(s: int) -> None:
        acts.extend((Action(s, Op.B, b[s]), Action(s, Op.W, b[s])))
        b[s] += 1

    for _ in range(2 * (p - r) - 1):
        forward(early)
    for _ in range(r):
        forward(late)
        forward(early)
    for _ in range(p - r):
        if forward(late):
            backward(late)
    while f[early] < m or f[late] < m:  # B of the early stage needs the late stage's B of that microbatch
        forward(early)
        if b[early] < min(f[early], b[late]):
            backward(early)
        if forward(late):
            backward(late)
    held: deque[Action] = deque()
    while b[early] < m or b[late] < m:
        for s in (early, late):
            if b[s] < m and (s == late or b[early] < b[late]):
                acts.append(Action(s, Op.B, b[s]))
                held.append(Action(s, Op.W, b[s]))
                b[s] += 1
                if len(held) > 2 * r or (r == 0 and held):
                    acts.append(held.popleft())
    return acts + list(held)
