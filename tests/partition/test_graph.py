"""Tests for the chapter's computational graph (partition.graph), its DOT writer and scripts/graph.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from itertools import accumulate
from pathlib import Path

import pytest

from partition import graph as graph_module
from partition import spec as spec_module
from partition.dot import Direction, check_stages, node_stages, to_dot
from partition.graph import Graph, GraphMode, MLPSpec, Node, NodeKind, backward_graph, build_graph, forward_graph, full_graph

ROOT = Path(__file__).resolve().parents[2]
CHAPTER = MLPSpec((4, 3, 2), bias=False, l2=0.01)  # the chapter's example: x in R^d, h hidden units, q outputs
DEEP = MLPSpec((8, 6, 5, 4, 3), l2=0.1)

CHAPTER_NAMES = set("x W(1) op:z(1) z(1) op:h(1) h(1) W(2) op:o o y op:L L op:s s op:J J".split())
CHAPTER_EDGES = {
    ("x", "op:z(1)"), ("W(1)", "op:z(1)"), ("op:z(1)", "z(1)"), ("z(1)", "op:h(1)"), ("op:h(1)", "h(1)"),
    ("h(1)", "op:o"), ("W(2)", "op:o"), ("op:o", "o"), ("o", "op:L"), ("y", "op:L"), ("op:L", "L"),
    ("W(1)", "op:s"), ("W(2)", "op:s"), ("op:s", "s"), ("L", "op:J"), ("s", "op:J"), ("op:J", "J"),
}
CHAPTER_BACKWARD_EDGES = {
    ("dJ/dL", "dJ/do"), ("dJ/do", "dJ/dW(2)"), ("dJ/ds", "dJ/dW(2)"), ("dJ/do", "dJ/dh(1)"),
    ("dJ/dh(1)", "dJ/dz(1)"), ("dJ/dz(1)", "dJ/dW(1)"), ("dJ/ds", "dJ/dW(1)"),
}


def variable_inputs(graph: Graph, name: str) -> set[str]:
    """The variables feeding ``name`` through its operator node: the chapter's dependencies."""
    (op,) = graph.predecessors(name)
    assert graph.node(op).kind is NodeKind.OPERATOR
    return set(graph.predecessors(op))


def test_chapter_forward_nodes_are_exactly_the_chapters():
    g = forward_graph(CHAPTER)
    assert set(g.names) == CHAPTER_NAMES and len(g.names) == len(CHAPTER_NAMES)
    values = {n.name for n in g.nodes if n.kind is not NodeKind.OPERATOR}
    assert values == {"x", "W(1)", "z(1)", "h(1)", "W(2)", "o", "y", "L", "s", "J"}
    kinds = [g.node(name).kind.name for name in ("x", "y", "W(1)", "W(2)", "L", "s", "J")]
    assert kinds == ["INPUT"] * 2 + ["PARAMETER"] * 2 + ["OBJECTIVE"] * 3
    assert g.node("W(1)").shape == (3, 4) and g.node("W(2)").shape == (2, 3) and g.node("h(1)").shape == (3,)


def test_chapter_forward_edges_match_hand_list_and_chapter_dependencies():
    g = forward_graph(CHAPTER)
    assert set(g.edges) == CHAPTER_EDGES and len(g.edges) == len(CHAPTER_EDGES)
    assert variable_inputs(g, "z(1)") == {"x", "W(1)"}
    assert variable_inputs(g, "h(1)") == {"z(1)"}
    assert variable_inputs(g, "o") == {"h(1)", "W(2)"}
    assert variable_inputs(g, "L") == {"o", "y"}
    assert variable_inputs(g, "s") == {"W(1)", "W(2)"}
    assert variable_inputs(g, "J") == {"L", "s"}
    assert g.node("op:h(1)").label == "φ" and g.node("op:J").label == "+"
    assert g.node("z(1)").formula == "z(1) = W(1) x" and g.node("o").formula == "o = W(2) h(1)"
    order = g.topological_order()
    assert order[-1] == "J" and order.index("x") < order.index("z(1)") < order.index("h(1)") < order.index("o")


def test_bias_adds_b_nodes_edges_and_terms():
    g = forward_graph(MLPSpec((4, 3, 2), bias=True))
    assert set(g.names) - CHAPTER_NAMES == {"b(1)", "b(2)"}
    assert set(g.edges) - CHAPTER_EDGES == {("b(1)", "op:z(1)"), ("b(2)", "op:o")}
    assert g.node("b(1)").kind is NodeKind.PARAMETER and g.node("b(1)").shape == (3,)
    assert g.node("z(1)").formula == "z(1) = W(1) x + b(1)"
    assert "b(1)" not in g.node("s").formula  # biases are not decayed
    b = backward_graph(MLPSpec((4, 3, 2), bias=True))
    assert b.node("dJ/db(1)").formula == "dJ/db(1) = sum over rows of dJ/dz(1)"
    assert b.node("dJ/db(2)").formula == "dJ/db(2) = sum over rows of dJ/do"
    assert ("dJ/dz(1)", "dJ/db(1)") in b.edges and ("dJ/do", "dJ/db(2)") in b.edges


def test_bias_on_the_hidden_layer_only_draws_b1_and_its_gradient_only():
    spec = MLPSpec((4, 3, 2), bias="hidden", l2=0.01)  # the chapter's exercise 2
    f, b = forward_graph(spec), backward_graph(spec)
    assert set(f.names) - CHAPTER_NAMES == {"b(1)"} and set(f.edges) - CHAPTER_EDGES == {("b(1)", "op:z(1)")}
    assert f.node("z(1)").formula == "z(1) = W(1) x + b(1)" and f.node("o").formula == "o = W(2) h(1)"
    assert f.node("op:z(1)").label == "×+" and f.node("op:o").label == "×"
    assert [n for n in b.names if n.startswith("dJ/db")] == ["dJ/db(1)"]
    assert "bias hidden" in to_dot(f)


@pytest.mark.parametrize("widths", [(5, 3), (5, 4, 3), (6, 5, 4, 3), (7, 6, 5, 4, 3, 2)])
def test_depth_scaling(widths):
    spec = MLPSpec(widths, bias=False)
    n = len(widths) - 1
    f, b = forward_graph(spec), backward_graph(spec)

    def count(graph: Graph, pattern: str) -> int:
        return sum(1 for name in graph.names if re.fullmatch(pattern, name))

    assert count(f, r"W\(\d+\)") == n and count(f, r"h\(\d+\)") == n - 1 and count(f, r"z\(\d+\)") == n - 1
    assert count(b, r"dJ/dW\(\d+\)") == n and count(b, r"dJ/dh\(\d+\)") == n - 1 and count(b, r"dJ/dz\(\d+\)") == n - 1
    assert set(f.predecessors("op:o")) == {"x" if n == 1 else f"h({n - 1})", f"W({n})"}
    assert set(f.predecessors("op:s")) == {f"W({k})" for k in range(1, n + 1)}
    assert f.node(f"W({n})").shape == (widths[-1], widths[-2])


def test_chapter_backward_nodes_edges_and_formulas():
    g = backward_graph(CHAPTER)
    assert set(g.names) == {"dJ/dL", "dJ/ds", "dJ/do", "dJ/dW(2)", "dJ/dh(1)", "dJ/dz(1)", "dJ/dW(1)"}
    assert all(n.kind is NodeKind.GRADIENT for n in g.nodes)
    assert set(g.edges) == CHAPTER_BACKWARD_EDGES
    expected = {
        "dJ/dL": ["dJ/dL = 1"],
        "dJ/ds": ["dJ/ds = 1"],
        "dJ/do": ["softmax(o)", "onehot(y)", "/ n"],
        "dJ/dW(2)": ["dJ/dW(2) = dJ/do h(1)^T + lambda W(2)", "lambda = 0.01"],
        "dJ/dh(1)": ["dJ/dh(1) = W(2)^T dJ/do"],
        "dJ/dz(1)": ["dJ/dz(1) = dJ/dh(1) ⊙ phi'(z(1))", "1[z > 0]"],
        "dJ/dW(1)": ["dJ/dW(1) = dJ/dz(1) x^T + lambda W(1)"],
    }
    for name, parts in expected.items():
        for part in parts:
            assert part in g.node(name).formula, (name, part)


def test_loss_activation_and_lambda_change_the_formulas():
    se = MLPSpec((4, 3, 2), activation="tanh", loss="squared-error")
    b, f = backward_graph(se), forward_graph(se)
    assert "(o - y) / n" in b.node("dJ/do").formula and "softmax" not in b.node("dJ/do").formula
    assert "0.5 ||o - y||^2" in f.node("L").formula and f.node("y").shape == (2,)
    assert "1 - tanh(z)^2" in b.node("dJ/dz(1)").formula and "tanh" in f.node("h(1)").formula
    assert "sigmoid(z) (1 - sigmoid(z))" in backward_graph(MLPSpec((4, 3, 2), activation="sigmoid")).node("dJ/dz(1)").formula
    assert "lambda = 0" in f.node("s").formula and "dJ/ds" in b.names  # s stays when lambda == 0


def test_backward_is_a_dag_ordered_from_J_back_to_the_weights():
    for spec in (CHAPTER, DEEP):
        g = backward_graph(spec)
        order = g.topological_order()
        pos = {name: i for i, name in enumerate(order)}
        assert set(order[:2]) == {"dJ/dL", "dJ/ds"}
        assert all(pos[src] < pos[dst] for src, dst in g.edges)
        n = spec.num_layers
        assert [pos[f"dJ/dW({k})"] for k in range(n, 0, -1)] == sorted(pos[f"dJ/dW({k})"] for k in range(n, 0, -1))
        assert order[-1] in {"dJ/dW(1)", "dJ/db(1)"}
        for k in range(1, n + 1):
            assert g.successors(f"dJ/dW({k})") == ()  # parameter gradients are where backprop ends


def test_full_graph_joins_forward_backward_and_reads():
    g = full_graph(CHAPTER)
    assert set(g.names) == CHAPTER_NAMES | set(backward_graph(CHAPTER).names)
    reads = {e for e in g.edges if g.node(e[0]).kind is not NodeKind.GRADIENT and g.node(e[1]).kind is NodeKind.GRADIENT}
    assert {("h(1)", "dJ/dW(2)"), ("W(2)", "dJ/dh(1)"), ("z(1)", "dJ/dz(1)"), ("x", "dJ/dW(1)"), ("J", "dJ/dL")} <= reads
    assert set(g.edges) == CHAPTER_EDGES | CHAPTER_BACKWARD_EDGES | reads
    assert g.topological_order()[-1] != "J"
    assert build_graph(CHAPTER, "both") == g and build_graph(CHAPTER, GraphMode.BACKWARD) == backward_graph(CHAPTER)


def test_graph_rejects_cycles_duplicates_and_unknown_nodes():
    a, b = (Node(name, NodeKind.VARIABLE, name, name, None, 0) for name in "ab")
    with pytest.raises(ValueError, match="cycle"):
        Graph(CHAPTER, GraphMode.FORWARD, (a, b), (("a", "b"), ("b", "a"))).topological_order()
    with pytest.raises(ValueError, match="duplicate"):
        Graph(CHAPTER, GraphMode.FORWARD, (a, a), ())
    with pytest.raises(ValueError, match="unknown"):
        Graph(CHAPTER, GraphMode.FORWARD, (a,), (("a", "zz"),))
    with pytest.raises(KeyError):
        forward_graph(CHAPTER).node("nope")


def parse_dot(text: str) -> tuple[dict[str, str], list[tuple[str, str, str]], dict[str, list[str]], list[list[str]]]:
    """Declared nodes (name -> attrs), edges, clusters (name -> declared nodes), rank groups, in order."""
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depths = list(accumulate({"{": 1, "}": -1}.get(ch, 0) for ch in unquoted))
    assert min(depths) >= 0 and depths[-1] == 0  # braces balance
    nodes, edges, clusters, ranks, stack = {}, [], {}, [], []
    quoted = r'"((?:[^"\\]|\\.)*)"'
    for line in map(str.strip, text.splitlines()):
        if m := re.fullmatch(r"subgraph (\w+) \{", line):
            stack.append(m.group(1))
            if m.group(1).startswith("cluster"):
                clusters[m.group(1)] = []
            else:
                ranks.append([])
        elif line == "}" and stack:
            stack.pop()
        elif m := re.fullmatch(rf"{quoted} -> {quoted}(.*);", line):
            edges.append(m.groups())
        elif m := re.fullmatch(rf"{quoted} \[(.*)\];", line):
            assert m.group(1) not in nodes, f"{m.group(1)} declared twice"
            nodes[m.group(1)] = m.group(2)
            for owner in (o for o in stack if o.startswith("cluster")):
                clusters[owner].append(m.group(1))
            if stack and not stack[-1].startswith("cluster"):
                ranks[-1].append(m.group(1))
    return nodes, edges, clusters, ranks


def unreversed(edges: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    return {(dst, src) if 'dir="back"' in attrs else (src, dst) for src, dst, attrs in edges}


@pytest.mark.parametrize("mode", list(GraphMode))
@pytest.mark.parametrize("spec", [CHAPTER, DEEP])
def test_dot_is_structurally_sound(mode, spec):
    g = build_graph(spec, mode)
    nodes, edges, clusters, _ = parse_dot(to_dot(g, show_reads=True))
    assert set(nodes) == set(g.names) and not clusters
    assert all(src in nodes and dst in nodes for src, dst, _ in edges)
    assert unreversed(edges) == set(g.edges) and len(edges) == len(g.edges)
    for name, attrs in nodes.items():
        if g.node(name).kind is NodeKind.GRADIENT:
            assert "dashed" in attrs and "=" in g.node(name).formula
    if mode is GraphMode.BOTH:
        hidden = {e for e in g.edges if g.node(e[0]).kind is not NodeKind.GRADIENT and g.node(e[1]).kind is NodeKind.GRADIENT}
        assert unreversed(parse_dot(to_dot(g))[1]) == set(g.edges) - hidden


def test_dot_chapter_layout_runs_rightward_and_upward():
    text = to_dot(forward_graph(CHAPTER))
    assert 'rankdir="BT"' in text and 'rankdir="LR"' in to_dot(forward_graph(CHAPTER), direction=Direction.RIGHT)
    _, edges, _, ranks = parse_dot(text)
    assert ranks[0] == ["x"] and "J" in ranks[-1] and {"L", "s"} <= set(ranks[-1])
    assert ranks[1] == ["W(1)", "op:z(1)", "z(1)", "op:h(1)", "h(1)"]
    row = {name: i for i, group in enumerate(ranks) for name in group}
    assert all(row[src] <= row[dst] for src, dst, _ in edges)  # BT: every arrow flat or upward


def test_dot_stages_become_clusters_with_the_right_nodes():
    g = full_graph(DEEP)
    stages = [(0, 2), (2, 3), (3, 4)]
    _, _, clusters, _ = parse_dot(to_dot(g, stages=stages))
    assert sorted(clusters) == ["cluster_stage0", "cluster_stage1", "cluster_stage2"]
    members = [set(clusters[f"cluster_stage{i}"]) for i in range(3)]
    assert sum(len(m) for m in members) == len(g.names) and set.union(*members) == set(g.names)
    assert {"x", "W(1)", "b(1)", "z(1)", "h(1)", "W(2)", "h(2)", "dJ/dW(1)", "dJ/dz(1)", "dJ/dh(1)"} <= members[0]
    assert {"W(3)", "z(3)", "h(3)", "dJ/dW(3)", "dJ/dz(3)", "dJ/dh(2)"} <= members[1]
    assert {"W(4)", "o", "y", "L", "s", "J", "op:s", "op:J", "dJ/dL", "dJ/ds", "dJ/do", "dJ/dh(3)"} <= members[2]
    assert node_stages(g, stages)["h(2)"] == 0 and node_stages(g, stages)["op:z(3)"] == 1
    _, _, clusters, _ = parse_dot(to_dot(forward_graph(CHAPTER), stages=[(0, 1), (1, 2)]))
    assert set(clusters["cluster_stage0"]) == {"x", "W(1)", "op:z(1)", "z(1)", "op:h(1)", "h(1)"}


@pytest.mark.parametrize("stages", [[], [(0, 1), (2, 4)], [(0, 2), (1, 4)], [(0, 0), (0, 4)], [(0, 3)], [(0, 5)]])
def test_bad_stages_are_rejected(stages):
    with pytest.raises(ValueError, match="stages"):
        check_stages(stages, 4)
    with pytest.raises(ValueError, match="stages"):
        to_dot(forward_graph(DEEP), stages=stages)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz dot not installed")
def test_graphviz_places_x_bottom_left_and_J_top_right():
    plain = subprocess.run(["dot", "-Tplain"], input=to_dot(forward_graph(CHAPTER)), capture_output=True,
                           text=True, check=True).stdout
    pos = {p[1]: (float(p[2]), float(p[3])) for p in map(shlex.split, plain.splitlines()) if p and p[0] == "node"}
    assert set(pos) == CHAPTER_NAMES
    assert pos["x"][1] < min(y for name, (_, y) in pos.items() if name != "x")
    assert pos["J"][0] >= max(x for x, _ in pos.values()) and pos["J"][1] >= max(y for _, y in pos.values())
    assert all(pos[dst][1] >= pos[src][1] - 1e-6 for src, dst in CHAPTER_EDGES)
    assert pos["W(1)"][0] < pos["z(1)"][0] < pos["h(1)"][0] and pos["L"][0] < pos["J"][0]


def run_script(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    script = str(ROOT / "scripts" / "graph.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_script_writes_dot_and_renders_when_dot_is_there(tmp_path):
    out = tmp_path / "g.dot"
    r = run_script("--widths", "784,256,10", "--no-bias", "--l2", "0.01", "--mode", "both", "--stages", "0-0,1-1",
                   "--out", str(out))
    assert r.returncode == 0, r.stderr
    nodes, _, clusters, _ = parse_dot(out.read_text(encoding="utf-8"))
    assert len(clusters) == 2 and "dJ/dW(1)" in nodes and "b(1)" not in nodes
    env = dict(os.environ, PATH=str(tmp_path / "no-such-dir"))  # no Graphviz: asking for it fails, in one line
    r = run_script("--widths", "4,3,2", "--out", str(tmp_path / "h.dot"), "--render", "svg", "--renderer", "graphviz",
                   env=env)
    assert r.returncode == 1 and (tmp_path / "h.dot").exists() and not (tmp_path / "h.svg").exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "dot" in r.stderr and "matplotlib" in r.stderr
    pytest.importorskip("matplotlib")  # the default (auto) then draws it without any system program
    r = run_script("--widths", "4,3,2", "--out", str(tmp_path / "h.dot"), "--render", "svg", env=env)
    assert r.returncode == 0 and "<svg" in (tmp_path / "h.svg").read_text(encoding="utf-8"), r.stderr
    if shutil.which("dot"):  # and with Graphviz installed it renders
        r = run_script("--widths", "4,3,2", "--mode", "backward", "--out", str(tmp_path / "b.dot"), "--render", "svg")
        assert r.returncode == 0 and "<svg" in (tmp_path / "b.svg").read_text(encoding="utf-8"), r.stderr


@pytest.mark.parametrize("args, word", [(["--widths", "5"], "widths"), (["--widths", "4,3,2", "--stages", "0-2"], "ranges"),
                                        (["--widths", "4,x"], "widths"), (["--widths", "4,3", "--l2", "-1"], "l2")])
def test_script_bad_input_is_one_line_exit_2(args, word):
    r = run_script(*args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and word in r.stderr


def test_partition_graph_needs_no_torch_and_reexports_the_spec():
    code = "import sys, partition.graph, partition.dot; assert 'torch' not in sys.modules and 'runtime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    for name in ("MLPSpec", "Activation", "Loss"):  # `from partition.graph import MLPSpec` works
        assert getattr(graph_module, name) is getattr(spec_module, name)


@pytest.mark.parametrize("kwargs, field", [
    ({"widths": (5,)}, "widths"), ({"widths": ()}, "widths"), ({"widths": (5, 0, 3)}, "widths"),
    ({"widths": (4, 3), "l2": -0.1}, "l2"), ({"widths": (4, 3), "activation": "swish"}, "activation"),
    ({"widths": (4, 3), "loss": "hinge"}, "loss"),
])
def test_spec_rejects_bad_fields_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        MLPSpec(**kwargs)


def test_with_batch_gives_per_example_nodes_n_rows_and_keeps_parameter_shapes():
    spec = MLPSpec((4, 5, 3), bias="all", loss="squared-error")
    g = graph_module.with_batch(full_graph(spec), 7)
    expected = {"x": (7, 4), "W(1)": (5, 4), "b(1)": (5,), "z(1)": (7, 5), "h(1)": (7, 5), "o": (7, 3), "y": (7, 3),
                "J": (), "dJ/do": (7, 3), "dJ/dW(2)": (3, 5), "dJ/db(2)": (3,), "dJ/dh(1)": (7, 5), "dJ/dz(1)": (7, 5),
                "dJ/dW(1)": (5, 4)}
    assert {name: g.node(name).shape for name in expected} == expected
    assert graph_module.with_batch(forward_graph(CHAPTER), 2).node("y").shape == (2,)  # class indices
    with pytest.raises(ValueError, match="batch"):
        graph_module.with_batch(g, 0)


def test_matplotlib_picture_needs_no_system_program(tmp_path):
    pytest.importorskip("matplotlib")
    from partition.draw import layout, write_graph_png

    g = graph_module.with_batch(full_graph(CHAPTER), 3)
    pos = layout(g)
    assert set(pos) == set(g.names) and len(set(pos.values())) == len(pos)
    assert pos["x"][1] < pos["z(1)"][1] < pos["o"][1] < pos["J"][1]  # rows climb from x to J
    out = write_graph_png(g, tmp_path / "g.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
