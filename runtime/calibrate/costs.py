"""The cost model of a training step: profiled layer times plus measured host overheads and link, each with its origin.

A step of a pipeline is predicted from these terms (see ``runtime.calibrate.forecast``):

* ``layers``: F, B and W seconds of every layer for one microbatch, from the profiler (cold caches on the CPU);
* ``action_overhead``: per stage, what an F, B or W action costs beyond its arithmetic (Python, the engine, the
  executor, the loss on the last stage), measured on a skeleton of the run (hidden widths 1, same shape);
* ``step_overhead``: per step, what the skeleton's step costs beyond its actions, its optimizer steps and its closing
  all-reduce (executor loop, posting messages, zeroing gradients, the regulariser, the closing checks in one process);
* ``optimizer``: the optimizer steps (and l2 term) as the skeleton's steps run them, plus what the real parameters
  add (timed with cold caches beyond the same on the skeleton's; under torchrun every rank at once, as at a step's
  end);
* ``loss_all_reduce``: the all-reduce that closes every step under torchrun (loss, correct count, every stage's
  finite flag), timed apart as the rank that reaches it last pays it (``runtime.calibrate.overhead.closing_seconds``);
* ``link``: latency + bytes / bandwidth of one transfer between ranks, fitted from ping-pongs on the transport the
  run uses;
* ``gradient_all_reduce``: with ``replicas`` D > 1 (PP x DP), each stage's ring all-reduce of its
  ``gradient_bytes`` over the D replicas on the link, ``partition.data_parallel.with_all_reduce``: it starts after
  the stage's last weight gradient, so only what the rest of the step does not hide is added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from partition.data_parallel import ring_all_reduce_time, with_all_reduce
from partition.schedule.actions import Schedule
from partition.schedule.simulate import SimResult
from partition.timing import LinkModel, StageCost, range_costs


class Origin(Enum):
    """Where a figure of the cost model comes from."""

    MEASURED = "measured"  # timed on this machine by this process (overheads, optimizer, link)
    PROFILED = "profiled"  # the profiler's per-layer compute times
    GIVEN = "given"  # supplied by the user (flags, a saved profile)
    DEFAULT = "default"  # nothing to measure here (e.g. no process group): a fixed value


@dataclass(frozen=True)
class Term:
    """One figure of the cost model: seconds, where it comes from, and a short note."""

    seconds: float
    origin: Origin
    note: str = ""

    def to_json(self) -> dict:
        """``{"seconds", "origin", "note"}``."""
        return {"seconds": self.seconds, "origin": self.origin.value, "note": self.note}


ZERO = Term(0.0, Origin.DEFAULT, "not modelled")


@dataclass(frozen=True)
class CostModel:
    """Everything a step's prediction is computed from (see the module docstring for each term)."""

    layers: tuple[StageCost, ...]
    layers_origin: Origin = Origin.PROFILED
    action_overhead: tuple[StageCost, ...] = ()  # per stage; empty: none
    overhead_origin: Origin = Origin.DEFAULT
    step_overhead: Term = ZERO
    optimizer: Term = ZERO
    loss_all_reduce: Term = ZERO
    link: LinkModel = LinkModel()
    link_origin: Origin = Origin.DEFAULT
    link_note: str = "free: no transfers modelled"
    replicas: int = 1  # D pipeline replicas whose gradients are summed every step
    gradient_bytes: tuple[float, ...] = ()  # per stage: the bytes of its gradients (all-reduced when D > 1)

    def compute_costs(self, ranges: Sequence[tuple[int, int]]) -> list[StageCost]:
        """Per stage: the profiled arithmetic of its layers."""
        return range_costs(self.layers, ranges)

    def stage_costs(self, ranges: Sequence[tuple[int, int]]) -> list[StageCost]:
        """Per stage: the arithmetic of its layers plus the host overhead of each of its actions."""
        over = self.action_overhead or (StageCost(0.0, 0.0, 0.0),) * len(ranges)
        if len(over) != len(ranges):
            raise ValueError(f"action_overhead: measured for {len(over)} stages, the plan has {len(ranges)}")
        return [StageCost(c.f + o.f, c.b + o.b, c.w + o.w) for c, o in zip(self.compute_costs(ranges), over)]

    def reduce_seconds(self, link: LinkModel | None = None) -> list[float]:
        """Per stage: its ring all-reduce over the replicas on ``link`` (default: the model's link), alone."""
        link = self.link if link is None else link
        return [ring_all_reduce_time(b, self.replicas, link) for b in self.gradient_bytes]

    def gradient_all_reduce(self, schedule: Schedule, sim: SimResult, concurrent: bool,
                            link: LinkModel | None = None) -> float:
        """Seconds the stages' all-reduces add to the step body ``sim`` of ``schedule`` (0 for one replica): with
        overlapping ranks what ``with_all_reduce`` leaves exposed, in one process all of them one after another."""
        if self.replicas == 1:
            return 0.0
        if not concurrent:
            return sum(self.reduce_seconds(link))
        return with_all_reduce(sim, schedule, self.gradient_bytes, self.replicas, self.link if link is None else link).exposed

    @property
    def per_step(self) -> float:
        """Seconds every step adds beyond its actions: step overhead + optimizer + loss all-reduce."""
        return self.step_overhead.seconds + self.optimizer.seconds + self.loss_all_reduce.seconds

    def to_json(self) -> dict:
        """Every term with its origin, JSON-ready."""
        bw = self.link.bandwidth
        return {
            "layers": {"origin": self.layers_origin.value, "seconds": [{"f": c.f, "b": c.b, "w": c.w} for c in self.layers]},
            "action_overhead": {"origin": self.overhead_origin.value,
                                "seconds": [{"f": c.f, "b": c.b, "w": c.w} for c in self.action_overhead]},
            "step_overhead": self.step_overhead.to_json(), "optimizer": self.optimizer.to_json(),
            "loss_all_reduce": self.loss_all_reduce.to_json(),
            "link": {"latency": self.link.latency, "bandwidth": None if bw == float("inf") else bw,
                     "rendezvous": self.link.rendezvous, "origin": self.link_origin.value, "note": self.link_note},
            "gradient_all_reduce": self._reduce_json(),
        }

    def _reduce_json(self) -> dict:
        """The gradient all-reduce: per stage its bytes and seconds alone on the link, and the link's origin."""
        if self.replicas == 1:
            return {"replicas": 1, "origin": Origin.DEFAULT.value, "note": "one replica: no gradient all-reduce"}
        return {"replicas": self.replicas, "bytes": list(self.gradient_bytes), "seconds": self.reduce_seconds(),
                "origin": self.link_origin.value,
                "note": f"per stage, a ring all-reduce over {self.replicas} replicas on the link: 2 (D - 1) x "
                        "link.time(bytes / D), after its last weight gradient (partition.data_parallel)"}
