"""Per-stage compute costs (F, B, W seconds) and the link model shared by partitioner and simulator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np


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
    """Time to move ``n`` bytes between two devices: latency + n / bandwidth (bytes per second).

    ``rendezvous``: a transfer starts only once the receiver has posted its receive, as gloo's and NCCL's
    point-to-point do (measured here: a 4 MiB gloo message sent 5 ms before its receive still takes its full
    2.9 ms after the receive). The runtime posts each rank's receives one ahead (the next when it takes one), so a
    message travels while its receiver computes unless it left before the receiver took the message before it
    (``partition.schedule.replay``).
    """

    latency: float = 0.0
    bandwidth: float = math.inf
    rendezvous: bool = False

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

    @classmethod
    def fit(cls, sizes: Sequence[float], seconds: Sequence[float]) -> LinkModel:
        """The least-squares line seconds = latency + size / bandwidth through one-way transfer times.

        ``sizes`` (bytes) need at least two distinct values; a fitted slope <= 0 (time does not grow with size)
        gives an infinite bandwidth, a negative intercept a zero latency.
        """
        n, t = np.asarray(sizes, dtype=np.float64), np.asarray(seconds, dtype=np.float64)
        if n.shape != t.shape or n.ndim != 1 or len(np.unique(n)) < 2 or not np.all(np.isfinite(t)):
            raise ValueError(f"LinkModel.fit: expected finite times for at least two distinct sizes, got {list(n)}")
        slope, intercept = np.polyfit(n, t, 1)
        return cls(max(float(intercept), 0.0), 1.0 / float(slope) if slope > 0 else math.inf)

    def describe(self) -> str:
        """E.g. '12.0 us + bytes / 1.25 GB/s'."""
        bw = "free" if math.isinf(self.bandwidth) else f"{self.bandwidth / 1e9:.3g} GB/s"
        return f"{self.latency * 1e6:.3g} us + bytes / {bw}" + (", from the receive on" if self.rendezvous else "")


class LinkPreset(Enum):
    """Named links for predictions on devices one does not have: nominal figures, not measurements.

    nvlink: GPU to GPU within one node (3 us, 300 GB/s); pcie: GPU to GPU through PCIe 4.0 x16 (10 us, 25 GB/s);
    ethernet: between nodes on 10 GbE (50 us, 1.25 GB/s). They are free-flying links (transfers overlap the
    receiver's compute), the best case for a device one has not measured; a measured link says how it behaves.
    """

    NVLINK = "nvlink"
    PCIE = "pcie"
    ETHERNET = "ethernet"

    @property
    def link(self) -> LinkModel:
        """The preset's latency and bandwidth."""
        return {LinkPreset.NVLINK: LinkModel(3e-6, 300e9), LinkPreset.PCIE: LinkModel(10e-6, 25e9),
                LinkPreset.ETHERNET: LinkModel(50e-6, 1.25e9)}[self]


def range_costs(layers: Sequence[StageCost], ranges: Sequence[tuple[int, int]]) -> list[StageCost]:
    """Per-stage F/B/W seconds: the layer costs summed over each stage's layer range ``[a, b)``."""
    return [StageCost.summed(layers[a:b]) for a, b in ranges]
