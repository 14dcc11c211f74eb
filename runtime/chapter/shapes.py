"""Exercise 1, matrix inputs: the shape of every node and gradient for a minibatch of n, against autograd's shapes."""

from __future__ import annotations

from partition.draw import write_pictures
from partition.graph import NodeKind, full_graph, with_batch
from runtime.chapter.common import ChapterConfig, shape_text
from runtime.chapter.values import node_values


def exercise_shapes(cfg: ChapterConfig) -> dict:
    """Every non-operator node of the forward and backward graphs for n = ``cfg.batch`` rows: the graph's shape
    and the shape the Functions and autograd produced (dJ/dx added: the graph omits it, x being data)."""
    graph = with_batch(full_graph(cfg.spec), cfg.batch)
    values, grads = node_values(cfg)
    produced = {name: tuple(t.shape) for name, t in {**values, **grads}.items()}
    rows = []
    for node in graph.nodes:
        if node.kind is NodeKind.OPERATOR:
            continue
        got = produced.get(node.name)
        rows.append({"node": node.name, "gradient": node.kind is NodeKind.GRADIENT, "graph": list(node.shape),
                     "autograd": None if got is None else list(got), "match": got == node.shape})
    rows.append({"node": "dJ/dx", "gradient": True, "graph": list(graph.node("x").shape),
                 "autograd": list(produced["dJ/dx"]), "match": produced["dJ/dx"] == graph.node("x").shape})
    d, h = cfg.spec.widths[0], cfg.spec.widths[1]
    return {"exercise": cfg.exercise.value, "widths": list(cfg.spec.widths), "batch": cfg.batch, "rows": rows,
            "all_match": all(r["match"] for r in rows),
            "answer": (f"With a minibatch X of n = {cfg.batch} rows, every per-example node gains a leading n (X and "
                       f"dJ/dX are {cfg.batch} x {d}), while dJ/dW(1) stays {h} x {d} = the shape of W(1) whatever n "
                       "is: it is dJ/dZ(1)^T X, the sum over the rows of the per-example products."),
            "pictures": write_pictures(graph, cfg.dot, cfg.png)}


def shapes_text(report: dict) -> str:
    """The report as a table and the answer."""
    width = max(len(r["node"]) for r in report["rows"])
    lines = [f"exercise 1: shapes for a minibatch of n = {report['batch']}, MLP {'-'.join(map(str, report['widths']))}",
             f"{'node':<{width}}  {'graph':>12}  {'autograd':>12}  check"]
    for r in report["rows"]:
        got = "-" if r["autograd"] is None else shape_text(tuple(r["autograd"]))
        lines.append(f"{r['node']:<{width}}  {shape_text(tuple(r['graph'])):>12}  {got:>12}  {'ok' if r['match'] else 'DIFFERS'}")
    lines += ["", report["answer"], *(f"wrote {p}" for p in report["pictures"])]
    return "\n".join(lines)
