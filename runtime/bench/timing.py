"""Benchmark timing: variants run in rotation after warm-up; medians, quartiles and paired ratios of the samples."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from runtime.stats import Spread


class Group(Enum):
    """What a contender is to the tables: ours, a baseline (plain torch, no pipeline), or a peer's schedule."""

    OURS = "ours"
    BASELINE = "baseline"
    PEER = "peer"


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Variant:
    """One contender: ``step()`` runs a full step (zero grads included) and returns its loss (a float, a 0-dim
    tensor read only after the timed region, or None); ``clear()`` runs after it, outside the timed region (a
    barrier under torchrun); ``grads()`` returns the gradients the last step left, by (layer, "w" or "b"),
    for the equal-math check (None: the contender cannot be checked)."""

    name: str
    step: Callable[[], object]
    clear: Callable[[], None] = _nothing
    group: Group = Group.OURS
    grads: Callable[[], dict[tuple[int, str], torch.Tensor]] | None = None

    @classmethod
    def failed(cls, name: str, group: Group, exc: BaseException) -> Variant:
        """A contender that could not be built: its step raises, so ``measure`` records the reason."""
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

        def step() -> None:
            raise RuntimeError(f"could not build: {reason}")

        return cls(name, step, _nothing, group)


@dataclass
class Measured:
    """A variant's step times (seconds) and the losses its steps returned."""

    name: str
    group: Group
    times: list[float] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # which rotation round each time was taken in
    losses: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def spread(self) -> Spread | None:
        """The spread of the step times (None when the variant failed)."""
        return Spread.of(self.times) if self.times else None


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
                   before: Callable[[], None] = _nothing) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones, the device synchronized around
    each; ``before`` runs ahead of every call, outside the timer (a barrier, so that every rank times at once)."""
    for _ in range(warmup):
        before()
        fn()
    samples = []
    for _ in range(repeats):
        before()
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def release_memory(device: torch.device) -> None:
    """Collect garbage (contenders hold reference cycles) and return cached GPU memory between benchmark parts."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(variants: Sequence[Variant], device: torch.device, warmup: int, repeats: int) -> dict[str, Measured]:
    """Time every variant ``repeats`` times after ``warmup`` steps, in rotation (A B C A B C ...).

    Rotation spreads slow drifts of the machine (clocks, other processes) over all variants alike, and makes
    sample i of two variants a pair taken moments apart, so paired ratios are steadier than ratios of medians.
    A variant that raises is recorded with its error and left out of later rounds.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup/repeats: expected >= 0 and >= 1, got {warmup} and {repeats}")
    out = {v.name: Measured(v.name, v.group) for v in variants}
    for round_index in range(warmup + repeats):
        for v in variants:
            rec = out[v.name]
            if rec.error is not None:
                continue
            try:
                synchronize(device)
                start = time.perf_counter()
                loss = v.step()
                synchronize(device)
                elapsed = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - any failure (e.g. torch.compile without a compiler) is reported
                rec.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
                v.clear()
                continue
            v.clear()
            if round_index >= warmup:
                rec.times.append(elapsed)
                rec.rounds.append(round_index)
                if loss is not None:
                    rec.losses.append(float(loss))  # after the timed region: no sync inside the step
    return out


def paired_ratio(numer: Measured, denom: Measured) -> Spread | None:
    """Spread of numer / denom step times, round by round, over the rounds both were measured in (None if none)."""
    theirs = dict(zip(denom.rounds, denom.times))
    pairs = [t / theirs[r] for r, t in zip(numer.rounds, numer.times) if theirs.get(r, 0) > 0]
    return Spread.of(pairs) if pairs else None


def speedup_json(other: Measured | None, ours: Measured) -> dict | None:
    """The paired ratio other/ours as JSON (above 1: ours is faster); None when either side failed."""
    if other is None or other.error or ours.error:
        return None
    s = paired_ratio(other, ours)
    return s.to_json() if s else None
