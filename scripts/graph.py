"""Draw the chapter's computational graph of an MLP as Graphviz DOT, and as SVG/PNG (Graphviz or matplotlib).

    python scripts/graph.py --widths 784,256,10 --no-bias --mode forward --out graph.dot --render svg
    python scripts/graph.py --widths 784,256,10 --l2 0.01 --mode backward --out backward.dot
    python scripts/graph.py --widths 784,256,256,10 --activation tanh --loss squared-error --mode both --out both.dot
    python scripts/graph.py --widths 784,256,256,256,10 --mode forward --stages 0-1,2-3 --out plan.dot --render png
    python scripts/graph.py --widths 4,5,3 --bias hidden --mode both --out g.dot --render png --renderer matplotlib
    python scripts/graph.py --widths 784,256,10 --mode both                   # DOT on stdout

The forward picture follows the chapter's figure: x bottom left, J top right, arrows rightward and
upward; operators are circles, variables rectangles, gradients dashed red with their formulas.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from _cli import HelpFormatter, add_bias_flags, run_main

from partition.dot import Direction, to_dot
from partition.draw import write_graph_png
from partition.graph import Graph, GraphMode, build_graph
from partition.plan import parse_ranges
from partition.spec import Activation, Loss, MLPSpec, parse_widths

RENDER_FORMATS = ("svg", "png")
RENDERERS = ("auto", "graphviz", "matplotlib")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = argparse.ArgumentParser(prog="graph.py", description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("model (the chapter's MLP)")
    g.add_argument("--widths", required=True, help="layer widths, inputs first, e.g. 784,256,10 (one hidden layer)")
    g.add_argument("--activation", default="relu", choices=[a.value for a in Activation], help="phi (default %(default)s)")
    add_bias_flags(g)
    g.add_argument("--l2", type=float, default=0.0, help="lambda of s = lambda/2 sum ||W(l)||_F^2 (default %(default)s)")
    g.add_argument("--loss", default="cross-entropy", choices=[x.value for x in Loss], help="l(o, y) (default %(default)s)")
    g = p.add_argument_group("picture")
    g.add_argument("--mode", default="forward", choices=[m.value for m in GraphMode],
                   help="forward graph, backward graph (gradients with formulas), or both in one picture")
    g.add_argument("--stages", default=None,
                   help="pipeline stages as inclusive 0-based layer ranges, e.g. 0-0,1-1; drawn as clusters")
    g.add_argument("--direction", default=Direction.UP.value, choices=[d.value for d in Direction],
                   help="Graphviz rankdir; BT (default) gives the chapter's bottom-left to top-right figure")
    g.add_argument("--reads", action="store_true",
                   help="with --mode both, also draw dotted edges from each forward value to the gradients reading it")
    g.add_argument("--out", default=None, help="DOT file to write (default: print the DOT on stdout)")
    g.add_argument("--render", default=None, choices=RENDER_FORMATS,
                   help="also draw the picture, as OUT with this suffix (needs --out)")
    g.add_argument("--renderer", default=RENDERERS[0], choices=RENDERERS,
                   help="graphviz (`dot` on PATH), matplotlib (no system program), or auto: graphviz when `dot` is "
                        "installed, else matplotlib (default %(default)s); a picture that cannot be made is an error")
    return p.parse_args(argv)


def render(dot_path: Path, fmt: str, renderer: str, graph: Graph) -> Path:
    """Draw the picture next to ``dot_path`` as ``fmt`` with ``renderer``; RuntimeError when it cannot be made."""
    program = shutil.which("dot")
    target = dot_path.with_suffix(f".{fmt}")
    if renderer == "matplotlib" or (renderer == "auto" and program is None):
        try:
            return write_graph_png(graph, target)
        except ImportError as err:
            raise RuntimeError(f"no {fmt} made: {err}") from None
    if program is None:
        raise RuntimeError(f"no {fmt} made: Graphviz `dot` is not on PATH (wrote {dot_path}); "
                           "--renderer matplotlib draws one without it")
    result = subprocess.run([program, f"-T{fmt}", str(dot_path), "-o", str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        first = (result.stderr.strip().splitlines() or ["no message"])[0]
        raise RuntimeError(f"dot exited with status {result.returncode}: {first}")
    return target


def main(argv: list[str] | None = None) -> int:
    """Build the graph, write the DOT, optionally render it."""
    args = parse_args(argv)
    spec = MLPSpec(parse_widths(args.widths), args.activation, args.bias, args.l2, args.loss)
    stages = None if args.stages is None else parse_ranges(args.stages, spec.num_layers)
    if args.render and args.out is None:
        raise ValueError("--render needs --out (the DOT file to render)")
    graph = build_graph(spec, GraphMode(args.mode))
    text = to_dot(graph, direction=Direction(args.direction), stages=stages, show_reads=args.reads)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.out)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(graph.nodes)} nodes, {len(graph.edges)} edges)")
    if args.render:
        print(f"wrote {render(out, args.render, args.renderer, graph)}")
    return 0


if __name__ == "__main__":
    run_main(main, "graph.py")
