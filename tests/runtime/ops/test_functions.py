"""Hand-derived Functions: gradcheck/gradgradcheck, the chapter's example by hand, deferred W."""

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from partition.spec import Activation, Loss, MLPSpec
from runtime.ops.functions import L2Fn, LossFn, activation, l2_term, linear
from runtime.ops.model import PipeModel, loss_term
from runtime.ops.wgrad import WeightGradStore

F64 = torch.float64


def rnd(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).requires_grad_(True)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 4, 3), (7, 2, 6)])
def test_linear_gradcheck_and_gradgradcheck(bias, shape):
    n, d, h = shape
    x, w = rnd(n, d, seed=1), rnd(h, d, seed=2)
    b = rnd(h, seed=3) if bias else None
    args = (x, w, b) if bias else (x, w)
    fn = (lambda x, w, b: linear(x, w, b)) if bias else (lambda x, w: linear(x, w))
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


@pytest.mark.parametrize("kind", list(Activation))
def test_activation_gradchecks(kind):
    z = rnd(6, 5, seed=4)
    with torch.no_grad():  # keep ReLU away from its kink
        z += torch.sign(z) * 0.1
    assert gradcheck(lambda z: activation(z, kind), (z,))
    assert gradgradcheck(lambda z: activation(z, kind), (z,))


def test_losses_and_l2_gradchecks():
    o = rnd(6, 4, seed=5)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    t = rnd(6, 4, seed=6)
    assert gradcheck(lambda o: LossFn.apply(o, y, 6.0, Loss.CROSS_ENTROPY), (o,))
    assert gradgradcheck(lambda o: LossFn.apply(o, y, 6.0, Loss.CROSS_ENTROPY), (o,))
    assert gradcheck(lambda o, t: LossFn.apply(o, t, 3.0, Loss.SQUARED_ERROR), (o, t))
    assert gradgradcheck(lambda o, t: LossFn.apply(o, t, 3.0, Loss.SQUARED_ERROR), (o, t))
    w1, w2 = rnd(3, 2, seed=7), rnd(2, 3, seed=8)
    assert gradcheck(lambda a, b: L2Fn.apply(0.37, a, b), (w1, w2))
    assert gradgradcheck(lambda a, b: L2Fn.apply(0.37, a, b), (w1, w2))


def test_loss_values_match_torch():
    o = rnd(6, 4, seed=9)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    ce = LossFn.apply(o, y, 6.0, Loss.CROSS_ENTROPY)
    assert torch.allclose(ce, nn.functional.cross_entropy(o, y), atol=1e-14)
    t = rnd(6, 4, seed=10)
    se = LossFn.apply(o, t, 6.0, Loss.SQUARED_ERROR)
    assert torch.allclose(se, 0.5 * nn.functional.mse_loss(o, t, reduction="sum") / 6, atol=1e-14)
    assert torch.allclose(l2_term(0.5, [o, t]), 0.25 * (o.pow(2).sum() + t.pow(2).sum()), atol=1e-14)


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_chapter_example_by_hand(act):
    """One hidden layer, no bias, l2 on: the chapter's four equations, computed by hand here."""
    d, h, q, n, lam = 5, 4, 3, 6, 0.3
    spec = MLPSpec((d, h, q), activation=act, bias=False, l2=lam)
    model = PipeModel.from_spec(spec, seed=3, dtype=F64)
    x = rnd(n, d, seed=11).detach()
    y = torch.tensor([0, 2, 1, 1, 0, 2])
    model.objective(x, y).backward()

    w1, w2 = (w.detach() for w in model.weights)
    z = x @ w1.T
    phi = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[act]
    hid = phi(z)
    o = hid @ w2.T
    dphi = {"relu": (z > 0).to(F64), "tanh": 1 - torch.tanh(z) ** 2, "sigmoid": torch.sigmoid(z) * (1 - torch.sigmoid(z))}[act]
    dj_do = (torch.softmax(o, 1) - nn.functional.one_hot(y, q).to(F64)) / n  # dJ/dL = 1, mean over rows
    dj_dw2 = dj_do.T @ hid + lam * w2  # dJ/dW2 = dJ/do h^T + lambda W2 (rows are examples)
    dj_dh = dj_do @ w2  # dJ/dh = W2^T dJ/do
    dj_dz = dj_dh * dphi  # dJ/dz = dJ/dh (.) phi'(z)
    dj_dw1 = dj_dz.T @ x + lam * w1  # dJ/dW1 = dJ/dz x^T + lambda W1
    assert torch.allclose(model.weights[1].grad, dj_dw2, rtol=0, atol=1e-14)
    assert torch.allclose(model.weights[0].grad, dj_dw1, rtol=0, atol=1e-14)

    seq = model.to_sequential()
    out = seq(x)
    ref = nn.functional.cross_entropy(out, y) + lam / 2 * sum(m.weight.pow(2).sum() for m in seq if isinstance(m, nn.Linear))
    ref.backward()
    assert torch.allclose(seq[2].weight.grad, dj_dw2, rtol=0, atol=1e-14)
    assert torch.allclose(seq[0].weight.grad, dj_dw1, rtol=0, atol=1e-14)


@pytest.mark.parametrize("loss", ["cross-entropy", "squared-error"])
@pytest.mark.parametrize("bias", [True, False])
def test_deep_model_matches_autograd_and_deferred_store(loss, bias):
    spec = MLPSpec((7, 13, 5, 11, 3, 9, 4), activation="tanh", bias=bias, l2=0.01, loss=loss)
    x = rnd(10, 7, seed=12).detach()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    model = PipeModel.from_spec(spec, seed=5, dtype=F64)
    seq = model.to_sequential()
    out = seq(x)
    if loss == "cross-entropy":
        data_loss = nn.functional.cross_entropy(out, y)
    else:
        data_loss = 0.5 * (out - nn.functional.one_hot(y, 4).to(F64)).pow(2).sum(1).mean()
    lins = [m for m in seq if isinstance(m, nn.Linear)]
    (data_loss + 0.005 * sum(m.weight.pow(2).sum() for m in lins)).backward()

    model.objective(x, y).backward()
    for w, m in zip(model.weights, lins):
        assert torch.allclose(w.grad, m.weight.grad, rtol=0, atol=1e-12)
    if bias:
        for b, m in zip(model.biases, lins):
            assert torch.allclose(b.grad, m.bias.grad, rtol=0, atol=1e-12)

    deferred = PipeModel.from_spec(spec, seed=5, dtype=F64)
    store = WeightGradStore()
    o = deferred(x, store)

    loss_term(spec, o, y, 10.0).backward()
    assert all(w.grad is None for w in deferred.weights), "B must not touch weight gradients"
    assert len(store) == spec.num_layers
    store.flush()
    deferred.regularizer().backward()
    for w, ref in zip(deferred.weights, model.weights):
        assert torch.allclose(w.grad, ref.grad, rtol=0, atol=1e-12)


def test_fused_flush_equals_separate_flushes():
    spec = MLPSpec((6, 8, 3), bias=True)
    a, b = PipeModel.from_spec(spec, seed=1, dtype=F64), PipeModel.from_spec(spec, seed=1, dtype=F64)
    stores_a, stores_b = [], []
    for k in range(3):
        x = rnd(4, 6, seed=20 + k).detach()
        y = torch.tensor([0, 1, 2, 1])
        for model, stores in ((a, stores_a), (b, stores_b)):
            st = WeightGradStore()

            loss_term(spec, model(x, st), y, 12.0).backward()
            stores.append(st)
    for st in stores_a:
        st.flush()
    WeightGradStore.flush_fused(stores_b)
    assert all(len(s) == 0 for s in stores_b)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=0, atol=1e-14)


def test_half_precision_losses_sum_in_float32():
    """A float16 sum of 30,000 per-row losses overflows; the loss accumulates in float32 instead."""
    g = torch.Generator().manual_seed(0)
    o = torch.randn(30000, 10, generator=g)
    y = torch.randint(0, 10, (30000,), generator=g)
    ref = LossFn.apply(o, y, 30000.0, Loss.CROSS_ENTROPY)
    half = LossFn.apply(o.half(), y, 30000.0, Loss.CROSS_ENTROPY)
    assert torch.isfinite(half) and abs(half.item() - ref.item()) < 1e-2
    t = torch.randn(30000, 10, generator=g)
    se_ref = LossFn.apply(o, t, 30000.0, Loss.SQUARED_ERROR)
    se_half = LossFn.apply(o.half(), t.half(), 30000.0, Loss.SQUARED_ERROR)
    assert torch.isfinite(se_half) and abs(se_half.item() - se_ref.item()) < 2e-2


def test_squared_error_takes_one_float_target_per_row():
    spec = MLPSpec((4, 5, 1), "tanh", True, 0.0, "squared-error")
    model = PipeModel.from_spec(spec, seed=0, dtype=F64)
    x, y = rnd(8, 4, seed=30).detach(), rnd(8, seed=31).detach()
    j = model.objective(x, y)
    ref = 0.5 * (model.to_sequential()(x).squeeze(1) - y).pow(2).mean()
    assert torch.allclose(j, ref, rtol=0, atol=1e-14)
