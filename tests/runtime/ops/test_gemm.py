"""oneDNN's GEMM kernel for F and B: same products as the float64 reference, refused where it cannot run."""

import pytest
import torch

from partition.recompute import NO_RECOMPUTE, RECOMPUTE_ALL, Recompute
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.bench.contenders import FULL_BATCH_ONEDNN, OurSchedule, onednn_full_batch
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.ops import equations
from runtime.ops.equations import linear_forward, linear_grad_input
from runtime.ops.gemm import Gemm, gemm_problem
from runtime.ops.model import PipeModel

F32, F64 = torch.float32, torch.float64
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


def data(rows, width, out, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, width, generator=g), torch.randn(out, width, generator=g), torch.randn(out, generator=g),
            torch.randn(rows, out, generator=g))


@needs_onednn
@pytest.mark.parametrize("rows,width,out", [(64, 96, 80), (1, 5, 3), (7, 33, 17)])
def test_onednn_products_equal_the_float64_ones(rows, width, out):
    x, w, b, g = data(rows, width, out)
    z = linear_forward(x, w, b, Gemm.ONEDNN)
    gx = linear_grad_input(g, w, Gemm.ONEDNN)
    assert z.shape == (rows, out) and gx.shape == (rows, width)
    torch.testing.assert_close(z.double(), x.double() @ w.double().t() + b.double(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gx.double(), g.double() @ w.double(), rtol=1e-5, atol=1e-4)
    no_bias = linear_forward(x, w, None, Gemm.ONEDNN)
    torch.testing.assert_close(no_bias.double(), x.double() @ w.double().t(), rtol=1e-5, atol=1e-4)


def test_onednn_is_refused_where_it_cannot_run():
    assert gemm_problem(Gemm.TORCH, ["cuda:0"], F64, direct=False) is None
    assert "direct engine" in gemm_problem(Gemm.ONEDNN, ["cpu"], F32, direct=False)
    assert gemm_problem(Gemm.ONEDNN, ["cpu"], F64, direct=True) == "gemm: onednn computes in float32 only, not float64"
    assert gemm_problem(Gemm.ONEDNN, ["cpu", "cuda:1"], F32, direct=True) == "gemm: onednn runs on the CPU only"
    spec = MLPSpec((4, 5, 3), "relu")
    cfg = PipelineConfig(spec, ((0, 1), (1, 2)), ScheduleKind.GPIPE, 2, ("cpu", "cpu"), F32, gemm=Gemm.ONEDNN)
    with pytest.raises(ValueError, match="needs the direct engine"):
        Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1), LocalTransport())


def test_bench_names_parse_and_order():
    ours = OurSchedule.parse("ours:zb-h1+defer-w+direct+onednn")
    assert (ours.kind, ours.defer_w, ours.direct, ours.onednn) == (ScheduleKind.ZB_H1, True, True, True)
    assert ours.name == "zb-h1+defer-w+direct+onednn"
    with pytest.raises(ValueError, match=r"\+onednn needs \+direct"):
        OurSchedule.parse("1f1b+onednn")
    with pytest.raises(ValueError, match="in that order"):
        OurSchedule.parse("1f1b+onednn+direct")


def train(spec, ranges, kind, m, dtype, engine, gemm, steps=3, recompute=()):
    cfg = PipelineConfig(spec, ranges, kind, m, ("cpu",) * len(ranges), dtype, 5, defer_w=True, engine=engine, gemm=gemm,
                         recompute=recompute)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), LocalTransport())
    g = torch.Generator().manual_seed(11)
    losses = []
    for i in range(steps):
        x = torch.randn(16, spec.widths[0], generator=g, dtype=F64).to(dtype)
        y = torch.randint(0, spec.widths[-1], (16,), generator=g)
        losses.append(pipe.step(x, y, 16, i).loss)
    return losses, [p.detach().double() for s in range(len(ranges)) for p in pipe.stages[s].parameters()]


@needs_onednn
@pytest.mark.parametrize("kind,ranges", [(ScheduleKind.ZB_H1, ((0, 2), (2, 4))), (ScheduleKind.GPIPE, ((0, 1), (1, 4)))])
def test_a_pipeline_on_onednn_trains_like_the_float64_one(kind, ranges):
    """Three SGD steps in float32 with oneDNN's F and B: losses and parameters within float32 rounding of float64."""
    spec = MLPSpec((12, 40, 24, 32, 5), "relu", True, 0.01)
    ref_losses, ref = train(spec, ranges, kind, 4, F64, Engine.AUTOGRAD, Gemm.TORCH)
    losses, got = train(spec, ranges, kind, 4, F32, Engine.DIRECT, Gemm.ONEDNN)
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and it is not silently the same kernel as torch's: a float32 run on torch's matmul differs in its last bits
    _, torch_f32 = train(spec, ranges, kind, 4, F32, Engine.DIRECT, Gemm.TORCH)
    assert any(not torch.equal(a, b) for a, b in zip(got, torch_f32))


@needs_onednn
def test_the_onednn_full_batch_baseline_computes_the_reference_gradients():
    spec = MLPSpec((8, 16, 16, 4), "relu", True, 0.0)
    params = [(w.detach(), None if b is None else b.detach()) for w, b in PipeModel.from_spec(spec, 2, F64).layer_params()]
    x, y = torch.randn(12, 8), torch.randint(0, 4, (12,))
    variant = onednn_full_batch(spec, params, F32, torch.device("cpu"), x, y)
    assert variant.name == FULL_BATCH_ONEDNN
    loss = float(variant.step())
    seq = PipeModel.from_spec(spec, 2, F64).to_sequential()
    ref = torch.nn.functional.cross_entropy(seq(x.double()), y, reduction="sum") / 12
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    grads = variant.grads()
    lins = [m for m in seq if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(lins):
        torch.testing.assert_close(grads[(i, "w")].double(), lin.weight.grad, rtol=1e-4, atol=1e-5)
    failed = onednn_full_batch(spec, params, F64, torch.device("cpu"), x.double(), y)
    with pytest.raises(RuntimeError, match="could not build: ValueError: gemm: onednn computes in float32 only"):
        failed.step()


@needs_onednn
@pytest.mark.parametrize("recompute,extra_f", [(NO_RECOMPUTE, 0), (RECOMPUTE_ALL, 4), (Recompute.parse("first:1"), 2)])
def test_every_forward_and_input_gradient_product_goes_to_onednn(monkeypatch, recompute, extra_f):
    """One step, 4 layers in 2 stages, 4 microbatches: 4 F products a microbatch (plus the recomputed ones) and 3 B
    products (layer 0's input needs no gradient), every one of them through oneDNN's kernel."""
    calls = {"f": 0, "b": 0}

    def counted(key, fn):
        def wrapper(*args):
            calls[key] += 1
            return fn(*args)
        return wrapper

    monkeypatch.setattr(equations, "onednn_linear", counted("f", equations.onednn_linear))
    monkeypatch.setattr(equations, "onednn_grad_input", counted("b", equations.onednn_grad_input))
    spec = MLPSpec((12, 40, 24, 32, 5), "relu", True, 0.0)
    train(spec, ((0, 2), (2, 4)), ScheduleKind.ZB_H1, 4, F32, Engine.DIRECT, Gemm.ONEDNN, steps=1, recompute=(recompute,))
    assert calls == {"f": 4 * (4 + extra_f), "b": 4 * 3}

