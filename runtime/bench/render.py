"""A saved result's table, regenerated from its JSON alone: what ``bench.py table FILE`` prints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType

from runtime.bench import contention, dist, functions, gemms, layouts, pipeline, sim
from runtime.calibrate.fidelity import fidelity_table

TABLES: MappingProxyType[str, Callable[[dict], str]] = MappingProxyType({
    "functions": functions.table_text, "pipeline": pipeline.table_text, "dist": dist.table_text,
    "simulator": sim.table_text, "gemms": gemms.table_text, "contention": contention.table_text,
    "fidelity": lambda result: "\n".join(fidelity_table(result["rows"])), "layouts": layouts.layout_table})


def table_text(result: dict) -> str:
    """The table of ``result``, exactly as the run printed it; ValueError for an unknown benchmark."""
    bench = result.get("benchmark")
    if bench not in TABLES:
        raise ValueError(f"table: unknown benchmark {bench!r} in the result; expected one of {', '.join(TABLES)}")
    return TABLES[bench](result)


def table_of_file(path: str | Path) -> str:
    """The table of the result saved at ``path``; ValueError (one line) when it cannot be read."""
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"table: cannot read {path} ({type(exc).__name__})") from None
    return table_text(result)
