"""Pipeline schedules as data: actions like ``2F0``, per-rank action lists, and their step-by-rank table.

The letters: F = forward, B = input gradient (dJ/dx, the backward that the previous stage waits for), W = weight
gradient (dJ/dW, db; deferrable), BW = the whole backward (B then W). torch.distributed.pipelining writes the input
gradient as I and the whole backward as B; ``Action.parse`` accepts its ``I`` (``"1I3"`` is our ``1B3``), but its
``B`` would mean our BW, so a table written in torch's letters must spell full backwards as ``BW``.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType


class Op(Enum):
    """What an action does; the value is its short name in ``str(Action)``."""

    F = "F"  # forward
    B = "B"  # input-gradient backward (weight gradient deferred to W)
    W = "W"  # weight-gradient backward
    BW = "BW"  # full backward: B then W fused
    SEND_F = "SEND_F"  # send F(s, m)'s output to stage s + 1
    RECV_F = "RECV_F"  # receive stage s's input from stage s - 1
    SEND_B = "SEND_B"  # send the gradient of stage s's input to stage s - 1
    RECV_B = "RECV_B"  # receive the gradient of stage s's output from stage s + 1

    @property
    def is_comm(self) -> bool:
        """True for the send/recv ops."""
        return self.name.startswith(("SEND", "RECV"))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Op):
            return NotImplemented
        names = Op._member_names_
        return names.index(self.name) < names.index(other.name)


_ACTION_RE = re.compile(r"(\d+)(SEND_F|RECV_F|SEND_B|RECV_B|BW|F|B|I|W)(\d+)")


@dataclass(frozen=True, order=True, slots=True, repr=False)
class Action:
    """One step of one rank: ``op`` on ``stage`` for ``microbatch``; prints as ``2F0``, ``1BW3``, ``0SEND_F2``."""

    stage: int
    op: Op
    microbatch: int

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            raise TypeError(f"Action.op: expected an Op, got {self.op!r}")

    def __str__(self) -> str:
        return f"{self.stage}{self.op.value}{self.microbatch}"

    def __repr__(self) -> str:
        return f"Action({self.stage}, Op.{self.op.name}, {self.microbatch})"

    @classmethod
    def parse(cls, text: str) -> Action:
        """The inverse of ``str``: ``Action.parse("1B3") == Action(1, Op.B, 3)``; torch's ``"1I3"`` is the same action.

        ValueError on anything else.
        """
        match = _ACTION_RE.fullmatch(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"not an action: {text!r} (expected <stage><op><microbatch> such as '2F0', '1BW3', '0SEND_F2')")
        return cls(int(match[1]), Op.B if match[2] == "I" else Op(match[2]), int(match[3]))


class ScheduleKind(Enum):
    """The schedule generators; the value is the name used on command lines."""

    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"
    INTERLEAVED_1F1B = "interleaved-1f1b"
    ZB_H1 = "zb-h1"
    ZB_V = "zb-v"
    AUTO = "auto"  # searched under a memory cap: ``partition.schedule.capped.capped_schedule``

    def stages_per_rank(self, virtual: int = 1) -> int:
        """How many stages each rank holds: ``virtual`` for interleaved-1f1b and auto (2: a V), 2 for zb-v, else 1."""
        if self in (ScheduleKind.INTERLEAVED_1F1B, ScheduleKind.AUTO):
            return virtual
        return 2 if self is ScheduleKind.ZB_V else 1

    @classmethod
    def fixed(cls) -> tuple[ScheduleKind, ...]:
        """The kinds ``generate`` builds from p, m and v alone: all but auto, which needs costs and a cap."""
        return tuple(k for k in cls if k is not cls.AUTO)


class ScheduleError(ValueError):
    """An invalid schedule; the message ends with a step-by-rank table marking ``action`` (when known)."""

    def __init__(self, reason: str, schedule: Schedule | None = None, action: Action | None = None) -> None:
        self.reason = reason
        self.action = action
        self.table = format_table(schedule, mark=action, context=6) if schedule is not None else ""
        super().__init__(f"{reason}\n{self.table}" if self.table else reason)


@dataclass(frozen=True)
class Schedule:
    """Per-rank ordered action lists plus the stage-to-rank placement; the only source of execution order."""

    kind: ScheduleKind
    num_ranks: int
    num_stages: int
    num_microbatches: int
    placement: tuple[int, ...]  # placement[stage] = rank
    actions: Mapping[int, tuple[Action, ...]] = field(default_factory=dict)  # rank -> actions, read-only

    def __post_init__(self) -> None:
        for name in ("num_ranks", "num_stages", "num_microbatches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Schedule.{name}: expected an integer >= 1, got {value!r}")
        placement = tuple(self.placement)
        if len(placement) != self.num_stages or any(not 0 <= r < self.num_ranks for r in placement):
            raise ValueError(f"Schedule.placement: expected {self.num_stages} ranks in 0..{self.num_ranks - 1}, got {placement}")
        unknown = set(self.actions) - set(range(self.num_ranks))
        if unknown:
            raise ValueError(f"Schedule.actions: ranks {sorted(unknown)} do not exist (ranks are 0..{self.num_ranks - 1})")
        actions = {r: tuple(self.actions.get(r, ())) for r in range(self.num_ranks)}
        object.__setattr__(self, "placement", placement)
        object.__setattr__(self, "actions", MappingProxyType(actions))

    def stages_of(self, rank: int) -> tuple[int, ...]:
        """The stages placed on ``rank``, in increasing order."""
        return tuple(s for s, r in enumerate(self.placement) if r == rank)

    def rank_of(self, stage: int) -> int:
        """The rank that holds ``stage``."""
        return self.placement[stage]

    @property
    def has_comms(self) -> bool:
        """True when the action lists contain send/recv actions (see ``partition.schedule.comms.insert_comms``)."""
        return any(a.op.is_comm for acts in self.actions.values() for a in acts)

    @property
    def splits_backward(self) -> bool:
        """True when the backward runs as separate B and W actions (zero-bubble) rather than as fused BW."""
        return any(a.op is Op.W for acts in self.actions.values() for a in acts)

    def with_actions(self, actions: Mapping[int, tuple[Action, ...]]) -> Schedule:
        """The same schedule with other action lists."""
        return Schedule(self.kind, self.num_ranks, self.num_stages, self.num_microbatches, self.placement, actions)

    def compute_only(self) -> Schedule:
        """The same schedule without its send/recv actions."""
        return self.with_actions({r: tuple(a for a in acts if not a.op.is_comm) for r, acts in self.actions.items()})


def format_table(schedule: Schedule, mark: Action | None = None, context: int | None = None) -> str:
    """The step x rank grid: row i holds each rank's i-th action; ``mark`` shows as ``>1B3<``.

    With ``context`` and a ``mark`` found in the schedule, only the rows within ``context`` steps of the marked
    action are printed (the others collapse into ``...``), which keeps error messages short for big schedules.
    """
    ranks = range(schedule.num_ranks)
    lists = [schedule.actions[r] for r in ranks]
    steps = max((len(acts) for acts in lists), default=0)
    shown = range(steps)
    if context is not None and mark is not None:
        rank = schedule.placement[mark.stage] if 0 <= mark.stage < schedule.num_stages else -1
        where = [i for i, a in enumerate(schedule.actions.get(rank, ())) if a == mark]
        if where:
            shown = range(max(0, where[0] - context), min(steps, where[0] + context + 1))
    columns = [[f">{a}<" if a == mark else str(a) for a in acts[shown.start:shown.stop]] for acts in lists]
    headers = [f"rank {r}" for r in ranks]
    widths = [max([len(h)] + [len(c) for c in col]) for h, col in zip(headers, columns)]
    step_w = max(4, len(str(max(steps - 1, 0))))
    lines = [" | ".join([f"{'step':>{step_w}}"] + [f"{h:<{w}}" for h, w in zip(headers, widths)]).rstrip()]
    lines.append("-+-".join(["-" * step_w] + ["-" * w for w in widths]))
    if shown.start > 0:
        lines.append(f"{'...':>{step_w}}")
    for j, i in enumerate(shown):
        cells = [f"{(col[j] if j < len(col) else ''):<{w}}" for col, w in zip(columns, widths)]
        lines.append(" | ".join([f"{i:>{step_w}}"] + cells).rstrip())
    if shown.stop < steps:
        lines.append(f"{'...':>{step_w}}")
    return "\n".join(lines)


def parse_table(text: str) -> dict[int, tuple[Action, ...]]:
    """The inverse of ``format_table`` (whole tables only): rank -> actions; marks ``>..<`` are ignored."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("not a schedule table: expected a 'step | rank 0 | ...' header and a rule line")
    headers = [h.strip() for h in lines[0].split("|")][1:]
    ranks = []
    for h in headers:
        if not re.fullmatch(r"rank \d+", h):
            raise ValueError(f"not a schedule table: header cell {h!r} should read 'rank <n>'")
        ranks.append(int(h.split()[1]))
    columns: dict[int, list[Action]] = {r: [] for r in ranks}
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")][1:]
        if len(cells) > len(ranks):
            raise ValueError(f"table row has {len(cells)} cells for {len(ranks)} ranks: {line!r}")
        for r, cell in zip(ranks, cells):
            if cell:
                columns[r].append(Action.parse(cell.strip("><")))
    return {r: tuple(acts) for r, acts in columns.items()}


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building ~10^5 small objects that hold no cycles.

    Allocation bursts otherwise trigger collections that rescan the whole growing heap: with p=64 and m=512 that
    more than doubles the time of generate, insert_comms or simulate. Also usable as a decorator.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
