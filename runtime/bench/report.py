"""Benchmark output: the machine it ran on, dtypes by name, and the figures as table cells."""

from __future__ import annotations

import datetime
import os
import platform
from types import MappingProxyType

import torch

from runtime.stats import Spread

# float64 is there for exactness checks (the equal-math bound is 1e-9), not for speed figures.
BENCH_DTYPES = MappingProxyType({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                                 "float64": torch.float64})


def parse_dtypes(text: str) -> list[torch.dtype]:
    """``"bfloat16,float32"`` -> torch dtypes; ValueError names the flag."""
    out = []
    for name in (t.strip() for t in text.split(",") if t.strip()):
        if name not in BENCH_DTYPES:
            raise ValueError(f"dtypes: unknown {name!r}; choose from {', '.join(BENCH_DTYPES)}")
        out.append(BENCH_DTYPES[name])
    if not out:
        raise ValueError("dtypes: give at least one, e.g. float32,bfloat16")
    return out


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")


def machine(device: torch.device) -> dict:
    """Where and when a benchmark ran."""
    info = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # other processes' share
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def ms(spread: Spread | dict | None) -> str:
    """``43.40 ms [43.1-43.9]``: median and interquartile range of step seconds."""
    if spread is None:
        return "-"
    d = spread.to_json() if isinstance(spread, Spread) else spread
    return f"{d['median'] * 1e3:.2f} ms [{d['p25'] * 1e3:.2f}-{d['p75'] * 1e3:.2f}]"


def ratio(spread: Spread | dict | None) -> str:
    """``1.12x [1.10-1.14]``: median and interquartile range of paired ratios."""
    if spread is None:
        return "-"
    d = spread.to_json() if isinstance(spread, Spread) else spread
    return f"{d['median']:.3f}x [{d['p25']:.3f}-{d['p75']:.3f}]"


def parse_dtype(name: str) -> torch.dtype:
    """One benchmark dtype by name; ValueError names the flag."""
    if name not in BENCH_DTYPES:
        raise ValueError(f"dtype: unknown {name!r}; choose from {', '.join(BENCH_DTYPES)}")
    return BENCH_DTYPES[name]

