"""A schedule transform: split every fused backward and run all weight gradients of a step at its end.

Each BW(s, m) becomes B(s, m); each rank then ends its list with W(s, 0..m-1) for its stages, last stage
first. The executor fuses consecutive W of a stage into one GEMM per layer over all microbatches' rows,
so dJ/dW runs at the full-batch GEMM rate (the weight-gradient GEMM g^T x is markedly slower with few
rows). The price is memory: every microbatch's layer inputs and output gradients stay alive until the end
of the step, like GPipe's activations. W already split out (zero-bubble schedules) is moved as well.
"""

from __future__ import annotations

from partition.schedule.actions import Action, Op, Schedule


def defer_all_w(schedule: Schedule) -> Schedule:
    """``schedule`` with every weight gradient postponed to the end of its rank's list (see module doc)."""
    lists: dict[int, tuple[Action, ...]] = {}
    for rank, acts in schedule.actions.items():
        body: list[Action] = []
        deferred: dict[int, list[int]] = {}
        for a in acts:
            if a.op is Op.BW:
                body.append(Action(a.stage, Op.B, a.microbatch))
                deferred.setdefault(a.stage, []).append(a.microbatch)
            elif a.op is Op.W:
                deferred.setdefault(a.stage, []).append(a.microbatch)
            else:
                body.append(a)
        tail = [Action(s, Op.W, m) for s in sorted(deferred, reverse=True) for m in deferred[s]]
        lists[rank] = tuple(body + tail)
    return schedule.with_actions(lists)
