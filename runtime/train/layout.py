"""Which layers and which device each stage gets: the partition plan, device strings, and their checks."""

from __future__ import annotations

import torch

from partition import units
from partition.spec import MLPSpec


def resolve_ranges(spec: MLPSpec, stages: int, method: str, microbatch: int) -> tuple[tuple[int, int], ...]:
    """Layer ranges per stage from explicit text ("0-1,2-3", inclusive) or a partitioner method name."""
    from partition import partitioner

    if stages > spec.num_layers:
        raise ValueError(f"stages: {stages} stages need at least {stages} layers; the model has {spec.num_layers}")
    if any(ch.isdigit() for ch in method):
        ranges = partitioner.parse_ranges(method, spec.num_layers)
        if len(ranges) != stages:
            raise ValueError(f"partition: {method!r} has {len(ranges)} stages but --stages is {stages}")
        return tuple(ranges)
    choices = [m.value for m in partitioner.Method]
    if method not in choices:
        raise ValueError(f"partition: unknown {method!r}; choose {', '.join(choices)} or ranges like 0-1,2-3")
    return tuple(partitioner.plan_ranges(spec, stages, method, microbatch))


def resolve_devices(device: str, devices: str | None, stages: int) -> tuple[str, ...]:
    """One device string per stage; ``cuda`` spreads stages over the visible GPUs (or stacks them on one)."""
    if devices:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        if len(names) == 1:
            names = names * stages
        if len(names) != stages:
            raise ValueError(f"devices: {len(names)} devices given for {stages} stages")
    elif device == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError("device: cuda requested but no CUDA GPU is visible")
        names = [f"cuda:{s}" for s in range(stages)] if count >= stages else ["cuda:0"] * stages
    else:
        names = [device] * stages
    for name in set(names):
        check_device(name)
    return tuple(names)


def check_device(name: str) -> None:
    """ValueError unless ``name`` is a device this machine has."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device: {name!r} is not a device name (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ValueError(f"device: {name} requested but no CUDA GPU is visible")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device: {name} does not exist; this machine has {units.count(count, 'GPU')}")
    elif dev.type != "cpu":
        raise ValueError(f"device: {name} is not supported; use cpu or cuda[:N]")
    elif dev.index not in (None, 0):
        raise ValueError(f"device: {name} does not exist; the CPU is one device: cpu (or cpu:0)")
