"""PipeModel: seeded initialisation and the nn.Sequential round trip."""

import pytest
import torch
from torch import nn

from partition.spec import MLPSpec
from runtime.ops.model import PipeModel


def test_seeded_init_is_reproducible_and_dtype_independent():
    spec = MLPSpec((5, 7, 3))
    a = PipeModel.from_spec(spec, seed=4, dtype=torch.float64)
    b = PipeModel.from_spec(spec, seed=4, dtype=torch.float64)
    c = PipeModel.from_spec(spec, seed=5, dtype=torch.float64)
    f32 = PipeModel.from_spec(spec, seed=4, dtype=torch.float32)
    for pa, pb, pc, pf in zip(a.parameters(), b.parameters(), c.parameters(), f32.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)
        assert torch.equal(pa.to(torch.float32), pf)
    bound = 1 / 5**0.5
    assert a.weights[0].abs().max() <= bound


@pytest.mark.parametrize("act,bias", [("relu", True), ("tanh", False), ("sigmoid", True)])
def test_sequential_round_trip_is_bit_identical(act, bias):
    torch.manual_seed(0)
    mod = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[act]
    seq = nn.Sequential(nn.Linear(6, 9, bias=bias), mod(), nn.Linear(9, 4, bias=bias), mod(), nn.Linear(4, 2, bias=bias))
    model = PipeModel.from_sequential(seq)
    assert model.spec.widths == (6, 9, 4, 2)
    assert model.spec.activation.value == act and model.spec.bias_name == ("all" if bias else "none")
    back = model.to_sequential()
    for p, q in zip(seq.parameters(), back.parameters()):
        assert torch.equal(p, q)
    x = torch.randn(3, 6)
    assert torch.equal(seq(x), back(x))
    assert torch.allclose(model(x), seq(x), atol=1e-6)


def test_from_sequential_rejects_other_modules():
    with pytest.raises(ValueError, match="activation"):
        PipeModel.from_sequential(nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="model"):
        PipeModel.from_sequential(nn.Sequential(nn.ReLU()))


def test_sequential_with_a_bias_on_some_layers_round_trips():
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 4, bias=False), nn.Tanh(), nn.Linear(4, 2))
    model = PipeModel.from_sequential(seq)
    assert model.spec.bias_name == "0,2"
    assert [b is None for _, b in model.layer_params()] == [False, True, False]
    back = model.to_sequential()
    assert [m.bias is None for m in back if isinstance(m, nn.Linear)] == [False, True, False]
    x = torch.randn(3, 6)
    assert torch.equal(seq(x), back(x))
