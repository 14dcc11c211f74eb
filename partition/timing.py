"""Per-stage compute costs (F, B, W seconds) and the link model shared by partitioner and simulator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StageCost:
    """Seconds one microbatch spends in a stage's forward (F), input-gradient (B) and weight-gradient (W)."""

    f: float
    b: float
    w: float

    def __post_init__(self) -> None:
        for name in ("f", "b", "w"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"StageCost.{name}: expected a finite number >= 0, got {value!r}")

    @property
    def total(self) -> float:
        """F + B + W: the time one microbatch costs this stage in a step."""
        return self.f + self.b + self.w

    @staticmethod
    def summed(costs: Sequence[StageCost]) -> StageCost:
        """The cost of running ``costs`` one after another (e.g. a stage's layers): F, B and W each summed."""
        return StageCost(sum(c.f for c in costs), sum(c.b for c in costs), sum(c.w for c in costs))

    def scaled(self, factor: float) -> StageCost:
        """This cost multiplied by ``factor`` (e.g. a device that is ``factor`` times slower)."""
        return StageCost(self.f * factor, self.b * factor, self.w * factor)


@dataclass(frozen=True)
class LinkModel:
    """Time to move ``n`` bytes between two devices: latency + n / bandwidth (bytes per second)."""

    latency: float = 0.0
    bandwidth: float = math.inf

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"LinkModel.latency: expected a finite number >= 0 seconds, got {self.latency!r}")
        if not self.bandwidth > 0:
            raise ValueError(f"LinkModel.bandwidth: expected bytes/second > 0, got {self.bandwidth!r}")

    def time(self, nbytes: float) -> float:
        """Seconds to transfer ``nbytes`` (0 bytes cost nothing: no message is sent)."""
        if nbytes <= 0:
            return 0.0
        return self.latency + nbytes / self.bandwidth

    @property
    def is_free(self) -> bool:
        """True when transfers take no time at all."""
        return self.latency == 0.0 and math.isinf(self.bandwidth)


def range_costs(layers: Sequence[StageCost], ranges: Sequence[tuple[int, int]]) -> list[StageCost]:
    """Per-stage F/B/W seconds: the layer costs summed over each stage's layer range ``[a, b)``."""
    return [StageCost.summed(layers[a:b]) for a, b in ranges]
