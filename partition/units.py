"""Sizes and counts as people write them: ``parse_bytes("2GiB")``, ``format_bytes(1536) == "1.5 KiB"``, ``count(1, "device")``."""

from __future__ import annotations

import re
from types import MappingProxyType

UNITS = MappingProxyType({"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40})
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB")


def parse_bytes(text: str) -> int:
    """``"2GiB"``, ``"512 MiB"``, ``"1.5GB"`` or ``"1000"`` as a number of bytes; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS:
        raise ValueError(f"memory size: expected a number with an optional unit like 2GiB, 512MiB, 1.5GB, got {text!r}")
    return int(float(match.group(1)) * UNITS[unit])


def binary_unit(nbytes: float) -> tuple[str, float]:
    """The binary unit that writes ``nbytes`` with at most four digits before the point, and its size in bytes."""
    for power, unit in enumerate(_BINARY):
        if abs(nbytes) < 1024.0 ** (power + 1) or unit == _BINARY[-1]:
            return unit, 1024.0**power
    raise AssertionError("unreachable")


def format_bytes(nbytes: float) -> str:
    """Bytes in binary units, three significant digits and never an exponent: ``"1.5 GiB"``, ``"1010 KiB"``."""
    unit, scale = binary_unit(float(nbytes))
    value = float(nbytes) / scale
    if unit == "B" or abs(value) >= 100:
        return f"{value:.0f} {unit}"
    text = f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text.rstrip('0').rstrip('.')} {unit}"


def count(n: int, noun: str) -> str:
    """``n`` things with the noun's plural where English wants one: "1 device", "4 devices", "2 processes"."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun}{'es' if noun.endswith(('s', 'sh', 'ch', 'x')) else 's'}"
