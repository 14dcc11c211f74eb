"""The chapter's five exercises, one subcommand each, answered with figures computed now (default: the chapter's model).

    python scripts/chapter.py ex1 --batch 8 --png ex1.png        # matrix inputs: every node's and gradient's shape
    python scripts/chapter.py ex2 --bias hidden --dot ex2.dot     # a bias on the hidden layer: equations and graph
    python scripts/chapter.py ex3 --batch 128 --optimizer adam    # memory, training vs inference, predicted and measured
    python scripts/chapter.py ex4                                 # second derivatives: graph sizes, H v, the Hessian
    python scripts/chapter.py ex5 --out out/chapter5              # partition over devices or a smaller minibatch?
    python scripts/chapter.py ex1 --widths 784,256,10 --batch 64 --json

The chapter's model is --widths 4,5,3 --bias none --l2 0.01 (x in R^4, one hidden layer of 5, 3 outputs).
"""

from __future__ import annotations

import argparse
import json

from _cli import HelpFormatter, add_bias_flags, run_main

from partition.cost import Optimizer
from partition.spec import Activation, Loss, MLPSpec, parse_widths
from runtime.chapter.answer import answer
from runtime.chapter.common import ChapterConfig, Exercise, Setting

HELP = {Exercise.SHAPES: "matrix inputs: the shape of every node and gradient, checked against autograd",
        Exercise.BIAS: "a bias per layer: forward and backward equations, the graph, the checks",
        Exercise.MEMORY: "memory for training vs inference, the memory model beside measured bytes",
        Exercise.SECOND_ORDER: "second derivatives: the gradient's graph, H v, the full Hessian, timed",
        Exercise.PARTITION: "partition over devices or a smaller minibatch: the compare harness, run short"}


def _model_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("model (default: the chapter's)")
    g.add_argument("--widths", default="4,5,3", help="layer widths, inputs first (default %(default)s)")
    g.add_argument("--activation", default="relu", choices=[a.value for a in Activation], help="phi (default %(default)s)")
    add_bias_flags(g, default="none")
    g.add_argument("--l2", type=float, default=0.01, help="lambda of s = lambda/2 sum ||W(l)||_F^2 (default %(default)s)")
    g.add_argument("--loss", default="cross-entropy", choices=[x.value for x in Loss], help="l(o, y) (default %(default)s)")
    g.add_argument("--batch", type=int, default=8, help="examples n in the minibatch (default %(default)s)")
    g.add_argument("--dtype", default="float64", choices=["float64", "float32", "bfloat16", "float16"],
                   help="(default %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="parameters and data (default %(default)s)")
    g.add_argument("--json", action="store_true", help="print the figures as JSON instead of text")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag, `chapter.py exN --help` those of one exercise."""
    p = argparse.ArgumentParser(prog="chapter.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="exercise", required=True, metavar="{ex1,ex2,ex3,ex4,ex5}")
    parent = _model_flags()
    for ex in Exercise:
        s = sub.add_parser(ex.value, parents=[parent], help=HELP[ex], description=HELP[ex],
                           formatter_class=HelpFormatter)
        if ex in (Exercise.SHAPES, Exercise.BIAS):
            s.add_argument("--dot", default=None, help="write the graph (shapes on the nodes) as Graphviz DOT here")
            s.add_argument("--png", default=None, help="draw the graph here with matplotlib (no Graphviz needed)")
        if ex is Exercise.MEMORY:
            s.add_argument("--optimizer", default=Optimizer.SGD.value, choices=[o.value for o in Optimizer],
                           help="optimizer whose state is counted")
        if ex is Exercise.PARTITION:
            s.add_argument("--setting", default=Setting.QUICK.value, choices=[x.value for x in Setting],
                           help="quick: the compare harness's quick settings; tiny: seconds, for tests")
            s.add_argument("--out", default=None, help="also write the compare report (md, json, csv, plots) here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Answer one exercise and print it (text or JSON)."""
    a = parse_args(argv)
    spec = MLPSpec(parse_widths(a.widths), a.activation, a.bias, a.l2, a.loss)
    cfg = ChapterConfig(Exercise(a.exercise), spec, a.batch, a.dtype, a.seed, Optimizer(getattr(a, "optimizer", "sgd")),
                        Setting(getattr(a, "setting", Setting.QUICK.value)), getattr(a, "dot", None),
                        getattr(a, "png", None), getattr(a, "out", None))
    result = answer(cfg)
    print(json.dumps(result.report, indent=1) if a.json else result.text)
    return 0


if __name__ == "__main__":
    run_main(main, "chapter.py")
