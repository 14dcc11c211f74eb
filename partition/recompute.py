"""Activation recomputation per stage: which leading layers of a stage rebuild their activations in backward, and the cost.

A stage that recomputes its first k layers keeps, from F to B, only its input x (and the layers after the k-th
keep what they always keep); its B first runs the forward of those k layers again from x with the same
equations, then the backward of the whole stage. The extra compute is exactly one F of the k layers per
microbatch, spent inside B. ``none`` is k = 0, ``all`` is every layer of the stage, ``first:K`` is min(K, layers).
What it saves is the inputs of layers a+1 .. a+k-1 (layer a saves only x, kept anyway), and the stage's output h
(or o) when k is every layer; so on a stage of several layers ``first:1`` saves nothing and costs, during B, a second
copy of the first layer's output (``partition.memory.LayerMemory.microbatch``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from partition.timing import StageCost


class RecomputeKind(Enum):
    """Which layers of a stage are recomputed: none, all of them, or the first ``layers`` of them."""

    NONE = "none"
    ALL = "all"
    FIRST = "first"


@dataclass(frozen=True)
class Recompute:
    """One stage's recomputation choice; ``layers`` is K of ``first:K`` (0 for none and all)."""

    kind: RecomputeKind = RecomputeKind.NONE
    layers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.kind, RecomputeKind):
            raise ValueError(f"recompute: expected a RecomputeKind, got {self.kind!r}")
        if not isinstance(self.layers, int) or isinstance(self.layers, bool):
            raise ValueError(f"recompute: expected an integer layer count, got {self.layers!r}")
        if self.kind is RecomputeKind.FIRST and self.layers < 1:
            raise ValueError(f"recompute: first:K needs K >= 1, got {self.layers}")
        if self.kind is not RecomputeKind.FIRST and self.layers != 0:
            raise ValueError(f"recompute: {self.kind.value} takes no layer count, got {self.layers}")

    def count(self, num_layers: int) -> int:
        """How many leading layers of a stage of ``num_layers`` layers this choice recomputes."""
        if self.kind is RecomputeKind.ALL:
            return num_layers
        if self.kind is RecomputeKind.FIRST:
            return min(self.layers, num_layers)
        return 0

    def __str__(self) -> str:
        return f"first:{self.layers}" if self.kind is RecomputeKind.FIRST else self.kind.value

    @classmethod
    def parse(cls, text: str) -> Recompute:
        """``none``, ``all`` or ``first:K`` (K >= 1) into a choice."""
        word = text.strip().lower()
        if word.startswith("first:"):
            try:
                return cls(RecomputeKind.FIRST, int(word.removeprefix("first:")))
            except ValueError:
                raise ValueError(f"recompute: expected first:K with an integer K >= 1, got {text!r}") from None
        for kind in (RecomputeKind.NONE, RecomputeKind.ALL):
            if word == kind.value:
                return cls(kind)
        raise ValueError(f"recompute: expected none, all, first:K or a comma-separated list of them, got {text!r}")


NO_RECOMPUTE = Recompute()
RECOMPUTE_ALL = Recompute(RecomputeKind.ALL)


def parse_recompute(text: str) -> tuple[Recompute, ...]:
    """``none``, ``all``, ``first:K`` (every stage) or a per-stage comma-separated list such as ``all,none,first:1``."""
    return tuple(Recompute.parse(part) for part in text.split(","))


def per_stage(choices: Sequence[Recompute], num_stages: int) -> tuple[Recompute, ...]:
    """One choice per stage: none when empty, one choice given to every stage, or exactly ``num_stages`` choices."""
    choices = tuple(choices)
    if not choices:
        return (NO_RECOMPUTE,) * num_stages
    if len(choices) == 1:
        return choices * num_stages
    if len(choices) != num_stages:
        raise ValueError(f"recompute: expected 1 choice or {num_stages} (one per stage), got {len(choices)}")
    return choices


def recompute_forward(layers: Sequence[StageCost], start: int, stop: int, choice: Recompute) -> float:
    """Extra seconds per microbatch of a stage owning layers [start, stop): one F of each recomputed layer."""
    return sum(c.f for c in layers[start : start + choice.count(stop - start)])


def recompute_stage_cost(layers: Sequence[StageCost], start: int, stop: int, choice: Recompute) -> StageCost:
    """The stage's F/B/W seconds with ``choice``: B grows by the recomputed F (it runs inside B), F and W do not."""
    base = StageCost.summed(layers[start:stop])
    return StageCost(base.f, base.b + recompute_forward(layers, start, stop, choice), base.w)
