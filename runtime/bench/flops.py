"""Model FLOPs of a training step, GPU dense peaks, and the achieved FLOP/s and MFU that benchmarks report."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

TERA = 1e12


class MatmulPrecision(Enum):
    """Which tensor-core path a dtype's GEMMs take, hence which peak applies."""

    HALF = "bf16/fp16 tensor cores"
    TF32 = "tf32 tensor cores"
    FP32 = "fp32 (no tensor cores)"


@dataclass(frozen=True)
class GpuPeak:
    """Dense peak FLOP/s of one GPU model (vendor data sheets; without 2:4 sparsity)."""

    match: str  # substring of torch.cuda.get_device_name
    label: str
    half: float
    tf32: float
    fp32: float

    def for_precision(self, precision: MatmulPrecision) -> float:
        """The peak for ``precision``."""
        return {MatmulPrecision.HALF: self.half, MatmulPrecision.TF32: self.tf32, MatmulPrecision.FP32: self.fp32}[precision]


# Most specific names first; NVIDIA H100/H200 and A100 data sheets, dense figures.
GPU_PEAKS = (
    GpuPeak("H100 PCIe", "H100 PCIe", 756 * TERA, 378 * TERA, 51 * TERA),
    GpuPeak("H100", "H100 SXM", 989 * TERA, 494 * TERA, 67 * TERA),
    GpuPeak("H200", "H200", 989 * TERA, 494 * TERA, 67 * TERA),
    GpuPeak("A100", "A100", 312 * TERA, 156 * TERA, 19.5 * TERA),
)


def matmul_precision(dtype: torch.dtype) -> MatmulPrecision:
    """The GEMM path of ``dtype`` under the current ``torch.set_float32_matmul_precision`` setting."""
    if dtype in (torch.bfloat16, torch.float16):
        return MatmulPrecision.HALF
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return MatmulPrecision.TF32
    return MatmulPrecision.FP32


@dataclass(frozen=True)
class Peak:
    """The peak a benchmark divides by, and what it assumed."""

    flops: float
    assumed: str


def device_peak(device: torch.device, dtype: torch.dtype) -> Peak | None:
    """The dense peak of ``device`` for ``dtype`` (None on the CPU, on float64 and on unknown GPUs)."""
    if device.type != "cuda" or dtype == torch.float64:
        return None
    name = torch.cuda.get_device_name(device)
    precision = matmul_precision(dtype)
    for peak in GPU_PEAKS:
        if peak.match in name:
            value = peak.for_precision(precision)
            return Peak(value, f"{peak.label} {precision.value} dense peak {value / TERA:g} TFLOP/s ({name})")
    return None


def throughput(flops: float, seconds: float | None, peak: Peak | None) -> dict:
    """Achieved FLOP/s and (on a known GPU) MFU for ``flops`` done in ``seconds``."""
    if not seconds:
        return {"flops_per_second": None, "mfu": None}
    rate = flops / seconds
    return {"flops_per_second": rate, "mfu": rate / peak.flops if peak is not None else None}


def describe_rate(figures: dict) -> str:
    """``512.3 TFLOP/s (51.8% MFU)`` or ``142.0 GFLOP/s`` for a table cell."""
    rate = figures.get("flops_per_second")
    if rate is None:
        return "-"
    text = f"{rate / TERA:.1f} TFLOP/s" if rate >= TERA else f"{rate / 1e9:.1f} GFLOP/s"
    if figures.get("mfu") is not None:
        text += f" ({figures['mfu']:.1%} MFU)"
    return text
