"""Memory model: hand-worked footprints, exact agreement with the bytes autograd saves on CPU, and the inference peak."""

import weakref

import pytest
import torch
from torch.autograd import Function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from partition.memory import (
    MemoryReport,
    inference_memory,
    plan_memory,
    stage_memory,
    training_memory,
)
from partition.spec import MLPSpec
from partition.units import format_bytes, parse_bytes
from runtime.ops.model import PipeModel, forward_layers, loss_term
from runtime.ops.wgrad import WeightGradStore

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def test_training_and_inference_by_hand():
    # widths 3 -> 4 -> 2, bias, float32, Adam, batch 10 (see test_cost for the per-layer numbers)
    train = training_memory(MLPSpec((3, 4, 2)), batch=10, dtype="float32", optimizer="adam")
    assert train == MemoryReport(parameters=104, gradients=104, optimizer=208, saved_activations=10 * (12 + 32))
    assert train.total == 856
    infer = inference_memory(MLPSpec((3, 4, 2)), batch=10, dtype="float32")
    # the input x (3) stays held while layer 0's z and h = relu(z) (4 + 4) are both live
    assert infer == MemoryReport(parameters=104, live_activations=10 * (3 + 4 + 4) * 4)
    assert infer.total < train.total


def test_stage_peaks_by_hand():
    spec = MLPSpec((3, 4, 2))
    first = stage_memory(spec, (0, 1), microbatch=10, inflight=2, deferred_w=1)
    # saved per microbatch: x (10*3*4) and the h(1) relu keeps (10*4*4); deferred: g(1); comm: dJ/dh(1) in
    assert first == MemoryReport(parameters=64, gradients=64, saved_activations=2 * (120 + 160),
                                 deferred_w=160, communication=160)
    last = stage_memory(spec, (1, 2), microbatch=10, optimizer="momentum", inflight=1)
    assert last == MemoryReport(parameters=40, gradients=40, optimizer=40, saved_activations=10 * 32, communication=160)
    assert plan_memory(spec, ((0, 1), (1, 2)), 10, inflight=(2, 1), deferred_w=(1, 0))[0] == first
    with pytest.raises(ValueError, match="layer range"):
        stage_memory(spec, (1, 1), microbatch=10)
    with pytest.raises(ValueError, match="per-stage"):
        plan_memory(spec, ((0, 2),), 10, inflight=(1, 1))


def test_byte_sizes_parse_and_print():
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1.5 GB") == 1_500_000_000 and parse_bytes("512") == 512
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3 GiB" and format_bytes(100) == "100 B"
    assert format_bytes(1010 * 2**10) == "1010 KiB" and format_bytes(12.34 * 2**20) == "12.3 MiB"
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("2 gigs")


def _saved_bytes(run, params):
    """Run ``run()`` under saved_tensors_hooks; bytes of the unique non-parameter storages saved for backward."""
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in param_storages:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()  # keeps the graph, hence every saved tensor, alive while we count
    return sum(seen.values()), result


class _Linear(Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x @ w.t() + b if b is not None else x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, g.t() @ x, g.sum(0)


class _Tanh(Function):
    @staticmethod
    def forward(ctx, z):
        h = torch.tanh(z)
        ctx.save_for_backward(h)
        return h

    @staticmethod
    def backward(ctx, g):
        (h,) = ctx.saved_tensors
        return g * (1 - h * h)


class _CrossEntropy(Function):
    @staticmethod
    def forward(ctx, o, y):
        ctx.save_for_backward(o, y)
        return (torch.logsumexp(o, 1) - o.gather(1, y[:, None])[:, 0]).mean()

    @staticmethod
    def backward(ctx, g):
        o, y = ctx.saved_tensors
        return (torch.softmax(o, 1) - torch.nn.functional.one_hot(y, o.shape[1]).to(o.dtype)) * g / len(o), None


def _reference_model(spec, dtype):
    torch.manual_seed(0)
    return [(torch.randn(o, i, dtype=dtype, requires_grad=True),
             torch.randn(o, dtype=dtype, requires_grad=True) if spec.bias else None)
            for o, i in (spec.layer_shape(layer) for layer in range(spec.num_layers))]


CASES = [((6, 9, 4, 3), True, 5, "float64"), ((7, 3, 8), False, 2, "float32"), ((4, 4, 4, 4, 5), True, 3, "bfloat16"),
         ((8, 16, 2), True, 1, "float16")]


@pytest.mark.parametrize("widths,bias,batch,dtype", CASES)
def test_memory_matches_bytes_saved_by_hand_written_functions(widths, bias, batch, dtype):
    spec = MLPSpec(widths, activation="tanh", bias=bias, loss="cross-entropy")
    params = _reference_model(spec, TORCH_DTYPES[dtype])
    x, y = torch.randn(batch, widths[0], dtype=TORCH_DTYPES[dtype]), torch.randint(0, widths[-1], (batch,))

    def objective():
        h = x
        for layer, (w, b) in enumerate(params):
            h = _Linear.apply(h, w, b)
            h = _Tanh.apply(h) if spec.has_activation(layer) else h
        return _CrossEntropy.apply(h, y)

    measured, _ = _saved_bytes(objective, [t for wb in params for t in wb if t is not None])
    assert measured == training_memory(spec, batch, dtype).saved_activations


@pytest.mark.parametrize("widths,bias,batch,dtype", CASES)
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_memory_matches_bytes_saved_by_torch_autograd_squared_error(widths, bias, batch, dtype, activation):
    # torch's own addmm/mm save the input, relu and sigmoid their result, mse_loss its input and target
    spec = MLPSpec(widths, activation=activation, bias=bias, loss="squared-error")
    params = _reference_model(spec, TORCH_DTYPES[dtype])
    x = torch.randn(batch, widths[0], dtype=TORCH_DTYPES[dtype])
    y = torch.randn(batch, widths[-1], dtype=TORCH_DTYPES[dtype])
    phi = torch.relu if activation == "relu" else torch.sigmoid

    def objective():
        h = x
        for layer, (w, b) in enumerate(params):
            h = torch.nn.functional.linear(h, w, b)
            h = phi(h) if spec.has_activation(layer) else h
        return torch.nn.functional.mse_loss(h, y)

    measured, _ = _saved_bytes(objective, [t for wb in params for t in wb if t is not None])
    assert measured == training_memory(spec, batch, dtype).saved_activations


@pytest.mark.parametrize("widths,bias,batch,dtype", CASES)
@pytest.mark.parametrize("loss", ["cross-entropy", "squared-error"])
def test_memory_matches_runtime_saved_bytes(widths, bias, batch, dtype, loss):
    spec = MLPSpec(widths, bias=bias, l2=0.01, loss=loss)
    model = PipeModel.from_spec(spec, seed=0, dtype=TORCH_DTYPES[dtype])
    x, y = torch.randn(batch, widths[0], dtype=TORCH_DTYPES[dtype]), torch.randint(0, widths[-1], (batch,))
    measured, objective = _saved_bytes(lambda: model.objective(x, y), list(model.parameters()))
    assert measured == training_memory(spec, batch, dtype).saved_activations
    objective.backward()  # the saved tensors really were enough


@pytest.mark.parametrize("start,stop", [(0, 2), (1, 3), (2, 4), (0, 4), (3, 4)])
def test_stage_memory_matches_runtime_stage_saved_and_deferred_bytes(start, stop):
    spec = MLPSpec((6, 9, 4, 7, 3), activation="sigmoid", loss="squared-error")
    model = PipeModel.from_spec(spec, seed=1, dtype=torch.float32)
    batch, store = 5, WeightGradStore()
    x = torch.randn(batch, spec.widths[start], requires_grad=start > 0)  # a received activation needs a gradient
    y = torch.randint(0, 3, (batch,))

    def stage_forward():
        out = forward_layers(spec, model.layer_params(start, stop), x, start, store)
        return loss_term(spec, out, y, batch) if stop == spec.num_layers else out

    measured, out = _saved_bytes(stage_forward, list(model.parameters()))
    report = stage_memory(spec, (start, stop), batch, "float32", inflight=1, deferred_w=1)
    assert measured == report.saved_activations
    out.backward(None if out.dim() == 0 else torch.ones_like(out))
    del out  # the graph goes; the store keeps, for W, every layer's g (the deferred buffers) and x (saved ones)
    assert len(store.pending) == stop - start

    def held(tensors):
        return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())

    assert held(item.g for item in store.pending) == report.deferred_w
    # B freed the stage's output h, or on the last stage o and the squared-error target (same size, float32)
    freed = spec.widths[stop] * batch * 4 * (1 if stop < spec.num_layers else 2)
    assert held(item.x for item in store.pending) == report.saved_activations - freed


def cuda_peak_vs_model(dtype):
    """(measured, predicted) peak bytes of a whole-model stage: 8 microbatches in flight (GPipe), Adam."""

    spec, batch, inflight = MLPSpec((2048, 8192, 8192, 8192, 2048)), 256, 8
    torch.cuda.empty_cache()
    start = torch.cuda.memory_allocated()
    model = PipeModel.from_spec(spec, seed=0, dtype=TORCH_DTYPES[dtype], device="cuda")
    optimizer = torch.optim.Adam(model.parameters(), foreach=False)

    def step():
        pending = []
        for _ in range(inflight):  # F of every microbatch; each keeps its saved tensors
            store = WeightGradStore()
            x = torch.randn(batch, spec.widths[0], device="cuda", dtype=TORCH_DTYPES[dtype])
            y = torch.randint(0, spec.widths[-1], (batch,), device="cuda")
            o = forward_layers(spec, model.layer_params(), x, 0, store)
            pending.append((loss_term(spec, o, y, batch * inflight), store))
        while pending:  # B then W, microbatch by microbatch
            loss, store = pending.pop(0)
            loss.backward()
            del loss
            store.flush()

    step()
    optimizer.step()  # now Adam's state exists; keep the gradients allocated, as the model counts them
    for p in model.parameters():
        p.grad.zero_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    measured = torch.cuda.max_memory_allocated() - start
    predicted = stage_memory(spec, (0, spec.num_layers), batch, dtype, "adam", inflight=inflight).total
    return measured, predicted


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stage_memory_within_5_percent_of_cuda_max_memory_allocated(dtype):
    measured, predicted = cuda_peak_vs_model(dtype)
    assert abs(measured - predicted) <= 0.05 * predicted, (measured, predicted)


def test_cold_cache_profile_has_the_same_shape_and_positive_times():
    from runtime.train.profile import profile_layers

    spec = MLPSpec((8, 16, 4))
    hot = profile_layers(spec, 4, repeats=2, warmup=1)
    cold = profile_layers(spec, 4, repeats=2, warmup=1, cold_cache_bytes=1 << 20)
    assert len(cold.layers) == len(hot.layers) == 2
    assert all(c.f > 0 and c.b > 0 and c.w > 0 for c in cold.layers)


class _LiveTracker(TorchDispatchMode):
    """Peak bytes of live tensors: every tensor an op returns is followed (by weak reference) until it dies;
    after each op the distinct storages still alive, plus the ``held`` ones, are summed."""

    def __init__(self, held, exclude):
        super().__init__()
        self.held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self.refs = []
        self.peak = sum(self.held.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.exclude:
                self.refs.append((weakref.ref(t), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        self.refs = [r for r in self.refs if r[0]() is not None]
        live = dict(self.held)
        live.update({ptr: nbytes for _, ptr, nbytes in self.refs})
        self.peak = max(self.peak, sum(live.values()))
        return out


@pytest.mark.parametrize("widths,expected", [((5, 7, 4), 2432), ((20, 7, 4), 4352), ((5, 9, 3, 6), None)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_inference_figure_matches_live_bytes_of_the_no_grad_forward(widths, expected, activation):
    spec = MLPSpec(widths, activation=activation)
    model = PipeModel.from_spec(spec, seed=0, dtype=torch.float64)
    x = torch.randn(16, widths[0], dtype=torch.float64)
    tracker = _LiveTracker(held=[x], exclude=list(model.parameters()))
    with torch.no_grad(), tracker:
        model(x)
    predicted = inference_memory(spec, 16, "float64").live_activations
    assert tracker.peak == predicted
    if expected is not None:  # the figures measured for the widths where layer 0 is wider, and narrower, than x
        assert predicted == expected
