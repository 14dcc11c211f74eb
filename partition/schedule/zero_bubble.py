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

    Stage s is on rank s for s < p and on rank 2p-1-s after, so rank 0 holds the first and the last stage. The
    order comes from replaying the pipeline with unit F, B and W: at each tick a free rank starts, in this priority,
    the oldest ready B, else the ready F of its later stage then its earlier one (while the rank holds fewer than
    2p stage-activations, the same bytes as 1F1B's p microbatches of full-rank activations), else its oldest
    deferred W. Deferred W fill what would be bubbles, so for m >= 2p the bubble is near zero.
    """
    stages, cap, never = 2 * p, 2 * p, 1 << 62
    f_end = [never] * (stages * m)  # tick at which F(s, k) ends, at index s * m + k
    b_end = [never] * (stages * m + m)  # the same for B; one extra row: "B" past the last stage ends at 0
    b_end[stages * m:] = [0] * m
    next_f, next_b = [0] * stages, [0] * stages
    pending_w: list[deque[tuple[int, int]]] = [deque() for _ in range(p)]
    held = [0] * p
    lists: list[list[Action]] = [[] for _ in range(p)]
    remaining, tick = 3 * stages * m, 0
    while remaining:
        started = 0
        for r in range(p):
            late = stages - 1 - r
            ke, kl = next_b[r], next_b[late]
            b_early = ke < m and f_end[r * m + ke] <= tick and b_end[(r + 1) * m + ke] <= tick
            b_late = kl < m and f_end[late * m + kl] <= tick and b_end[(late + 1) * m + kl] <= tick
            if b_early and (not b_late or ke <= kl):
                s, op, k = r, Op.B, ke
            elif b_late:
                s, op, k = late, Op.B, kl
            else:
                kl, ke = next_f[late], next_f[r]
                if held[r] < cap and kl < m and f_end[(late - 1) * m + kl] <= tick:
                    s, op, k = late, Op.F, kl
                elif held[r] < cap and ke < m and (r == 0 or f_end[(r - 1) * m + ke] <= tick):
                    s, op, k = r, Op.F, ke
                elif pending_w[r]:
                    (s, k), op = pending_w[r].popleft(), Op.W
                else:
                    continue
            lists[r].append(Action(s, op, k))
            started += 1
            if op is Op.F:
                f_end[s * m + k] = tick + 1
                next_f[s] += 1
                held[r] += 1
            elif op is Op.B:
                b_end[s * m + k] = tick + 1
                next_b[s] += 1
                pending_w[r].append((s, k))
            else:
                held[r] -= 1
        if not started:  # every action lasts one tick, so nothing is running: waiting cannot help
            raise RuntimeError(f"zb-v generator stalled at tick {tick} for p={p}, m={m}")  # a bug, not bad input
        remaining -= started
        tick += 1
    return lists
