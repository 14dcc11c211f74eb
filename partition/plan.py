"""A pipeline plan: contiguous layer ranges per stage with predicted times and memory, and range parsing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from partition.memory import MemoryReport
from partition.recompute import Recompute
from partition.timing import StageCost

Ranges = tuple[tuple[int, int], ...]


class Method(Enum):
    """How a plan's ranges were chosen."""

    OPTIMAL = "optimal"
    UNIFORM = "uniform"
    PARAMETERS = "parameters"
    TIME_BLOCKS = "time-blocks"


@dataclass(frozen=True)
class Plan:
    """Stage s owns layers ``ranges[s]`` = [start, stop); costs are per microbatch on stage s's device.

    With ``recompute``, stage s recomputes as ``recompute[s]`` says: its B cost includes the recomputed forward
    and its memory terms the smaller in-flight set plus the recompute window.

    ``method`` is None for ranges given by hand. ``comm_times[s]`` is the link time of stage s's
    boundary messages (activation and gradient at each of its cuts); ``boundary_bytes[c]`` the bytes
    of one microbatch's activation crossing cut c (between stages c and c+1). ``reduce_times[s]`` is stage s's
    gradient all-reduce over the data-parallel replicas, one step's ring time over the step's microbatches (empty:
    one replica, nothing to reduce).
    """

    method: Method | None
    ranges: Ranges
    stage_costs: tuple[StageCost, ...]
    comm_times: tuple[float, ...]
    boundary_bytes: tuple[float, ...]
    parameters: tuple[int, ...]
    memory_terms: tuple[MemoryReport, ...] | None = None
    memory_caps: tuple[float, ...] | None = None
    recompute: tuple[Recompute, ...] | None = None  # per stage; None: no stage recomputes
    peaks: tuple[int, ...] | None = None  # per stage: exact peak bytes under a known schedule (else the bound)
    reduce_times: tuple[float, ...] = ()

    @property
    def num_stages(self) -> int:
        """Number of stages."""
        return len(self.ranges)

    @property
    def stage_times(self) -> tuple[float, ...]:
        """F + B + W + link time (+ its share of the all-reduce) of each stage for one microbatch."""
        reduce = self.reduce_times or (0.0,) * len(self.ranges)
        return tuple(c.total + t + r for c, t, r in zip(self.stage_costs, self.comm_times, reduce))

    @property
    def bottleneck(self) -> float:
        """The slowest stage's time per microbatch: the steady-state period of the pipeline."""
        return max(self.stage_times)

    @property
    def memory(self) -> tuple[int, ...] | None:
        """Predicted peak bytes per stage: ``peaks`` when known, else the sum of the memory terms (None without)."""
        if self.peaks is not None:
            return self.peaks
        return None if self.memory_terms is None else tuple(m.total for m in self.memory_terms)

    @property
    def fits(self) -> bool:
        """Whether every stage's predicted peak is within its cap (True without caps)."""
        if self.memory_caps is None or self.memory is None:
            return True
        return all(m <= cap for m, cap in zip(self.memory, self.memory_caps))

    def describe(self) -> str:
        """The ranges as users write them: inclusive layer indices, e.g. ``"0-2,3-5"``."""
        return format_ranges(self.ranges)

    def to_dict(self) -> dict:
        """A JSON-ready description of the plan, one entry per stage."""
        stages = []
        for s, (start, stop) in enumerate(self.ranges):
            cost = self.stage_costs[s]
            entry = {"stage": s, "layers": [start, stop], "parameters": self.parameters[s],
                     "f": cost.f, "b": cost.b, "w": cost.w, "comm": self.comm_times[s],
                     "reduce": self.reduce_times[s] if self.reduce_times else 0.0, "time": self.stage_times[s],
                     "boundary_bytes_out": self.boundary_bytes[s] if s < len(self.boundary_bytes) else 0}
            if self.memory_terms is not None:
                entry["memory"] = {name.replace(" ", "_"): v for name, v in self.memory_terms[s].rows()}
                entry["memory"]["total"] = self.memory_terms[s].total
            if self.memory_caps is not None:
                entry["memory_cap"] = self.memory_caps[s]
            entry["recompute"] = str(self.recompute[s]) if self.recompute else "none"
            if self.peaks is not None:
                entry["peak_bytes"] = self.peaks[s]
            stages.append(entry)
        return {"method": None if self.method is None else self.method.value, "ranges": self.describe(),
                "bottleneck": self.bottleneck, "fits": self.fits, "stages": stages}


def format_ranges(ranges: Ranges) -> str:
    """``((0, 3), (3, 6))`` as ``"0-2,3-5"``: the one notation of layer ranges, in and out (a one-layer stage: ``"4-4"``)."""
    return ",".join(f"{a}-{b - 1}" for a, b in ranges)


def parse_ranges(text: str, num_layers: int) -> Ranges:
    """``"0-2,3-5"`` (inclusive layer indices; ``"4"`` is short for ``"4-4"``) as ``((0, 3), (3, 6))``.

    The ranges must be contiguous, in order, non-empty, and cover layers 0..num_layers-1; otherwise a
    ValueError says what is wrong.
    """
    ranges = []
    for part in str(text).split(","):
        bits = part.strip().split("-")
        try:
            if len(bits) not in (1, 2):
                raise ValueError
            first, last = int(bits[0]), int(bits[-1])
        except ValueError:
            raise ValueError(f"ranges: expected inclusive layer ranges like 0-2,3-5, got {part.strip()!r} "
                             f"in {text!r}") from None
        if last < first:
            raise ValueError(f"ranges: {part.strip()!r} ends before it starts")
        ranges.append((first, last + 1))
    expected = 0
    for start, stop in ranges:
        if start != expected:
            raise ValueError(f"ranges: {text!r} must be contiguous from layer 0: expected a range starting at "
                             f"layer {expected}, got {start}")
        expected = stop
    if expected != num_layers:
        raise ValueError(f"ranges: {text!r} covers layers 0..{expected - 1}, but the model has layers "
                         f"0..{num_layers - 1}")
    return tuple(ranges)
