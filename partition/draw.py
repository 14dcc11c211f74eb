"""A matplotlib picture of a Graph in the DOT picture's rows (needs matplotlib, no Graphviz or other system program).

Rows are those of ``partition.dot``: one per layer, x below the first, L, s, J above the last, read bottom to
top; gradient nodes sit on a half row above the forward nodes of their layer. Each box shows the node's name and
shape; solid arrows carry values forward, dashed red ones gradients back (the reads of forward values are left out).
"""

from __future__ import annotations

from pathlib import Path

from partition.dot import drawing_row, to_dot
from partition.graph import Graph, Node, NodeKind

_FILL = {NodeKind.INPUT: "#ffffff", NodeKind.PARAMETER: "#9fd4ff", NodeKind.VARIABLE: "#ffffff",
         NodeKind.OPERATOR: "#fff7cc", NodeKind.OBJECTIVE: "#e8e8e8", NodeKind.GRADIENT: "#fdecea"}
_GRADIENT = "#c0392b"


def layout(graph: Graph) -> dict[str, tuple[float, float]]:
    """(x, y) of every node: y from the node's row (gradients half a row higher), x its place in that row."""
    places: dict[float, list[Node]] = {}
    for node in graph.nodes:
        y = 2.0 * drawing_row(node) + (1.0 if node.kind is NodeKind.GRADIENT else 0.0)
        places.setdefault(y, []).append(node)
    return {node.name: (float(i), y) for y, row in places.items() for i, node in enumerate(row)}


def _text(node: Node) -> str:
    shape = " × ".join(str(d) for d in node.shape)
    return node.label + (f"\n{shape}" if shape else "")


def write_graph_png(graph: Graph, path: str | Path, title: str | None = None) -> Path:
    """Draw ``graph`` into ``path`` (PNG or any format matplotlib writes, by suffix); ImportError without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("a picture without Graphviz needs matplotlib: pip install 'pipegraph[plot]'") from exc
    pos = layout(graph)
    width = max(x for x, _ in pos.values()) + 1
    height = max(y for _, y in pos.values()) - min(y for _, y in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(max(6.0, 1.5 * width), max(3.0, 0.75 * height)))
    for src, dst in graph.edges:
        grad = graph.node(dst).kind is NodeKind.GRADIENT
        if grad and graph.node(src).kind is not NodeKind.GRADIENT:
            continue  # a forward value read by a gradient: left out, as in the DOT picture by default
        ax.annotate("", xy=pos[dst], xytext=pos[src], zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": _GRADIENT if grad else "#555555", "shrinkA": 14,
                                "shrinkB": 14, "linestyle": "--" if grad else "-", "lw": 1.0})
    for node in graph.nodes:
        x, y = pos[node.name]
        grad = node.kind is NodeKind.GRADIENT
        box = "circle,pad=0.3" if node.kind is NodeKind.OPERATOR else "round,pad=0.35"
        ax.text(x, y, _text(node), ha="center", va="center", fontsize=9, zorder=2, color=_GRADIENT if grad else "black",
                bbox={"boxstyle": box, "facecolor": _FILL[node.kind], "edgecolor": _GRADIENT if grad else "#333333",
                      "linestyle": "--" if grad else "-"})
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(min(y for _, y in pos.values()) - 0.8, max(y for _, y in pos.values()) + 0.8)
    ax.axis("off")
    spec = graph.spec
    default = (f"MLP {'-'.join(map(str, spec.widths))}, {spec.activation.value}, bias {spec.bias_name}, lambda = "
               f"{spec.l2:g} ({graph.mode.value})\nsolid: values forward, dashed: gradients back")
    ax.set_title(title or default, fontsize=10)
    out = Path(path)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_pictures(graph: Graph, dot: str | None, png: str | None) -> list[str]:
    """Write ``graph`` as DOT to ``dot`` and as a matplotlib picture to ``png`` (either may be None); the paths written."""
    written = []
    if dot:
        Path(dot).parent.mkdir(parents=True, exist_ok=True)
        Path(dot).write_text(to_dot(graph), encoding="utf-8")
        written.append(dot)
    if png:
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        written.append(str(write_graph_png(graph, png)))
    return written
