"""A pipeline stage: a contiguous range of layers on one device, with per-microbatch saved state; no communication."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from partition.recompute import NO_RECOMPUTE, Recompute
from partition.spec import MLPSpec
from runtime.engine import direct as direct_engine
from runtime.ops.equations import loss_forward
from runtime.ops.finite import FiniteCheck
from runtime.ops.functions import l2_term, loss
from runtime.ops.gemm import Gemm, gemm_problem
from runtime.ops.model import forward_layers, loss_target, loss_term
from runtime.ops.wgrad import WeightGradStore


class Engine(Enum):
    """How a stage drives the hand-derived backward: through autograd's engine, or by calling it directly."""

    AUTOGRAD = "autograd"
    DIRECT = "direct"


@dataclass
class _Saved:
    """What one microbatch keeps between its F, B and W on this stage.

    ``inp``: the leaf whose gradient B returns (autograd engine; the recomputed head's input while recomputing);
    ``out``: the tail's output (or L) whose graph B runs; ``direct``: the tail's saved tensors (direct engine).
    With recomputation, ``kept`` is the stage input (and ``target`` the last stage's, when every layer is
    recomputed) until B, which puts the rebuilt head in ``head`` (its output, or its saved tensors).
    """

    inp: torch.Tensor | None
    out: torch.Tensor | None
    store: WeightGradStore
    direct: direct_engine.DirectSaved | None = None
    b_done: bool = False
    kept: torch.Tensor | None = None
    target: torch.Tensor | None = None
    head: torch.Tensor | direct_engine.DirectSaved | None = None
    mid: torch.Tensor | None = None
    denom: float = 1.0


class Stage:
    """Layers [start, stop) of ``spec`` on ``device``; F, B and W per microbatch, the l2 share once per step.

    ``forward`` keeps what the chapter's backward needs (each layer's input, each activation's output);
    ``backward_input`` runs the input-gradient half and leaves the weight-gradient half in a store;
    ``backward_weight`` runs that half and frees the microbatch. The last stage computes the loss L.
    With ``recompute``, the first k layers (the head) keep only the stage input from F to B; B first runs
    their forward again (``recompute``) with the same equations, then the backward of the whole stage.
    """

    def __init__(
        self,
        spec: MLPSpec,
        index: int,
        start: int,
        stop: int,
        params: Sequence[tuple[torch.nn.Parameter, torch.nn.Parameter | None]],
        device: torch.device | str,
        engine: Engine = Engine.AUTOGRAD,
        recompute: Recompute = NO_RECOMPUTE,
        gemm: Gemm = Gemm.TORCH,
    ) -> None:
        if not 0 <= start < stop <= spec.num_layers or len(params) != stop - start:
            raise ValueError(f"partition: stage {index} layers [{start}, {stop}) do not fit {spec.num_layers} layers")
        self.spec = spec
        self.index = index
        self.start = start
        self.stop = stop
        self.device = torch.device(device)
        self.params = list(params)
        self.engine = engine
        self.gemm = gemm
        problem = gemm_problem(gemm, [self.device], self.params[0][0].dtype, engine is Engine.DIRECT)
        if problem is not None:
            raise ValueError(problem)
        self.recompute_choice = recompute
        self.recomputed = recompute.count(stop - start)
        self.is_first = start == 0
        self.is_last = stop == spec.num_layers
        self._saved: dict[int, _Saved] = {}
        self.correct = torch.zeros((), dtype=torch.int64, device=self.device)
        self.finite = torch.ones((), dtype=torch.bool, device=self.device)
        self._all_finite = FiniteCheck()

    def parameters(self) -> list[torch.nn.Parameter]:
        """This stage's weights and biases, in layer order."""
        return [p for pair in self.params for p in pair if p is not None]

    @property
    def in_flight(self) -> int:
        """Microbatches whose saved tensors this stage still holds."""
        return len(self._saved)

    @property
    def input_width(self) -> int:
        """Features of the activation this stage receives."""
        return self.spec.widths[self.start]

    @property
    def output_width(self) -> int:
        """Features of the activation this stage sends on."""
        return self.spec.widths[self.stop]

    def forward(self, mb: int, x: torch.Tensor, y: torch.Tensor | None = None, denom: float = 1.0) -> torch.Tensor:
        """F: run the layers on ``x``; the last stage returns L(mb) (divided by ``denom``), others the activation."""
        if mb in self._saved:
            raise RuntimeError(f"stage {self.index}: microbatch {mb} already has a forward pending")
        if self.is_last and y is None:
            raise ValueError(f"stage {self.index}: the last stage needs targets")
        k, saved = self.recomputed, _Saved(None, None, WeightGradStore(), denom=denom)
        if k:  # the head: no graph, nothing saved but its input
            saved.kept = x
            with torch.no_grad():
                x = self._head_forward(x)
        if k == len(self.params):
            out = x
            if self.is_last:
                self._count_correct(out, y)
                saved.target = loss_target(self.spec, out, y)
                with torch.no_grad():
                    out = loss_forward(self.spec.loss, out, saved.target, denom)
        elif self.engine is Engine.DIRECT:
            out, saved.direct = direct_engine.forward(self.spec, self.params[k:], x, self.start + k, self.gemm)
            if self.is_last:
                self._count_correct(out, y)
                out = direct_engine.loss(self.spec, saved.direct, out, loss_target(self.spec, out, y), denom)
        else:
            if k or not self.is_first:
                saved.inp = x.detach().requires_grad_(True)
                x = saved.inp
            out = forward_layers(self.spec, self.params[k:], x, self.start + k, saved.store)
            if self.is_last:
                self._count_correct(out, y)
                out = loss_term(self.spec, out, y, denom)
            saved.out = out
        with torch.no_grad():
            self.finite &= self._all_finite(out)
        self._saved[mb] = saved
        return out.detach()

    def _head_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The recomputed layers' forward, saving nothing (called without a graph)."""
        if self.engine is Engine.DIRECT:
            return direct_engine.forward(self.spec, self.params[: self.recomputed], x, self.start, self.gemm)[0]
        return forward_layers(self.spec, self.params[: self.recomputed], x, self.start)

    @torch.no_grad()
    def _count_correct(self, o: torch.Tensor, y: torch.Tensor) -> None:
        self.correct += (o.argmax(1) == (y if y.dim() == 1 else y.argmax(1))).sum()

    def recompute(self, mb: int) -> None:
        """The first part of a recomputing stage's B: the head's forward again, from the kept input, saving as usual."""
        saved = self._saved[mb]
        head = self.params[: self.recomputed]
        whole_last = self.is_last and self.recomputed == len(self.params)
        if self.engine is Engine.DIRECT:
            o, saved.head = direct_engine.forward(self.spec, head, saved.kept, self.start, self.gemm)
            if whole_last:
                direct_engine.loss(self.spec, saved.head, o, saved.target, saved.denom)
            return
        with torch.enable_grad():
            saved.mid = saved.kept.detach().requires_grad_(not self.is_first)
            saved.head = forward_layers(self.spec, head, saved.mid, self.start, saved.store)
            if whole_last:
                saved.head = loss(saved.head, saved.target, saved.denom, self.spec.loss)

    def backward_input(self, mb: int, grad: torch.Tensor | None = None, with_weights: bool = False) -> torch.Tensor | None:
        """B: dJ/d(input) for microbatch ``mb`` given dJ/d(output) (None on the last stage: dJ/dL = 1).

        ``with_weights`` makes it the fused BW: each layer's weight gradient is computed as the backward
        passes it (then :meth:`backward_weight` only frees the microbatch).
        """
        saved = self._saved.get(mb)
        if saved is None or saved.b_done:
            raise RuntimeError(f"stage {self.index}: backward for microbatch {mb} without a pending forward")
        if not self.is_last and grad is None:
            raise ValueError(f"stage {self.index}: backward of microbatch {mb} needs the output gradient")
        saved.store.immediate = with_weights
        saved.b_done = True
        k = self.recomputed
        if k:
            self.recompute(mb)
            saved.kept = saved.target = None
        if k < len(self.params):  # the tail, as without recomputation
            grad = self._tail_backward(saved, grad, need_input_grad=k > 0 or not self.is_first)
        if k:
            grad = self._head_backward(saved, grad)
        return None if self.is_first else grad

    def _tail_backward(self, saved: _Saved, grad: torch.Tensor | None, need_input_grad: bool) -> torch.Tensor | None:
        k = self.recomputed
        if saved.direct is not None:
            grad_in = direct_engine.backward(self.spec, self.params[k:], saved.direct, grad, self.start + k,
                                             saved.store, need_input_grad, self.gemm)
            saved.direct = None
            return grad_in
        saved.out.backward(grad)
        saved.out = None
        grad_in = None if saved.inp is None else saved.inp.grad
        saved.inp = None
        return grad_in

    def _head_backward(self, saved: _Saved, grad: torch.Tensor | None) -> torch.Tensor | None:
        if self.engine is Engine.DIRECT:
            grad_in = direct_engine.backward(self.spec, self.params[: self.recomputed], saved.head, grad, self.start,
                                             saved.store, not self.is_first, self.gemm)
            saved.head = None
            return grad_in
        saved.head.backward(grad)
        saved.head = None
        grad_in, saved.mid = saved.mid.grad, None
        return grad_in

    def backward_weight(self, mb: int) -> None:
        """W: accumulate dJ/dW and dJ/db of microbatch ``mb`` and free what it saved."""
        self.backward_weight_fused([mb])

    def backward_weight_fused(self, mbs: Sequence[int]) -> None:
        """W for several microbatches at once: one GEMM per layer over their concatenated rows."""
        stores = []
        for mb in mbs:
            saved = self._saved.pop(mb, None)
            if saved is None or not saved.b_done:
                raise RuntimeError(f"stage {self.index}: weight gradient of microbatch {mb} before its input gradient")
            stores.append(saved.store)
        WeightGradStore.flush_fused(stores)

    def add_regularizer(self) -> torch.Tensor:
        """Add ds/dW = lambda W for this stage's weights to their gradients; returns this stage's share of s."""
        if self.spec.l2 == 0.0:
            return torch.zeros((), dtype=self.params[0][0].dtype, device=self.device)
        s = l2_term(self.spec.l2, [w for w, _ in self.params])
        s.backward()
        return s.detach()

    def zero_grad(self) -> None:
        """Forget gradients and per-step counters (start of an optimizer step)."""
        for p in self.parameters():
            p.grad = None
        self.correct.zero_()
        self.finite.fill_(True)
        self._saved.clear()
