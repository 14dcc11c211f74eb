"""The chapter's computational graph of an MLPSpec: forward nodes, backward gradients and their formulas.

Names follow the chapter with 1-based layer numbers: x, W(1), b(1), z(1), h(1), ..., W(N), o, y,
L, s, J. Operators are nodes of their own (circles in the chapter's figure), named after what
they produce: op:z(1) (×), op:h(1) (φ), op:o (×), op:L (l), op:s (‖·‖²), op:J (+).
The backward graph holds dJ/dL, dJ/ds, dJ/do and dJ/dW(l), dJ/db(l), dJ/dh(l), dJ/dz(l), each
with the chapter's formula. Conventions:

* formulas use the chapter's column-vector notation (z = W x); the runtime stores a minibatch
  as n rows (z = x W^T), where dJ/dW(l) = dJ/dz(l)^T h(l-1) is the same sum over the rows;
* L is a mean over the n rows (0.5 ||o - y||^2 for squared error, -log softmax(o)[y] for
  cross-entropy), so dJ/do carries the 1/n and every later gradient is a plain sum over rows;
* s is always present, even when lambda == 0 (then s = 0 and the lambda W(l) terms vanish).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property

from partition.spec import Activation, Loss, MLPSpec

__all__ = [
    "Activation", "Graph", "GraphMode", "Loss", "MLPSpec", "Node", "NodeKind",
    "backward_graph", "build_graph", "forward_graph", "full_graph", "with_batch",
]


class NodeKind(Enum):
    """What a node of the graph stands for."""

    INPUT = "input"  # the example x and its label y
    PARAMETER = "parameter"  # W(l), b(l)
    VARIABLE = "variable"  # z(l), h(l), o
    OPERATOR = "operator"  # x, phi, l, ||.||^2, +
    OBJECTIVE = "objective"  # L, s, J
    GRADIENT = "gradient"  # dJ/d(...)


class GraphMode(Enum):
    """Which part of the chapter's graph to build."""

    FORWARD = "forward"
    BACKWARD = "backward"
    BOTH = "both"


@dataclass(frozen=True)
class Node:
    """One node; ``layer`` is the chapter's 1-based layer number, ``home`` the 0-based layer
    whose stage computes the node (``num_layers`` for L, s, J and their gradients, which sit
    after the last layer and are staged with it). ``shape`` is that of one example; ``per_example``
    nodes (x, y, z, h, o and their gradients) get one row per example in a minibatch (``with_batch``)."""

    name: str
    kind: NodeKind
    label: str
    formula: str
    layer: int | None
    home: int
    shape: tuple[int, ...] = ()
    per_example: bool = False


@dataclass(frozen=True)
class Graph:
    """A DAG of named nodes for one spec; edges run in the direction values flow."""

    spec: MLPSpec
    mode: GraphMode
    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"graph: duplicate node names in {names}")
        known = set(names)
        for src, dst in self.edges:
            if src not in known or dst not in known:
                raise ValueError(f"graph: edge {src} -> {dst} names an unknown node")
            if src == dst:
                raise ValueError(f"graph: self-loop on {src}")
        if len(set(self.edges)) != len(self.edges):
            raise ValueError("graph: duplicate edges")

    @property
    def num_layers(self) -> int:
        """Number of linear layers of the spec."""
        return self.spec.num_layers

    @property
    def names(self) -> tuple[str, ...]:
        """Node names in declaration order."""
        return tuple(n.name for n in self.nodes)

    @cached_property
    def _index(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def node(self, name: str) -> Node:
        """The node called ``name``; KeyError when absent."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no node {name!r} in this graph") from None

    def predecessors(self, name: str) -> tuple[str, ...]:
        """Nodes with an edge into ``name``, in edge order."""
        self.node(name)
        return tuple(src for src, dst in self.edges if dst == name)

    def successors(self, name: str) -> tuple[str, ...]:
        """Nodes ``name`` has an edge into, in edge order."""
        self.node(name)
        return tuple(dst for src, dst in self.edges if src == name)

    def topological_order(self) -> tuple[str, ...]:
        """Every node after all its predecessors; ties go to declaration order. ValueError on a cycle."""
        position = {name: i for i, name in enumerate(self.names)}
        indegree = dict.fromkeys(self.names, 0)
        for _, dst in self.edges:
            indegree[dst] += 1
        ready = [position[n] for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            name = self.names[heapq.heappop(ready)]
            order.append(name)
            for nxt in self.successors(name):
                indegree[nxt] -= 1
                if indegree[nxt] == 0:
                    heapq.heappush(ready, position[nxt])
        if len(order) != len(self.nodes):
            stuck = sorted(set(self.names) - set(order))
            raise ValueError(f"graph: cycle through {stuck}")
        return tuple(order)


def _phi_prime(activation: Activation) -> str:
    if activation is Activation.RELU:
        return "1[z > 0]"
    if activation is Activation.TANH:
        return "1 - tanh(z)^2"
    return "sigmoid(z) (1 - sigmoid(z))"


def _affine(spec: MLPSpec, k: int, source: str) -> str:
    return f"W({k}) {source}" + (f" + b({k})" if spec.layer_has_bias(k - 1) else "")


def _loss_formula(spec: MLPSpec) -> str:
    if spec.loss is Loss.CROSS_ENTROPY:
        return "L = l(o, y) = mean over rows of -log softmax(o)[y]"
    return "L = l(o, y) = mean over rows of 0.5 ||o - y||^2"


def _reg_formula(spec: MLPSpec) -> str:
    n = spec.num_layers
    if n <= 3:
        terms = " + ".join(f"||W({k})||_F^2" for k in range(1, n + 1))
    else:
        terms = f"||W(1)||_F^2 + ... + ||W({n})||_F^2"
    return f"s = lambda/2 ({terms}), lambda = {spec.l2:g}"


def _pre(spec: MLPSpec, k: int) -> str:
    """Name of layer k's pre-activation: z(k), or o for the output layer."""
    return "o" if k == spec.num_layers else f"z({k})"


def _source(k: int) -> str:
    """Name of layer k's input: x, or h(k-1)."""
    return "x" if k == 1 else f"h({k - 1})"


def _forward_parts(spec: MLPSpec) -> tuple[list[Node], list[tuple[str, str]]]:
    n, kind = spec.num_layers, NodeKind
    nodes = [Node("x", kind.INPUT, "x", "x: one example, a row of the minibatch", None, 0, (spec.widths[0],), True)]
    edges: list[tuple[str, str]] = []
    for k in range(1, n + 1):
        home, out, w, src = k - 1, _pre(spec, k), f"W({k})", _source(k)
        rows, cols = spec.layer_shape(k - 1)
        formula = f"{out} = {_affine(spec, k, src)}"
        nodes.append(Node(w, kind.PARAMETER, w, f"W({k}) in R^({rows} x {cols})", k, home, (rows, cols)))
        nodes.append(Node(f"op:{out}", kind.OPERATOR, "×+" if spec.layer_has_bias(k - 1) else "×", formula, k, home))
        edges += [(src, f"op:{out}"), (w, f"op:{out}")]
        if spec.layer_has_bias(k - 1):
            nodes.append(Node(f"b({k})", kind.PARAMETER, f"b({k})", f"b({k}) in R^{rows}", k, home, (rows,)))
            edges.append((f"b({k})", f"op:{out}"))
        nodes.append(Node(out, kind.VARIABLE, out, formula, k, home, (rows,), True))
        edges.append((f"op:{out}", out))
        if spec.has_activation(k - 1):
            h, phi = f"h({k})", spec.activation.value
            formula = f"{h} = phi(z({k})), phi = {phi}"
            nodes.append(Node(f"op:{h}", kind.OPERATOR, "φ", formula, k, home))
            nodes.append(Node(h, kind.VARIABLE, h, formula, k, home, (rows,), True))
            edges += [(out, f"op:{h}"), (f"op:{h}", h)]
    label_shape = () if spec.loss is Loss.CROSS_ENTROPY else (spec.widths[-1],)
    label_text = "class index" if spec.loss is Loss.CROSS_ENTROPY else "target vector"
    nodes += [
        Node("y", kind.INPUT, "y", f"y: the example's label ({label_text})", None, n - 1, label_shape, True),
        Node("op:L", kind.OPERATOR, "l", _loss_formula(spec), None, n - 1),
        Node("L", kind.OBJECTIVE, "L", _loss_formula(spec), None, n),
        Node("op:s", kind.OPERATOR, "‖·‖²", _reg_formula(spec), None, n),
        Node("s", kind.OBJECTIVE, "s", _reg_formula(spec), None, n),
        Node("op:J", kind.OPERATOR, "+", "J = L + s", None, n),
        Node("J", kind.OBJECTIVE, "J", "J = L + s", None, n),
    ]
    edges += [("o", "op:L"), ("y", "op:L"), ("op:L", "L")]
    edges += [(f"W({k})", "op:s") for k in range(1, n + 1)] + [("op:s", "s")]
    edges += [("L", "op:J"), ("s", "op:J"), ("op:J", "J")]
    return nodes, edges


def _dloss_formula(spec: MLPSpec) -> str:
    if spec.loss is Loss.CROSS_ENTROPY:
        return "dJ/do = dL/do = (softmax(o) - onehot(y)) / n, n = rows of the minibatch"
    return "dJ/do = dL/do = (o - y) / n, n = rows of the minibatch"


def _backward_parts(
    spec: MLPSpec,
) -> tuple[list[Node], list[tuple[str, str]], list[tuple[str, str]]]:
    """Gradient nodes, gradient-to-gradient edges, and forward-value-to-gradient (read) edges."""
    n, grad = spec.num_layers, NodeKind.GRADIENT
    out_shape = (spec.widths[-1],)
    nodes = [
        Node("dJ/dL", grad, "dJ/dL", "dJ/dL = 1", None, n),
        Node("dJ/ds", grad, "dJ/ds", "dJ/ds = 1", None, n),
        Node("dJ/do", grad, "dJ/do", _dloss_formula(spec), n, n - 1, out_shape, True),
    ]
    edges = [("dJ/dL", "dJ/do")]
    reads = [("J", "dJ/dL"), ("J", "dJ/ds"), ("o", "dJ/do"), ("y", "dJ/do")]
    lam = f"lambda = {spec.l2:g}"
    for k in range(n, 0, -1):
        home, g, src = k - 1, "dJ/d" + _pre(spec, k), _source(k)
        rows, cols = spec.layer_shape(k - 1)
        dw = f"dJ/dW({k})"
        nodes.append(Node(dw, grad, dw, f"{dw} = {g} {src}^T + lambda W({k}), {lam}", k, home, (rows, cols)))
        edges += [(g, dw), ("dJ/ds", dw)]
        reads += [(src, dw), (f"W({k})", dw)]
        if spec.layer_has_bias(k - 1):
            db = f"dJ/db({k})"
            nodes.append(Node(db, grad, db, f"{db} = sum over rows of {g}", k, home, (rows,)))
            edges.append((g, db))
        if k > 1:
            dh, dz, z = f"dJ/dh({k - 1})", f"dJ/dz({k - 1})", f"z({k - 1})"
            phi_prime = _phi_prime(spec.activation)
            nodes.append(Node(dh, grad, dh, f"{dh} = W({k})^T {g}", k - 1, home, (cols,), True))
            nodes.append(
                Node(dz, grad, dz, f"{dz} = {dh} ⊙ phi'({z}), phi'(z) = {phi_prime}", k - 1, k - 2, (cols,), True)
            )
            edges += [(g, dh), (dh, dz)]
            reads += [(f"W({k})", dh), (z, dz)]
    return nodes, edges, reads


def forward_graph(spec: MLPSpec) -> Graph:
    """The chapter's forward computational graph: variables, parameters and operator nodes."""
    nodes, edges = _forward_parts(spec)
    return Graph(spec, GraphMode.FORWARD, tuple(nodes), tuple(edges))


def backward_graph(spec: MLPSpec) -> Graph:
    """The chapter's backward graph: gradient nodes only, edges in the order gradients flow."""
    nodes, edges, _ = _backward_parts(spec)
    return Graph(spec, GraphMode.BACKWARD, tuple(nodes), tuple(edges))


def full_graph(spec: MLPSpec) -> Graph:
    """Forward and backward together, plus edges from each forward value a gradient reads."""
    f_nodes, f_edges = _forward_parts(spec)
    b_nodes, b_edges, reads = _backward_parts(spec)
    return Graph(spec, GraphMode.BOTH, tuple(f_nodes + b_nodes), tuple(f_edges + b_edges + reads))


def build_graph(spec: MLPSpec, mode: GraphMode = GraphMode.FORWARD) -> Graph:
    """The forward, backward or combined graph of ``spec``."""
    builders = {GraphMode.FORWARD: forward_graph, GraphMode.BACKWARD: backward_graph, GraphMode.BOTH: full_graph}
    return builders[GraphMode(mode)](spec)


def with_batch(graph: Graph, n: int) -> Graph:
    """The same graph with the shapes of a minibatch of ``n`` examples, stored as rows as the runtime does.

    Per-example nodes gain a leading n (x is n x d, z(l) and dJ/dz(l) n x h, y n or n x q); parameters and their
    gradients keep their shapes whatever n is (dJ/dW(1) is h x d: the sum over the rows); L, s, J stay scalars.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"batch: expected an integer >= 1, got {n!r}")
    nodes = tuple(replace(node, shape=(n, *node.shape)) if node.per_example else node for node in graph.nodes)
    return replace(graph, nodes=nodes)
