"""The chapter's exercise commands: each runs on the chapter's model and its figures hold against independent references."""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from partition.spec import MLPSpec
from runtime.chapter.answer import answer
from runtime.chapter.bias import exercise_bias
from runtime.chapter.common import CHAPTER_SPEC, ChapterConfig, Exercise, Setting, minibatch, model
from runtime.chapter.memory_use import exercise_memory
from runtime.chapter.second_order import hvp, ordered_params
from runtime.chapter.shapes import exercise_shapes
from runtime.ops.functions import linear

ROOT = Path(__file__).resolve().parents[3]
F64 = torch.float64


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "chapter.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("seed", range(4))
def test_ex1_shapes_equal_autograds_for_random_widths_and_batches(seed):
    rng = random.Random(seed)
    widths = tuple(rng.randint(1, 9) for _ in range(rng.randint(2, 5)))
    n = rng.randint(1, 17)
    spec = MLPSpec(widths, rng.choice(["relu", "tanh"]), rng.choice(["all", "none", "hidden"]), 0.01)
    report = exercise_shapes(ChapterConfig(Exercise.SHAPES, spec, n))
    assert report["all_match"] and all(r["autograd"] is not None for r in report["rows"])
    shapes = {r["node"]: tuple(r["graph"]) for r in report["rows"]}
    assert shapes["x"] == shapes["dJ/dx"] == (n, widths[0])  # independent of the graph: the chapter's answer
    assert shapes["dJ/dW(1)"] == (widths[1], widths[0]) and shapes["J"] == ()
    assert shapes["dJ/do"] == (n, widths[-1])


def test_every_exercise_runs_on_the_chapters_model_with_its_figures():
    for ex in (Exercise.SHAPES, Exercise.BIAS, Exercise.MEMORY):
        report = answer(ChapterConfig(ex)).report
        assert report["model"] == {"widths": [4, 5, 3], "activation": "relu", "bias": "none", "l2": 0.01,
                                   "loss": "cross-entropy"}
        json.dumps(report)
    ex4 = answer(ChapterConfig(Exercise.SECOND_ORDER)).report
    assert ex4["parameters"] == 4 * 5 + 5 * 3
    assert ex4["hessian_bytes"] == 35 * 35 * 8 and ex4["hvp_max_abs_difference_vs_torch_func"] <= 1e-10
    g1, g2 = ex4["graphs"]["first_order"], ex4["graphs"]["second_order"]
    assert g2["nodes"] > g1["nodes"] and g2["saved_tensors"] > g1["saved_tensors"] and g2["saved_bytes"] > g1["saved_bytes"]
    assert set(ex4["seconds"]) == {"gradient", "hvp", "hessian"} and all(s > 0 for s in ex4["seconds"].values())


def test_ex2_hidden_bias_equations_and_checks():
    spec = MLPSpec((4, 5, 3), bias="hidden", l2=0.01)
    report = exercise_bias(ChapterConfig(Exercise.BIAS, spec))
    assert "z(1) = W(1) x + b(1)" in report["forward"] and "o = W(2) h(1)" in report["forward"]
    assert "dJ/db(1) = sum over rows of dJ/dz(1)" in report["backward"]
    assert not any("db(2)" in e for e in report["backward"])
    assert set(report["max_abs_difference_vs_autograd"]) == {"dJ/dW(1)", "dJ/db(1)", "dJ/dW(2)"}
    assert max(report["max_abs_difference_vs_autograd"].values()) <= 1e-12
    assert report["max_abs_bias_grad_minus_row_sum"]["dJ/db(1)"] <= 1e-12


@pytest.mark.parametrize("widths,bias,optimizer", [((4, 5, 3), "none", "sgd"), ((6, 9, 7, 3), "all", "adam"),
                                                   ((5, 8, 2), "0", "momentum")])
def test_ex3_training_terms_measured_equal_the_memory_model(widths, bias, optimizer):
    report = exercise_memory(ChapterConfig(Exercise.MEMORY, MLPSpec(widths, bias=bias), 6, "float32", optimizer=optimizer))
    for part in ("training", "inference"):
        assert [r["predicted"] for r in report[part]["rows"]] == [r["measured"] for r in report[part]["rows"]]
    # independent of both: parameters counted by hand, float32
    n_params = sum(o * i + (o if bias == "all" or (bias == "0" and k == 0) else 0)
                   for k, (i, o) in enumerate(zip(widths, widths[1:])))
    assert report["training"]["rows"][0] == {"term": "parameters", "predicted": 4 * n_params, "measured": 4 * n_params}


@pytest.mark.parametrize("spec", [CHAPTER_SPEC, MLPSpec((3, 6, 4, 2), "tanh", "hidden", 0.05, "squared-error")])
def test_ex4_hvp_equals_double_backward_of_plain_autograd(spec):
    cfg = ChapterConfig(Exercise.SECOND_ORDER, spec, 5)
    net = model(cfg)
    x, y = minibatch(cfg)
    params = ordered_params(net)
    v = [torch.randn(p.shape, dtype=F64) for p in params]
    got = hvp(net, x, y, v)
    leaves = [p.detach().clone().requires_grad_() for p in params]
    h, i = x, 0
    for layer in range(spec.num_layers):
        w = leaves[i]
        b = leaves[i + 1] if spec.layer_has_bias(layer) else None
        i += 2 if b is not None else 1
        h = F.linear(h, w, b)
        if spec.has_activation(layer):
            h = torch.relu(h) if spec.activation.value == "relu" else torch.tanh(h)
    data = F.cross_entropy(h, y) if spec.loss.value == "cross-entropy" else 0.5 * (h - y).pow(2).sum(1).mean()
    j = data + spec.l2 / 2 * sum(p.pow(2).sum() for p in leaves if p.dim() == 2)
    grads = torch.autograd.grad(j, leaves, create_graph=True)
    ref = torch.autograd.grad(sum((g * t).sum() for g, t in zip(grads, v)), leaves)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() <= 1e-10


def test_linear_takes_one_example_and_rejects_other_ranks():
    x = torch.randn(4, dtype=F64, requires_grad=True)
    w = torch.randn(5, 4, dtype=F64, requires_grad=True)
    b = torch.randn(5, dtype=F64, requires_grad=True)
    z = linear(x, w, b)
    assert z.shape == (5,)
    z.pow(2).sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    F.linear(*ref).pow(2).sum().backward()
    for t, r in zip((x, w, b), ref):
        assert torch.allclose(t.grad, r.grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="one example"):
        linear(torch.randn(2, 3, 4), w)


def test_script_json_and_one_line_errors(tmp_path):
    r = run_script("ex1", "--json", "--dot", str(tmp_path / "g.dot"), "--png", str(tmp_path / "g.png"))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["all_match"] and (tmp_path / "g.dot").read_text().count("8 × 4") >= 1
    assert (tmp_path / "g.png").stat().st_size > 0
    r = run_script("ex2", "--bias", "7")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bias" in r.stderr


def test_ex5_tiny_setting_recommends_with_its_figures():
    report = answer(ChapterConfig(Exercise.PARTITION, setting=Setting.TINY)).report
    assert report["devices"] == 2 and report["ran"] >= 2
    assert report["recommendation"]["label"] and report["recommendation"]["reasons"]
    assert set(report["best"]) == {"pipeline", "smaller_minibatch"}
    for figures in report["best"].values():
        assert figures["samples_per_second"] > 0 and figures["predicted_peak_bytes_per_device"] > 0
