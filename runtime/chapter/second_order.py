"""Exercise 4, second derivatives: the graph of the gradient's own backward, Hessian-vector products, the full Hessian.

The gradient is computed with ``create_graph=True`` through the hand-derived Functions (their backward passes are
built from differentiable operations), so it has a graph of its own; differentiating it again (double backward)
gives a Hessian-vector product H v, and the full Hessian is one H v per parameter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from partition.spec import MLPSpec
from partition.units import format_bytes
from runtime.chapter.common import ChapterConfig, minibatch, model
from runtime.chapter.saved import graph_nodes, saved_while
from runtime.chapter.values import flat_params, reference_objective
from runtime.ops.model import PipeModel

TYPICAL = MLPSpec((784, 256, 10))  # the size of a first MNIST model, to scale the answer


def _seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def ordered_params(net: PipeModel) -> list[torch.Tensor]:
    """The parameters in layer order, W(1), b(1) (where present), W(2), ... (as ``flat_params``)."""
    return [p for pair in net.layer_params() for p in pair if p is not None]


def hvp(net: PipeModel, x: torch.Tensor, y: torch.Tensor, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v by double backward through the hand-derived Functions: grad of (dJ/dtheta . v)."""
    params = ordered_params(net)
    grads = torch.autograd.grad(net.objective(x, y), params, create_graph=True)
    return list(torch.autograd.grad(grads, params, grad_outputs=v))


def hessian(net: PipeModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The full P x P Hessian: one double backward per parameter (row k is H e_k), the gradient's graph built once."""
    params = ordered_params(net)
    grads = torch.autograd.grad(net.objective(x, y), params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    rows = []
    for k in range(flat.numel()):
        row = torch.autograd.grad(flat[k], params, retain_graph=True)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    return torch.stack(rows)


def reference_hvp(cfg: ChapterConfig, v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v with torch.func (forward-over-reverse) on the objective written in torch.nn.functional."""
    x, y = minibatch(cfg)
    params = tuple(p.detach() for p in flat_params(cfg))
    grad = torch.func.grad(lambda *ps: reference_objective(cfg.spec, ps, x, y), argnums=tuple(range(len(params))))
    return list(torch.func.jvp(grad, params, tuple(v))[1])


def graph_sizes(net: PipeModel, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Nodes, saved tensors and saved bytes of the first-order graph (J) and of the gradient's graph (dJ/dtheta)."""
    params = ordered_params(net)
    first, j = saved_while(lambda: net.objective(x, y), exclude=params)
    second, grads = saved_while(lambda: torch.autograd.grad(j, params, create_graph=True), exclude=params)
    w1 = grads[0]
    return {"first_order": {"nodes": graph_nodes([j]), "saved_tensors": first.tensors, "saved_bytes": first.nbytes},
            "second_order": {"nodes": graph_nodes(grads), "saved_tensors": first.tensors + second.tensors,
                             "saved_bytes": first.nbytes + second.nbytes},
            "dJ/dW(1)_graph_nodes": graph_nodes([w1])}


def exercise_second_order(cfg: ChapterConfig, repeats: int = 20) -> dict:
    """Graph sizes, the HVP checked against torch.func, and the measured cost of a gradient, an HVP and the Hessian."""
    net = model(cfg)
    x, y = minibatch(cfg)
    params = ordered_params(net)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    v = [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) for p in params]
    got, ref = hvp(net, x, y, v), reference_hvp(cfg, v)
    h = hessian(net, x, y)
    hv = h @ torch.cat([t.reshape(-1) for t in v])
    p_count = h.shape[0]
    t_grad = _seconds(lambda: torch.autograd.grad(net.objective(x, y), params), repeats)
    t_hvp = _seconds(lambda: hvp(net, x, y, v), repeats)
    t_hess = _seconds(lambda: hessian(net, x, y), max(1, repeats // 5))
    size = h.element_size()
    return {"exercise": cfg.exercise.value, "widths": list(cfg.spec.widths), "batch": cfg.batch, "dtype": cfg.dtype,
            "parameters": p_count, "graphs": graph_sizes(net, x, y),
            "hvp_max_abs_difference_vs_torch_func": max(float((a - b).abs().max()) for a, b in zip(got, ref)),
            "hessian_times_v_minus_hvp": float((hv - torch.cat([t.reshape(-1) for t in got])).abs().max()),
            "hessian_asymmetry": float((h - h.t()).abs().max()),
            "seconds": {"gradient": t_grad, "hvp": t_hvp, "hessian": t_hess},
            "hvp_over_gradient": t_hvp / t_grad, "hessian_over_gradient": t_hess / t_grad,
            "hessian_bytes": p_count * p_count * size, "gradient_bytes": p_count * size,
            "typical": {"widths": list(TYPICAL.widths), "parameters": TYPICAL.num_parameters(),
                        "hessian_bytes": TYPICAL.num_parameters() ** 2 * size}}


def second_order_text(r: dict) -> str:
    """Sizes, checks, costs, and the answer to "is this a good idea?" in those numbers."""
    g1, g2, s = r["graphs"]["first_order"], r["graphs"]["second_order"], r["seconds"]
    t = r["typical"]
    return "\n".join([
        f"exercise 4: second derivatives of MLP {'-'.join(map(str, r['widths']))} ({r['parameters']} parameters), "
        f"minibatch {r['batch']}, {r['dtype']}",
        f"{'graph':<34}{'nodes':>7}{'saved tensors':>15}{'saved bytes':>13}",
        f"{'J (forward, for one gradient)':<34}{g1['nodes']:>7}{g1['saved_tensors']:>15}{format_bytes(g1['saved_bytes']):>13}",
        f"{'dJ/dtheta with create_graph':<34}{g2['nodes']:>7}{g2['saved_tensors']:>15}{format_bytes(g2['saved_bytes']):>13}",
        f"(the graph of dJ/dW(1) alone has {r['graphs']['dJ/dW(1)_graph_nodes']} nodes: it holds the forward graph "
        "and the backward of every layer above)",
        f"checks, max |difference|: H v against torch.func's {r['hvp_max_abs_difference_vs_torch_func']:.1e}; the full "
        f"Hessian times v against H v {r['hessian_times_v_minus_hvp']:.1e}; H against H^T {r['hessian_asymmetry']:.1e}",
        f"measured: one gradient {s['gradient'] * 1e3:.3f} ms, one H v {s['hvp'] * 1e3:.3f} ms "
        f"({r['hvp_over_gradient']:.1f}x), the full Hessian {s['hessian'] * 1e3:.2f} ms ({r['hessian_over_gradient']:.0f}x)",
        "",
        f"Is this a good idea? A Hessian-vector product, yes: it costs {r['hvp_over_gradient']:.1f} gradients here and "
        f"keeps {g2['saved_bytes'] / g1['saved_bytes']:.1f}x the bytes the first-order graph saves. The full Hessian, "
        "no: it takes one H v per parameter "
        f"({r['parameters']} here, {r['hessian_over_gradient']:.0f} gradients' time) and P^2 numbers "
        f"({format_bytes(r['hessian_bytes'])} here against {format_bytes(r['gradient_bytes'])} for the gradient); a "
        f"{'-'.join(map(str, t['widths']))} MLP has P = {t['parameters']:,}, so its Hessian would take "
        f"{format_bytes(t['hessian_bytes'])}.",
    ])
