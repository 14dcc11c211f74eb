"""Schedule generators: ``generate(kind, p, m, v)`` -> compute actions (F, B, W, BW) for every rank."""

from __future__ import annotations

from partition.schedule.actions import Action, Op, Schedule, ScheduleKind, paused_gc
from partition.schedule.zero_bubble import zb_h1_lists, zb_v_lists


@paused_gc()
def generate(kind: ScheduleKind | str, num_ranks: int, num_microbatches: int, virtual: int = 1) -> Schedule:
    """The ``kind`` schedule for ``num_ranks`` ranks (pipeline depth p) and ``num_microbatches`` microbatches (m).

    - gpipe, 1f1b: one stage per rank, fused backward BW.
    - interleaved-1f1b: ``virtual`` (v) stages per rank, stage s on rank s % p, fused BW; needs m a multiple of p.
    - zb-h1: one stage per rank, split B and W (same activation memory as 1f1b on rank 0).
    - zb-v: two stages per rank in a V (stage s on rank s for s < p, rank 2p-1-s after), split B and W;
      ``virtual`` must be 1 (the default) or 2, both meaning the V's two stages per rank.
    - auto is not built here (it needs costs and a cap): ``partition.schedule.capped.capped_schedule``.
    Only compute actions are generated; ``partition.schedule.comms.insert_comms`` adds the sends and receives.
    """
    kind = _parse_kind(kind)
    if kind is ScheduleKind.AUTO:
        raise ValueError("the auto schedule needs stage costs and a memory cap: build it with "
                         "partition.schedule.capped.capped_schedule(...)")
    p, m, v = _check_int("num_ranks", num_ranks), _check_int("num_microbatches", num_microbatches), _check_int("virtual", virtual)
    if kind is ScheduleKind.ZB_V:
        if v not in (1, 2):
            raise ValueError(f"zb-v always places 2 stages per rank: virtual must be 1 (default) or 2, got {v}")
        placement = tuple(list(range(p)) + list(reversed(range(p))))
        return _schedule(kind, p, m, placement, zb_v_lists(p, m))
    if kind is ScheduleKind.INTERLEAVED_1F1B:
        if m % p:
            lower, upper = (m // p) * p, (m // p + 1) * p
            fits = f"{lower} or {upper}" if lower else f"{upper}"
            raise ValueError(f"interleaved-1f1b needs num_microbatches to be a multiple of num_ranks={p}: got {m}, try {fits}")
        placement = tuple(s % p for s in range(p * v))
        return _schedule(kind, p, m, placement, [_interleaved(p, m, v, r) for r in range(p)])
    if v != 1:
        raise ValueError(f"virtual={v} applies only to interleaved-1f1b (and zb-v's fixed 2); {kind.value} needs virtual=1")
    placement = tuple(range(p))
    if kind is ScheduleKind.GPIPE:
        lists = [[Action(r, Op.F, k) for k in range(m)] + [Action(r, Op.BW, k) for k in reversed(range(m))] for r in range(p)]
    elif kind is ScheduleKind.ONE_F_ONE_B:
        lists = [_one_f_one_b(p, m, r) for r in range(p)]
    else:
        lists = zb_h1_lists(p, m)
    return _schedule(kind, p, m, placement, lists)


def _parse_kind(kind: ScheduleKind | str) -> ScheduleKind:
    if isinstance(kind, ScheduleKind):
        return kind
    try:
        return ScheduleKind(kind)
    except ValueError:
        names = ", ".join(k.value for k in ScheduleKind)
        raise ValueError(f"unknown schedule kind {kind!r}: choose one of {names}") from None


def _check_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _schedule(kind: ScheduleKind, p: int, m: int, placement: tuple[int, ...], lists: list[list[Action]]) -> Schedule:
    return Schedule(kind, p, len(placement), m, placement, {r: tuple(acts) for r, acts in enumerate(lists)})


def _one_f_one_b(p: int, m: int, r: int) -> list[Action]:
    """PipeDream-Flush: p-r-1 warm-up forwards, then one forward and one backward in turn, then the drain."""
    warm = min(p - r - 1, m)
    acts = [Action(r, Op.F, k) for k in range(warm)]
    for k in range(m - warm):
        acts += [Action(r, Op.F, warm + k), Action(r, Op.BW, k)]
    acts += [Action(r, Op.BW, k) for k in range(m - warm, m)]
    return acts


def _interleaved(p: int, m: int, v: int, r: int) -> list[Action]:
    """Megatron-LM's interleaved 1F1B on rank r (Narayanan et al., 2021, section 2.2).

    Both the forward and the backward order walk groups of p microbatches: chunk 0 for microbatches
    g*p .. g*p+p-1, then chunk 1 for the same microbatches, and so on (the backward takes the chunks in reverse).
    Rank r runs ``(v-1)*p + 2*(p-1-r)`` warm-up forwards (Megatron's count; ``p-1-r`` when v = 1, which is 1f1b),
    then alternates one forward and one backward, then drains the backwards.

    Closed form, for costs equal on every stage (F = f, BW = c, as tests/test_simulate.py checks exactly over
    p, m, v): each rank is busy ``v*m*(f+c)``. The last rank starts after its first input has crossed p-1 ranks,
    a fill of ``(p-1)*f``; rank 0 ends after the last gradient has crossed back p-1 ranks, a drain of ``(p-1)*c``;
    in between, the warm-up above leaves no rank waiting. So the makespan is ``(v*m + p-1)*(f+c)`` and the bubble
    ``(p-1) / (v*m + p-1)``: 1F1B's with m replaced by v*m (Megatron's "bubble shrinks by a factor of v").
    """
    total = v * m
    warm = min(total, (v - 1) * p + 2 * (p - 1 - r) if v > 1 else p - 1 - r)

    def action(k: int, backward: bool) -> Action:
        group, within = divmod(k, p * v)
        chunk = within // p
        if backward:
            chunk = v - 1 - chunk
        return Action(chunk * p + r, Op.BW if backward else Op.F, group * p + within % p)

    acts = [action(k, False) for k in range(warm)]
    for k in range(total - warm):
        acts += [action(warm + k, False), action(k, True)]
    acts += [action(k, True) for k in range(total - warm, total)]
    return acts
