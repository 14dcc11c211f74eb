"""The equal-math check: every real contender passes at a small width in float64, and a contender whose backward
is deliberately wrong (gradients x 0.5, or one layer's gradient missing) fails, as does a wrong loss."""

import importlib.util
from pathlib import Path

import pytest
import torch

from runtime.bench import equal_math
from runtime.bench.contenders import full_batch_variants, module_grads, torch_variant
from runtime.bench.models import bench_spec, make_batch, reference_loss, reference_sequential
from runtime.bench.pipeline import PipelineBenchConfig, build_variants
from runtime.bench.timing import Group
from runtime.ops.model import init_parameters

ROOT = Path(__file__).resolve().parents[3]
CPU = torch.device("cpu")


def load_peers():
    spec = importlib.util.spec_from_file_location("_peers", ROOT / "scripts" / "_peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    spec = bench_spec(12, 4)
    params = init_parameters(spec, 0)
    data = make_batch(spec, 16, torch.float64, CPU)
    return spec, params, data, equal_math.reference(spec, params, data.x, data.y)


def halved_backward(spec, params, data):
    """The full batch on nn.Sequential, with a hook that halves every gradient on its way into .grad."""
    seq = reference_sequential(spec, params, torch.float64, CPU)
    for p in seq.parameters():
        p.register_hook(lambda g: g * 0.5)
    return full_batch_variants(seq, reference_loss(spec), data.x, data.y, compiled=False)[0]


def test_every_real_contender_passes_in_float64(model):
    spec, params, data, (ref_loss, ref) = model
    peers = load_peers()
    cfg = PipelineBenchConfig(width=12, layers=4, stages=4, microbatches=4, batch=16, compile=False)
    with peers.local_world(CPU):
        variants = build_variants(cfg, spec, params, torch.float64, peers.peers(one_rank=True), data.x, data.y)
        checks = equal_math.check_all(variants, ref_loss, ref, torch.float64)
    names = {v.name for v in variants}
    assert set(checks) == names and {"full-batch", "accumulation", "peer:zbv", "peer:dualpipev", "ours:zb-v"} <= names
    for name, check in checks.items():
        assert check.ok and check.worst <= 1e-12, (name, check)


def test_halved_gradients_fail(model):
    spec, params, data, (ref_loss, ref) = model
    bad = halved_backward(spec, params, data)
    check = equal_math.check_all([bad], ref_loss, ref, torch.float64)["full-batch"]
    assert not check.ok and check.worst == pytest.approx(0.75, rel=1e-9)  # sum of squares: 1 - 0.5^2
    assert "sum of squares" in check.detail
    # the loss alone (the forward) is right: a forward-only check would have let it through
    assert equal_math.compare(bad.step(), {}, ref_loss, {}, 1e-9).ok


def test_missing_gradient_and_wrong_loss_fail(model):
    spec, params, data, (ref_loss, ref) = model
    seq = reference_sequential(spec, params, torch.float64, CPU)
    run = full_batch_variants(seq, reference_loss(spec), data.x, data.y, compiled=False)[0].step
    skips_last = torch_variant("skips", Group.OURS, list(seq.parameters()), run, module_grads([(0, seq[:-1])]))
    check = equal_math.check_all([skips_last], ref_loss, ref, torch.float64)["skips"]
    assert not check.ok and "no gradient for layer 3" in check.detail
    got = equal_math.checksums(module_grads([(0, seq)])())
    assert equal_math.compare(ref_loss, got, ref_loss, ref, 1e-9).ok
    assert not equal_math.compare(ref_loss * 1.01, got, ref_loss, ref, 1e-3).ok


def test_checksums_by_hand():
    g = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert equal_math.checksums({(0, "w"): g, (0, "b"): None}) == {(0, "w"): (2.5, 14.25, 6.5)}
