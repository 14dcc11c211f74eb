"""Equal math, both ways: each contender's loss and gradients against an independent float64 reference.

After the timed steps, every contender runs one more step and its gradients are reduced to a checksum per
parameter: the sum, the sum of squares and the sum of absolute values, in float64. The reference is plain
autograd on ``nn.Sequential`` over the whole batch in float64 from the same seeded weights. A contender
passes when, for every parameter, |sum - sum_ref| <= tol x sum|g_ref|, |sumsq - sumsq_ref| <= tol x sumsq_ref,
every reference parameter has a gradient, and |loss - loss_ref| <= tol x |loss_ref|; ``TOLERANCE`` states
tol per compute dtype. A gradient scaled by 0.5 moves the sum of squares by 75%: it fails at any tolerance here
(in bfloat16 a gradient off by less than about 10% would pass; in float32 one off by 1e-3).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from partition.spec import MLPSpec
from runtime.bench.contenders import Grads, full_batch_run, module_grads
from runtime.bench.models import Params, reference_loss, reference_sequential
from runtime.bench.timing import Variant

# bfloat16 keeps 8 significant bits: plain autograd in bfloat16 is itself 7.5% off the float64 sum of squares of
# a bias gradient at width 64 (and every contender with it), so its bound is loose; float16 keeps 11 bits.
# Plain autograd on the full batch in float32 is itself 1.2e-4 off the float64 sum of squares of a bias gradient
# at 8 x 1024, batch 1024 (the pipeline bench's default), so float32 gets 1e-3.
TOLERANCE = MappingProxyType({torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 0.2, torch.float16: 5e-2})
Checksums = dict[tuple[int, str], tuple[float, float, float]]


@dataclass(frozen=True)
class MathCheck:
    """One contender's verdict: ``ok``, the worst relative deviation found, and where (or why it failed)."""

    ok: bool
    worst: float
    detail: str

    def to_json(self) -> dict:
        """The verdict as a dict."""
        return {"ok": self.ok, "worst_relative_error": self.worst, "detail": self.detail}


def checksums(grads: Grads) -> Checksums:
    """(sum, sum of squares, sum of |g|) of every gradient, in float64 on the host (missing ones left out)."""
    out = {}
    for key, g in grads.items():
        if g is not None:
            g64 = g.detach().to(torch.float64)
            out[key] = (float(g64.sum()), float((g64 * g64).sum()), float(g64.abs().sum()))
    return out


def reference(spec: MLPSpec, params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[float, Checksums]:
    """Loss and gradient checksums of plain autograd, full batch, float64, on ``x``'s device."""
    seq = reference_sequential(spec, params, torch.float64, x.device)
    y64 = y.to(torch.float64) if y.is_floating_point() else y
    loss = full_batch_run(seq, reference_loss(spec), x.to(torch.float64), y64)()
    return float(loss), checksums(module_grads([(0, seq)])())


def compare(loss: float | None, got: Checksums, ref_loss: float, ref: Checksums, tol: float) -> MathCheck:
    """The rule of the module docstring applied to one contender's figures."""
    if loss is None:
        return MathCheck(False, float("inf"), "no loss")
    missing = sorted(set(ref) - set(got))
    if missing:
        return MathCheck(False, float("inf"), f"no gradient for layer {missing[0][0]} {missing[0][1]}")
    worst, where = abs(loss - ref_loss) / max(abs(ref_loss), 1e-300), "loss"
    for key, (s_ref, q_ref, l1_ref) in ref.items():
        s, q, _ = got[key]
        for err, what in ((abs(s - s_ref) / max(l1_ref, 1e-300), "sum"), (abs(q - q_ref) / max(q_ref, 1e-300), "sum of squares")):
            if err > worst:
                worst, where = err, f"layer {key[0]} {key[1]} {what}"
    ok = worst <= tol
    return MathCheck(ok, worst, f"worst {where}: {worst:.2e} (tolerance {tol:.0e})")


def check_step(variant: Variant, share: Callable[[Checksums], Checksums] = lambda c: c) -> tuple[float | None, Checksums]:
    """Run ``variant`` once more (untimed) and read its loss and gradient checksums right after the step.

    ``share`` completes the checksums of this process with the other ranks' (under torchrun each rank holds
    some layers); contenders that share parameters are checked one after another, each right after its step.
    """
    loss = variant.step()
    got = checksums(variant.grads()) if variant.grads is not None else {}
    variant.clear()
    return (None if loss is None else float(loss)), share(got)


def check_all(variants: Sequence[Variant], ref_loss: float, ref: Checksums, dtype: torch.dtype,
              share: Callable[[Checksums], Checksums] = lambda c: c,
              skip: Collection[str] = ()) -> Mapping[str, MathCheck]:
    """Every checkable contender's MathCheck (by name); those named in ``skip`` (e.g. failed to run) are left out."""
    tol = TOLERANCE.get(dtype, 1e-3)
    out = {}
    for v in variants:
        if v.grads is None or v.name in skip:
            continue
        try:
            loss, got = check_step(v, share=share)
        except Exception as exc:  # noqa: BLE001 - a contender that cannot even step fails the check, named
            out[v.name] = MathCheck(False, float("inf"), f"step raised {type(exc).__name__}")
            continue
        out[v.name] = compare(loss, got, ref_loss, ref, tol)
    return out
