"""Per-stage costs of a given model for the simulator: profiled here (or read from a saved profile), split by a plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from partition.spec import MLPSpec
from partition.timing import StageCost, range_costs
from runtime.train.layout import resolve_ranges
from runtime.train.profile import Profile, profile_layers


@dataclass(frozen=True)
class ModelCosts:
    """A model's stages for the simulator: layer ranges, F/B/W seconds and activation bytes per stage, and their source."""

    ranges: tuple[tuple[int, int], ...]
    costs: tuple[StageCost, ...]
    activation_bytes: tuple[float, ...]
    source: str


def model_costs(spec: MLPSpec, num_stages: int, microbatch: int, partition: str = "optimal", device: str = "cpu",
                dtype: str = "float32", profile: str | None = None, repeats: int = 10) -> ModelCosts:
    """Profile ``spec``'s layers at ``microbatch`` rows on ``device`` (the profiler's default, pipelined cache regime),
    or load them from ``profile`` (JSON from ``plan.py --save-profile``), and sum them over the stages of
    ``partition`` (a partitioner method or inclusive ranges such as 0-1,2-3)."""
    if profile:
        prof = Profile.load(profile)
        prof.check(spec, microbatch)
        source = f"profile {profile} ({prof.device_name or prof.device}, {prof.dtype})"
    else:
        prof = profile_layers(spec, microbatch, device, dtype, repeats=repeats)
        source = f"profiled now on {prof.device_name or prof.device} ({prof.dtype}, {microbatch} rows per microbatch)"
    ranges = resolve_ranges(spec, num_stages, partition, microbatch)
    size = torch.finfo(getattr(torch, prof.dtype)).bits // 8
    nbytes = tuple(float(microbatch * spec.widths[b] * size) for _, b in ranges)
    return ModelCosts(ranges, tuple(range_costs(prof.layers, ranges)), nbytes, source)
