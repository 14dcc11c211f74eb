"""The experiment scheduler's vocabulary: the setting, candidate kinds, recomputation policies, the lr rule, one candidate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from partition.cost import DType, Optimizer
from partition.memory import MemoryReport
from partition.plan import format_ranges
from partition.recompute import Recompute
from partition.schedule.actions import Schedule, ScheduleKind
from partition.schedule.generators import generate
from partition.spec import MLPSpec
from partition.timing import LinkModel


class CandidateKind(Enum):
    """How a candidate computes an optimizer step."""

    PIPELINE = "pipeline"  # B in m microbatches through K stages on K devices, or D replicas of K/D stages on B/D each
    SINGLE = "single"  # one device, one minibatch b per step (b = B is plain training)
    ACCUMULATION = "accumulation"  # one device, m microbatches of B/m accumulated into one step of B


class RecomputePolicy(Enum):
    """Which activation recomputation a pipeline candidate uses on its stages."""

    NONE = "none"  # every stage keeps what its backward needs
    FIT = "fit"  # ranges and per-stage recomputation chosen together to fit the cap (partial recomputation)
    ALL = "all"  # every stage keeps only its input and recomputes its forward in backward

    @classmethod
    def parse_list(cls, text: str) -> tuple[RecomputePolicy, ...]:
        """Comma-separated policies such as ``none,fit,all``."""
        try:
            found = tuple(dict.fromkeys(cls(part.strip().lower()) for part in text.split(",") if part.strip()))
        except ValueError:
            found = ()
        if not found:
            raise ValueError(f"recompute: expected names from {', '.join(k.value for k in cls)}, got {text!r}")
        return found


class LRRule(Enum):
    """How the learning rate given for the global batch B changes for a minibatch b (Goyal et al., 2017 for linear)."""

    LINEAR = "linear"  # lr * b / B
    SQRT = "sqrt"  # lr * sqrt(b / B)
    CONSTANT = "constant"  # lr unchanged

    def scale(self, lr: float, batch: int, reference: int) -> float:
        """The learning rate for minibatch ``batch`` when ``lr`` suits ``reference``."""
        ratio = batch / reference
        return {LRRule.LINEAR: lr * ratio, LRRule.SQRT: lr * math.sqrt(ratio), LRRule.CONSTANT: lr}[self]

    def describe(self) -> str:
        """The rule as a formula."""
        return {LRRule.LINEAR: "lr(b) = lr * b / B (linear scaling rule)", LRRule.SQRT: "lr(b) = lr * sqrt(b / B)",
                LRRule.CONSTANT: "lr(b) = lr (unchanged)"}[self]


@dataclass(frozen=True)
class Setting:
    """What the planner needs: the model, the global batch B, K devices, the cap and the candidate grid.

    ``link`` is what the partitioner charges for the all-reduce of a data-parallel candidate's gradients.
    """

    spec: MLPSpec
    batch: int
    devices: int
    memory_cap: float | None
    dtype: DType
    optimizer: Optimizer
    schedules: tuple[ScheduleKind, ...]
    microbatches: tuple[int, ...]
    virtual: int
    lr: float
    lr_rule: LRRule
    recompute: tuple[RecomputePolicy, ...] = (RecomputePolicy.NONE,)
    link: LinkModel = LinkModel()


@dataclass(frozen=True)
class Candidate:
    """One way to train: ``num_ranks`` devices running ``num_stages`` stages, ``microbatches`` per step of ``minibatch``.

    With ``replicas`` D > 1 the ``num_ranks`` devices hold D copies of a pipeline of ``num_ranks / D`` devices (PP x
    DP; one device each: data parallel), each copy taking B/D of the batch in ``microbatches`` microbatches, their
    gradients summed before the optimizer step. ``memory_terms[r]`` is the memory model's peak on device r (a PP x DP
    candidate: one replica's devices, repeated for each replica); ``recompute`` the choice of each stage (empty:
    none); ``ready`` the schedule itself when it was searched for (auto) rather than generated; ``reason`` is empty
    for a feasible candidate and otherwise says why it cannot run (over the cap, or the schedule does not apply to
    this model).
    """

    id: str
    label: str
    kind: CandidateKind
    schedule: ScheduleKind
    num_stages: int
    num_ranks: int
    microbatches: int
    minibatch: int
    lr: float
    virtual: int = 1
    ranges: tuple[tuple[int, int], ...] = ()
    memory_terms: tuple[MemoryReport, ...] = ()
    reason: str = ""
    recompute: tuple[Recompute, ...] = ()
    ready: Schedule | None = None
    replicas: int = 1

    @property
    def feasible(self) -> bool:
        """Whether the candidate fits the cap and applies to the model."""
        return not self.reason

    @property
    def planned(self) -> bool:
        """Whether it has a plan (layer ranges), so that its step time can be predicted."""
        return bool(self.ranges)

    @property
    def ranks_per_replica(self) -> int:
        """Devices of one pipeline (all of them with one replica)."""
        return self.num_ranks // self.replicas

    @property
    def local_microbatches(self) -> int:
        """Microbatches of the pipeline that runs every replica in one process: the replicas' microbatches in turn."""
        return self.microbatches * self.replicas

    def compute_schedule(self) -> Schedule:
        """One pipeline's compute schedule (each replica's): the searched one, or the generated one of its kind."""
        return self.ready or generate(self.schedule, self.ranks_per_replica, self.microbatches, self.virtual)

    def emulated_schedule(self) -> Schedule:
        """The schedule of the one pipeline that emulates every replica in one process (with D replicas: D x m
        microbatches of B/(D m) rows, the same arithmetic as D replicas summing their gradients)."""
        if self.replicas == 1:
            return self.compute_schedule()
        return generate(self.schedule, self.ranks_per_replica, self.local_microbatches, self.virtual)

    @property
    def microbatch_size(self) -> int:
        """Samples per microbatch."""
        return self.minibatch // self.local_microbatches

    @property
    def memory_per_device(self) -> tuple[int, ...]:
        """Predicted peak bytes per device."""
        return tuple(r.total for r in self.memory_terms)

    def to_dict(self) -> dict:
        """JSON-ready description (the prediction and measurement are added by the caller)."""
        return {
            "id": self.id, "label": self.label, "kind": self.kind.value, "schedule": self.schedule.value,
            "stages": self.num_stages, "devices": self.num_ranks, "replicas": self.replicas,
            "microbatches": self.microbatches,
            "microbatch_size": self.microbatch_size, "minibatch": self.minibatch, "lr": self.lr, "virtual": self.virtual,
            "ranges": format_ranges(self.ranges) if self.ranges else None, "feasible": self.feasible, "reason": self.reason,
            "recompute": [str(r) for r in self.recompute],
            "predicted_memory": [{**{name.replace(" ", "_"): v for name, v in r.rows()}, "total": r.total}
                                 for r in self.memory_terms],
        }
