"""Which GEMM kernel runs a linear layer's forward and input gradient: torch's matmul, or oneDNN's on the CPU.

On the CPU torch's float32 matmul goes to MKL, which re-packs the weight for every call; at a pipeline's
microbatch shapes (64 rows of width 1024) that costs 10-15% of the GEMM on this project's 2-core machine.
oneDNN's linear kernel (the one ``torch.compile`` uses for CPU linears, ``torch.ops.mkldnn._linear_pointwise``)
ran the same products 10-20% faster at widths from 1024, and 2-9x slower at widths up to 256, where its fixed
cost per call (about 15 us) dominates (BENCHMARKS.md section 3). It computes z = x W^T + b and dJ/dx = g W
(as a linear layer with weight W^T) in float32 on the CPU only; it has no autograd formula, so only the direct
engine, which builds no graph, may use it. The weight gradient g^T x stays on torch's matmul: it already runs
at the full rate when the deferred W fuses the microbatches.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

import torch


class Gemm(Enum):
    """The kernel of a layer's F and B products (the W product always uses torch's matmul)."""

    TORCH = "torch"  # torch's matmul/addmm (MKL on the CPU, cuBLAS on CUDA), in any dtype
    ONEDNN = "onednn"  # oneDNN's linear kernel: float32 on the CPU, direct engine only


def gemm_problem(gemm: Gemm, devices: Iterable[str | torch.device], dtype: torch.dtype, direct: bool) -> str | None:
    """Why ``gemm`` cannot run here (one line), or None when it can."""
    if gemm is Gemm.TORCH:
        return None
    if not direct:
        return "gemm: onednn needs the direct engine (its kernel has no autograd formula)"
    if dtype != torch.float32:
        return f"gemm: onednn computes in float32 only, not {str(dtype).removeprefix('torch.')}"
    if any(str(d).strip().split(":")[0] != "cpu" for d in devices):
        return "gemm: onednn runs on the CPU only"
    if not torch.backends.mkldnn.is_available():
        return "gemm: onednn is not built into this torch"
    return None


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T (+ b) by oneDNN (x a float32 CPU matrix, W of shape (out, in))."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_grad_input(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """g W by oneDNN: a linear layer whose weight is W^T (a view, no copy)."""
    return torch.ops.mkldnn._linear_pointwise(g, weight.t(), None, "none", [], "")
