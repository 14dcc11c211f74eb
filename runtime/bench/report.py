"""Benchmark output: the machine it ran on, plain-text tables, and the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType

import torch

from runtime.bench.timing import Spread

BENCH_DTYPES = MappingProxyType({"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16})


def parse_dtypes(text: str) -> list[torch.dtype]:
    """``"bfloat16,float32"`` -> torch dtypes (float64 is not benchmarked); ValueError names the flag."""
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


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table with a rule under the header."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def write_json(path: str | Path | None, data: dict) -> None:
    """Write ``data`` to ``path`` (parents created); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
