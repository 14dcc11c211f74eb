"""Exercise 2, a bias per layer: the chosen model's forward and backward equations, its graph, and the numbers checked."""

from __future__ import annotations

import torch

from partition.draw import write_pictures
from partition.graph import NodeKind, backward_graph, forward_graph, full_graph, with_batch
from runtime.chapter.common import ChapterConfig, minibatch
from runtime.chapter.values import flat_params, node_values, reference_objective


def equations(cfg: ChapterConfig) -> tuple[list[str], list[str]]:
    """(forward, backward) equations of the model, in the order they are computed, from the graph's formulas."""
    fwd, bwd = forward_graph(cfg.spec), backward_graph(cfg.spec)
    forward = [fwd.node(n).formula for n in fwd.topological_order()
               if fwd.node(n).kind in (NodeKind.VARIABLE, NodeKind.OBJECTIVE)]
    backward = [bwd.node(n).formula for n in bwd.topological_order()]
    return list(dict.fromkeys(forward)), backward


def exercise_bias(cfg: ChapterConfig) -> dict:
    """Equations, graph pictures, and two live checks: the gradients of the hand-derived Functions against plain
    autograd, and dJ/db(l) against the sum over the minibatch rows of dJ/dz(l)."""
    spec = cfg.spec
    values, grads = node_values(cfg)
    params = flat_params(cfg)
    x, y = minibatch(cfg)
    ref = torch.autograd.grad(reference_objective(spec, params, x, y), params)
    names = [f"{kind}({layer + 1})" for layer in range(spec.num_layers)
             for kind in ("W", "b") if kind == "W" or spec.layer_has_bias(layer)]
    vs_autograd = {f"dJ/d{n}": float((grads[f"dJ/d{n}"] - r).abs().max()) for n, r in zip(names, ref)}
    row_sums = {}
    for layer in sorted(spec.bias):
        k = layer + 1
        g = grads["dJ/do" if k == spec.num_layers else f"dJ/dz({k})"]
        row_sums[f"dJ/db({k})"] = float((grads[f"dJ/db({k})"] - g.sum(0)).abs().max())
    forward, backward = equations(cfg)
    graph = with_batch(full_graph(spec), cfg.batch)
    return {"exercise": cfg.exercise.value, "widths": list(spec.widths), "bias": spec.bias_name,
            "biased_layers": sorted(spec.bias), "forward": forward, "backward": backward,
            "max_abs_difference_vs_autograd": vs_autograd, "max_abs_bias_grad_minus_row_sum": row_sums,
            "dtype": cfg.dtype, "batch": cfg.batch, "pictures": write_pictures(graph, cfg.dot, cfg.png)}


def bias_text(report: dict) -> str:
    """The equations, then the checks."""
    lines = [f"exercise 2: MLP {'-'.join(map(str, report['widths']))} with bias {report['bias']} "
             f"(0-based layers with a b: {report['biased_layers'] or 'none'})", "", "forward:"]
    lines += [f"  {e}" for e in report["forward"]] + ["", "backward (rows are the n examples of the minibatch):"]
    lines += [f"  {e}" for e in report["backward"]]
    lines += ["", f"checks on a minibatch of {report['batch']} ({report['dtype']}):"]
    lines += [f"  {name}: hand-derived vs plain autograd, max |difference| {d:.2e}"
              for name, d in report["max_abs_difference_vs_autograd"].items()]
    lines += [f"  {name} - (sum over rows of dJ/dz): max |difference| {d:.2e}"
              for name, d in report["max_abs_bias_grad_minus_row_sum"].items()]
    lines += [f"wrote {p}" for p in report["pictures"]]
    return "\n".join(lines)
