"""Cost model: FLOPs and bytes of small specs against numbers worked out by hand."""

import pytest
import torch

from partition.cost import DType, LayerCost, Optimizer, as_dtype, as_optimizer, flop_times, layer_costs
from partition.spec import MLPSpec
from partition.timing import StageCost
from runtime.train import profile as profile_mod
from runtime.train.profile import Profile, flush_bytes, profile_layers, working_set_bytes


def test_relu_bias_cross_entropy_float32_adam_by_hand():
    # widths 3 -> 4 -> 2. Layer 0: W 4x3, b 4, relu after it. Layer 1: W 2x4, b 2, then the loss.
    costs = layer_costs(MLPSpec((3, 4, 2)), DType.FLOAT32, Optimizer.ADAM)
    assert costs[0] == LayerCost(
        flops_f=2 * 3 * 4 + 4 + 4,  # x W^T, + b, relu: 32
        flops_b=4,  # dJ/dh * relu'(h) only: layer 0's input is data, dJ/dx is never computed
        flops_w=2 * 4 * 3 + 4,  # g^T x, sum_rows g: 28
        param_bytes=(12 + 4) * 4,
        grad_bytes=64,
        optimizer_bytes=2 * 64,  # Adam: m and v
        saved_bytes_per_sample=3 * 4,  # its input x
        boundary_bytes_per_sample=4 * 4,  # h(1) crosses a cut after layer 0
        deferred_w_bytes_per_sample=4 * 4,  # g = dJ/dz(1) kept from B to W
    )
    assert costs[1] == LayerCost(
        flops_f=2 * 4 * 2 + 2,  # no activation after the output layer: 18
        flops_b=2 * 2 * 4,  # g W: 16
        flops_w=2 * 2 * 4 + 2,  # 18
        param_bytes=(8 + 2) * 4,
        grad_bytes=40,
        optimizer_bytes=80,
        saved_bytes_per_sample=4 * 4 + 2 * 4 + 8,  # x = h(1), o, and one int64 class index
        boundary_bytes_per_sample=0,
        deferred_w_bytes_per_sample=2 * 4,
    )


def test_tanh_no_bias_squared_error_bfloat16_momentum_by_hand():
    costs = layer_costs(MLPSpec((5, 3, 2), activation="tanh", bias=False, loss="squared-error"), "bfloat16", "momentum")
    assert [(c.flops_f, c.flops_b, c.flops_w) for c in costs] == [(2 * 5 * 3 + 3, 3, 30), (12, 12, 12)]
    assert [(c.param_bytes, c.grad_bytes, c.optimizer_bytes) for c in costs] == [(30, 30, 30), (12, 12, 12)]
    # last layer: x (3 bf16) + o (2 bf16) + a float target row (2 bf16)
    assert [c.saved_bytes_per_sample for c in costs] == [10, 6 + 4 + 4]
    assert [c.boundary_bytes_per_sample for c in costs] == [6, 0]
    assert [c.static_bytes for c in costs] == [90, 36]


def test_sgd_has_no_optimizer_state_and_float64_doubles_bytes():
    spec = MLPSpec((6, 5, 4, 3))
    sgd64 = layer_costs(spec, "float64", "sgd")
    adam32 = layer_costs(spec, "float32", "adam")
    assert all(c.optimizer_bytes == 0 for c in sgd64)
    assert [c.param_bytes for c in sgd64] == [2 * c.param_bytes for c in adam32] == [(30 + 5) * 8, (20 + 4) * 8, (12 + 3) * 8]
    assert sum(c.param_bytes for c in sgd64) == spec.num_parameters() * 8


def test_flops_scale_with_the_microbatch_and_flop_times():
    costs = layer_costs(MLPSpec((3, 4, 2)))
    assert costs[0].flops(5) == (160, 20, 140)
    times = flop_times(costs, flops_per_second=10.0, microbatch=5)
    assert times == (StageCost(16.0, 2.0, 14.0), StageCost(9.0, 8.0, 9.0))


def test_middle_layers_count_the_input_gradient():
    costs = layer_costs(MLPSpec((2, 3, 4, 5), bias=False))
    assert [c.flops_b for c in costs] == [3, 2 * 4 * 3 + 4, 2 * 5 * 4]


def test_dtype_and_optimizer_parsing():
    assert [d.nbytes for d in DType] == [8, 4, 2, 2]
    assert as_dtype("bf16") is DType.BFLOAT16 and as_dtype("torch.float16") is DType.FLOAT16
    assert as_optimizer("ADAM") is Optimizer.ADAM and Optimizer.MOMENTUM.states == 1
    with pytest.raises(ValueError, match="dtype"):
        as_dtype("int8")
    with pytest.raises(ValueError, match="optimizer"):
        as_optimizer("lion")
    with pytest.raises(ValueError, match="flops_per_second"):
        flop_times(layer_costs(MLPSpec((2, 2))), 0.0, 1)


def test_profile_measures_saves_and_loads(tmp_path):
    spec = MLPSpec((32, 256, 256, 10))
    prof = profile_layers(spec, microbatch=64, repeats=3, warmup=1)
    assert prof.device == "cpu" and prof.dtype == "float32" and prof.widths == spec.widths
    assert len(prof.layers) == 3 and all(c.f > 0 and c.b > 0 and c.w > 0 for c in prof.layers)
    # the 256x256 layer does ~25x the work of the 256->10 one; medians keep the order despite noise
    assert prof.layers[1].w > prof.layers[2].w
    prof.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == prof
    prof.check(spec, 64)
    with pytest.raises(ValueError, match="microbatch 64, not 32"):
        prof.check(spec, 32)
    with pytest.raises(ValueError, match="widths"):
        prof.check(MLPSpec((32, 256, 10)), 64)
    (tmp_path / "bad.json").write_text('{"device": "cpu"}')
    with pytest.raises(ValueError, match="not a profile"):
        Profile.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="cannot read"):
        Profile.load(tmp_path / "missing.json")


def test_the_default_flush_is_the_working_set_or_8x_beyond_a_cores_own_cache(monkeypatch):
    """With a 1 MiB L2: 64-64-64-64-64 at 64 rows touches 0.33 MB a step (weights, gradients, one microbatch's
    tensors of each layer, worked out below): flushed as it is; 64-256-256-256-10 touches 1.8 MB: 8 times that;
    1024-wide layers at 256 rows 44 MiB: capped at 64 MiB."""
    monkeypatch.setattr(profile_mod, "private_cache_bytes", lambda: 1 << 20)

    def touched(shapes, rows):
        return 4 * sum(2 * o * (i + 1) + rows * (i + 2 * o) for i, o in shapes)

    small = touched([(64, 64)] * 4, 64)
    assert small == 329_728 and working_set_bytes(MLPSpec((64,) * 5), 64, 4) == small and flush_bytes(small) == small
    mid = touched(((64, 256), (256, 256), (256, 256), (256, 10)), 64)
    assert mid == 1_817_680 and working_set_bytes(MLPSpec((64, 256, 256, 256, 10)), 64, 4) == mid
    assert flush_bytes(mid) == 8 * mid
    big = working_set_bytes(MLPSpec((1024,) * 5), 256, 4)
    assert big == touched([(1024, 1024)] * 4, 256) == 46_170_112 and flush_bytes(big) == 64 << 20
    assert flush_bytes(1 << 20, private=1 << 20) == 1 << 20 and flush_bytes((1 << 20) + 1, private=1 << 20) == (8 << 20) + 8
    assert flush_bytes(3 << 20, private=4 << 20) == 3 << 20


def test_a_cores_own_cache_is_read_from_sysfs(monkeypatch, tmp_path):
    for name, level, kind, size in (("index0", "1", "Data", "32K"), ("index2", "2", "Unified", "2048K"),
                                    ("index3", "3", "Unified", "32M")):
        (tmp_path / name).mkdir()
        for field, value in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / field).write_text(value + "\n")
    monkeypatch.setattr(profile_mod, "L2_SYSFS", tmp_path)
    assert profile_mod.private_cache_bytes() == 2 << 20
    monkeypatch.setattr(profile_mod, "L2_SYSFS", tmp_path / "missing")
    assert profile_mod.private_cache_bytes() == 1 << 20  # the system does not say


def test_profile_meets_the_other_ranks_before_every_timed_call_it_flushes_for():
    """3 layers x (F, B, W) x 4 timed calls: 36 meetings (a barrier under torchrun), none for the warm-up calls;
    timed hot (no flush), none."""
    met = []
    profile_layers(MLPSpec((8, 6, 6, 3)), microbatch=4, repeats=4, warmup=2, together=lambda: met.append(1),
                   cold_cache_bytes=64 << 10)
    assert len(met) == 36
    met.clear()
    profile_layers(MLPSpec((8, 6, 6, 3)), microbatch=4, repeats=4, warmup=2, together=lambda: met.append(1),
                   cold_cache_bytes=0)
    assert met == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_profile_on_cuda_uses_events():
    prof = profile_layers(MLPSpec((1024, 4096, 4096, 1024)), microbatch=512, device="cuda", dtype="bfloat16")
    assert prof.device.startswith("cuda") and prof.device_name and all(c.total > 0 for c in prof.layers)
    assert prof.layers[1].f > prof.layers[0].f / 2  # 4096x4096 vs 1024x4096: at least comparable
