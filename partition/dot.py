"""Graphviz DOT text for a pipegraph Graph: the chapter's figure layout, pipeline stages as clusters.

Layout: every layer gets a row (``rank=same``) holding the nodes it computes; x sits below the
first row, and L, s, J (with dJ/dL, dJ/ds) get a row above the last. With the default
``Direction.UP`` (rankdir=BT) rows read left to right and climb, so the forward graph runs
rightward and upward from x at the bottom left to J at the top right, as in the chapter's figure.
A gradient edge that crosses rows is written reversed with ``dir=back``: drawn pointing the way
the gradient flows, laid out like the forward edge it mirrors, so the backward graph descends from
dJ/dL on the top row to dJ/dW(1) on the bottom one. Edges from a forward value to a gradient that
reads it (``show_reads``) are dotted and do not affect the ranks.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from partition.graph import Graph, Node, NodeKind
from partition.plan import format_ranges

__all__ = ["Direction", "check_stages", "drawing_row", "node_stages", "to_dot"]


class Direction(Enum):
    """Graphviz rankdir: where each layer's row goes relative to the previous one."""

    UP = "BT"  # the chapter's figure: inputs bottom left, J top right
    DOWN = "TB"
    RIGHT = "LR"
    LEFT = "RL"


_STAGE_FILLS = ("#e8f1fb", "#e9f7ec", "#fdf3e1", "#f7e8f3", "#efeafb", "#e6f6f8", "#fbeaea", "#f1f1f1")
_STAGE_BORDERS = ("#4a7fc1", "#3e9a55", "#c98a1b", "#b0508f", "#7560b8", "#2f98a5", "#b84a4a", "#777777")
_GRADIENT_COLOUR = "#c0392b"


def check_stages(stages: Sequence[tuple[int, int]], num_layers: int) -> tuple[tuple[int, int], ...]:
    """Validate half-open 0-based layer ranges that tile ``range(num_layers)`` in order."""
    ranges = tuple((int(start), int(stop)) for start, stop in stages)
    if not ranges:
        raise ValueError("stages: need at least one stage")
    expected = 0
    for i, (start, stop) in enumerate(ranges):
        if start != expected:
            raise ValueError(f"stages: stage {i} starts at layer {start}, expected {expected} (no gaps or overlaps)")
        if stop <= start:
            raise ValueError(f"stages: stage {i} [{start}, {stop}) holds no layer")
        expected = stop
    if expected != num_layers:
        raise ValueError(f"stages: the last stage stops at layer {expected}, expected {num_layers} layers")
    return ranges


def node_stages(graph: Graph, stages: Sequence[tuple[int, int]]) -> dict[str, int]:
    """Stage index of every node: the stage owning the node's home layer (L, s, J: the last stage)."""
    ranges = check_stages(stages, graph.num_layers)
    owner = [i for i, (start, stop) in enumerate(ranges) for _ in range(start, stop)]
    return {n.name: owner[min(n.home, graph.num_layers - 1)] for n in graph.nodes}


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def _attrs(pairs: dict[str, str]) -> str:
    return "[" + ", ".join(f"{key}={_quote(value)}" for key, value in pairs.items()) + "]"


def _node_attrs(node: Node) -> dict[str, str]:
    shape_text = " × ".join(str(d) for d in node.shape)
    label = node.label + (f"\n{shape_text}" if shape_text else "")
    attrs = {"label": label, "tooltip": node.formula, "shape": "box", "style": "filled", "fillcolor": "white"}
    if node.kind is NodeKind.OPERATOR:
        attrs.update(shape="circle", margin="0.02", fillcolor="#fff7cc", fontsize="12")
    elif node.kind is NodeKind.PARAMETER:
        attrs.update(fillcolor="#9fd4ff")
    elif node.kind is NodeKind.OBJECTIVE and node.name == "J":
        attrs.update(peripheries="2")
    elif node.kind is NodeKind.GRADIENT:
        attrs.update(
            label=node.formula.replace(", ", "\n") + (f"\n{shape_text}" if shape_text else ""),
            style="filled,dashed",
            fillcolor="#fdecea",
            color=_GRADIENT_COLOUR,
            fontcolor=_GRADIENT_COLOUR,
        )
    return attrs


def _edge_line(graph: Graph, src: str, dst: str, show_reads: bool) -> str | None:
    src_grad = graph.node(src).kind is NodeKind.GRADIENT
    dst_grad = graph.node(dst).kind is NodeKind.GRADIENT
    if src_grad and dst_grad:
        attrs = {"style": "dashed", "color": _GRADIENT_COLOUR}
        if drawing_row(graph.node(src)) == drawing_row(graph.node(dst)):
            return f"  {_quote(src)} -> {_quote(dst)} {_attrs(attrs)};"
        attrs["dir"] = "back"
        return f"  {_quote(dst)} -> {_quote(src)} {_attrs(attrs)};"
    if dst_grad:
        if not show_reads:
            return None
        attrs = {"style": "dotted", "color": "#999999", "constraint": "false", "arrowhead": "empty"}
        return f"  {_quote(src)} -> {_quote(dst)} {_attrs(attrs)};"
    return f"  {_quote(src)} -> {_quote(dst)};"


def drawing_row(node: Node) -> int:
    """Drawing row: the home layer, except x, which sits below layer 0 as every layer's input does."""
    return -1 if node.name == "x" else node.home


def _rows(nodes: Sequence[Node], indent: str) -> list[str]:
    lines: list[str] = []
    for row in sorted({drawing_row(n) for n in nodes}):
        lines.append(f"{indent}subgraph row_{'in' if row < 0 else row} {{")
        lines.append(f"{indent}  rank=same;")
        lines += [f"{indent}  {_quote(n.name)} {_attrs(_node_attrs(n))};" for n in nodes if drawing_row(n) == row]
        lines.append(f"{indent}}}")
    return lines


def _default_title(graph: Graph) -> str:
    spec = graph.spec
    widths = "-".join(str(w) for w in spec.widths)
    bias = f"bias {spec.bias_name}"
    return (
        f"MLP {widths}, {spec.activation.value}, {bias}, {spec.loss.value}, "
        f"lambda = {spec.l2:g} ({graph.mode.value})"
    )


def to_dot(
    graph: Graph,
    *,
    direction: Direction = Direction.UP,
    stages: Sequence[tuple[int, int]] | None = None,
    title: str | None = None,
    show_reads: bool = False,
) -> str:
    """DOT text for ``graph``.

    ``stages`` are half-open 0-based layer ranges [start, stop), one per pipeline stage; each
    stage's nodes become ``subgraph cluster_stageK`` (see ``node_stages``). ``show_reads`` also
    draws the dotted edges from forward values to the gradients that read them (BOTH mode only).
    """
    layout = {
        "rankdir": Direction(direction).value,
        "newrank": "true",
        "mclimit": "0.1",  # fewer crossing passes: keeps flat edges left to right inside stage clusters
        "nodesep": "0.3",
        "ranksep": "0.35",
        "label": title or _default_title(graph),
        "labelloc": "t",
        "fontname": "Helvetica",
    }
    lines = [
        "digraph pipegraph {",
        f"  graph {_attrs(layout)};",
        f"  node {_attrs({'fontname': 'Helvetica', 'fontsize': '11', 'height': '0.3'})};",
        f"  edge {_attrs({'arrowsize': '0.7'})};",
    ]
    if stages is None:
        lines += _rows(graph.nodes, "  ")
    else:
        owner = node_stages(graph, stages)
        for i, (start, stop) in enumerate(check_stages(stages, graph.num_layers)):
            colour = i % len(_STAGE_FILLS)
            cluster = {
                "label": f"stage {i}: layers {format_ranges(((start, stop),))} = "
                         + ", ".join(f"W({k + 1})" for k in range(start, stop)),
                "style": "filled,rounded",
                "fillcolor": _STAGE_FILLS[colour],
                "color": _STAGE_BORDERS[colour],
            }
            lines.append(f"  subgraph cluster_stage{i} {{")
            lines += [f"    {key}={_quote(value)};" for key, value in cluster.items()]
            lines += _rows([n for n in graph.nodes if owner[n.name] == i], "    ")
            lines.append("  }")
    edge_lines = (_edge_line(graph, src, dst, show_reads) for src, dst in graph.edges)
    lines += [line for line in edge_lines if line is not None]
    lines.append("}")
    return "\n".join(lines) + "\n"
