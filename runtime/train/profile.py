"""Profiler: measured F, B and W seconds per layer on a device (warm-up, CUDA events on GPU, medians), as JSON.

Each layer is timed with the runtime's own kernels (``runtime.ops.equations``, on the run's GEMM kernel,
``runtime.ops.gemm``, and the deferred weight gradient of ``runtime.ops.wgrad``), on random data:

* F: z = x W^T + b (one addmm, or oneDNN's linear), then h = phi(z) when an activation follows;
* B: g = dJ/dh * phi'(h) when an activation follows (threshold_backward for ReLU), then dJ/dx = g W (not on
  layer 0, whose input is data and needs no gradient);
* W: dJ/dW += g^T x (addmm_ into the gradient), dJ/db += sum_rows g.

By default the CPU caches are overwritten before every timed call (``flush_bytes``) as the rest of a pipelined step
overwrites them between two uses of a layer. A step touches its working set in between (weights, gradients, a
microbatch's activations: ``working_set_bytes``); one that fits in a core's own cache (its L2) stays there, and is
flushed with its own size. A larger one lives in the last-level cache, shared with everything else on the machine,
which evicts it as time passes: on this 2-core VM (1 MiB L2 per core, 32 MiB shared L3) a busy wait of 1.5 ms that
touches no memory slows the next call of a 256-wide layer by 9%, one of 5 ms by 35%, and inside a step the layers
of a 1.8 MiB model ran as after a 16 MiB flush, not after one of 1.8 MiB. Such a working set is flushed with 8
times its size (at most 64 MiB, which leaves a large model's weights to come from memory: timed hot, layers of
width 1024 come out 8-26% faster than a pipelined step runs them). ``compare.py --quick``'s predictions were
4-15% low with the working set's own size, within 6% with 8 times it (``BENCHMARKS.md`` section 7). These are the pieces
``partition.cost`` counts FLOPs for, so a profile can replace FLOP-based times.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from partition.cost import as_dtype
from partition.spec import MLPSpec
from partition.timing import StageCost
from runtime.ops.equations import activation_backward, activation_forward, linear_forward, linear_grad_input
from runtime.ops.gemm import Gemm
from runtime.ops.wgrad import DeferredGrad
from runtime.output import write_json

COLD_CACHE_BYTES = 64 << 20  # the largest flush buffer: twice a 32 MiB last-level cache
SHARED_FACTOR = 8  # a working set beyond a core's own cache is flushed with this many times its size (module docstring)
L2_SYSFS = Path("/sys/devices/system/cpu/cpu0/cache")


def working_set_bytes(spec: MLPSpec, microbatch: int, itemsize: int) -> int:
    """The bytes a step touches between two uses of one layer: every layer's weights and their gradients, and one
    microbatch's input, output and gradient of each layer (``flush_bytes`` of it is the default flush)."""
    total = 0
    for layer in range(spec.num_layers):
        out_f, in_f = spec.layer_shape(layer)
        total += 2 * out_f * (in_f + 1) + microbatch * (in_f + 2 * out_f)
    return total * itemsize


def flush_bytes(touched: int, private: int | None = None) -> int:
    """How many bytes to overwrite the CPU caches with before timing work whose data a step last used ``touched``
    bytes ago: ``touched`` when it fits in ``private`` (a core's own cache, default ``private_cache_bytes``), else
    SHARED_FACTOR times it; at most COLD_CACHE_BYTES (see the module docstring)."""
    return min(SHARED_FACTOR * touched if beyond_own_cache(touched, private) else touched, COLD_CACHE_BYTES)


def beyond_own_cache(touched: int, private: int | None = None) -> bool:
    """Whether ``touched`` bytes outgrow a core's own cache (``private``, default ``private_cache_bytes``): then they
    live in the cache the whole machine shares (see the module docstring)."""
    return touched > (private_cache_bytes() if private is None else private)


def private_cache_bytes() -> int:
    """The size of one core's own unified cache (its L2, from Linux's sysfs); 1 MiB where the system does not say."""
    for index in sorted(L2_SYSFS.glob("index*")) if L2_SYSFS.is_dir() else ():
        try:
            if (index / "level").read_text().strip() == "2" and (index / "type").read_text().strip() == "Unified":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
        except (OSError, ValueError):
            continue
    return 1 << 20


@dataclass(frozen=True)
class Profile:
    """Measured per-layer seconds for one microbatch of ``microbatch`` samples of a model of ``widths``."""

    device: str
    dtype: str
    microbatch: int
    layers: tuple[StageCost, ...]
    widths: tuple[int, ...] = ()
    device_name: str = ""
    cold_cache_bytes: int = 0  # > 0: timed with the CPU caches flushed before every call (the pipelined regime)

    def save(self, path: str | Path) -> None:
        """Write this profile as JSON."""
        data = {"device": self.device, "device_name": self.device_name, "dtype": self.dtype,
                "microbatch": self.microbatch, "widths": list(self.widths), "cold_cache_bytes": self.cold_cache_bytes,
                "layers": [{"f": c.f, "b": c.b, "w": c.w} for c in self.layers]}
        write_json(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile written by :meth:`save`; ValueError names what is missing or malformed."""
        try:
            data = json.loads(Path(path).read_text())
            return cls(device=str(data["device"]), dtype=str(data["dtype"]), microbatch=int(data["microbatch"]),
                       layers=tuple(StageCost(float(c["f"]), float(c["b"]), float(c["w"])) for c in data["layers"]),
                       widths=tuple(int(w) for w in data.get("widths", ())),
                       device_name=str(data.get("device_name", "")),
                       cold_cache_bytes=int(data.get("cold_cache_bytes", 0)))
        except OSError as err:
            raise ValueError(f"profile: cannot read {path}: {err.strerror}") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"profile: {path} is not a profile written by Profile.save ({err!r})") from None

    def check(self, spec: MLPSpec, microbatch: int) -> None:
        """ValueError unless this profile was measured for ``spec``'s widths at ``microbatch`` samples."""
        if self.widths and tuple(self.widths) != tuple(spec.widths):
            raise ValueError(f"profile: measured for widths {list(self.widths)}, not {list(spec.widths)}")
        if len(self.layers) != spec.num_layers:
            raise ValueError(f"profile: has {len(self.layers)} layers, the model {spec.num_layers}")
        if self.microbatch != microbatch:
            raise ValueError(f"profile: measured at microbatch {self.microbatch}, not {microbatch}; profile again")


def _median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int,
                    flush: torch.Tensor | None = None, together: Callable[[], None] = lambda: None) -> float:
    """Median wall time of ``fn`` (CUDA events on a GPU, perf_counter on the CPU) after ``warmup`` calls.

    With ``flush`` (``flush_bytes``) the CPU caches are overwritten before each timed call, as a pipeline's other
    work overwrites them between two uses of a layer. ``together`` is called before each timed call's flush.
    """
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            samples.append(start.elapsed_time(stop) / 1000.0)
    else:
        for _ in range(repeats):
            together()
            if flush is not None:
                flush.add_(1)
            begin = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def profile_layers(
    spec: MLPSpec,
    microbatch: int,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 10,
    warmup: int = 3,
    seed: int = 0,
    cold_cache_bytes: int | None = None,
    gemm: Gemm = Gemm.TORCH,
    together: Callable[[], None] = lambda: None,
) -> Profile:
    """Measure F, B and W seconds of every layer of ``spec`` for one microbatch (see module docstring).

    ``cold_cache_bytes`` > 0 (CPU only) overwrites that many bytes of cache before every timed call, as the rest of
    a pipelined step does between two uses of a layer; None (the default) flushes ``flush_bytes`` of the step's
    working set (``working_set_bytes``: itself within a core's own cache, 8 times it beyond); 0 keeps the layer's
    tensors hot across repeats (a layer alone in a loop).
    ``together`` runs before every timed call's flush on the CPU (with a flush): under torchrun a barrier where the
    working set lies beyond a core's own cache (``runtime.calibrate.build.profile_together``), so that every rank's
    timed calls run at once, sharing the caches and the memory bandwidth as the ranks of a pipelined step do
    (measured at width 1024: a layer's B + W 7-13% slower beside another process's GEMMs than alone; within the
    core's own cache the ranks share nothing, and there the wake from a barrier tripled a 64-wide layer's time).
    """
    if microbatch < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"microbatch/repeats/warmup: expected >= 1, >= 1, >= 0, got {microbatch}, {repeats}, {warmup}")
    name = as_dtype(dtype).value
    torch_dtype = getattr(torch, name)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but CUDA is not available here")
    gen = torch.Generator(device=dev).manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=dev, dtype=torch_dtype)

    kind = spec.activation
    if cold_cache_bytes is None:
        cold_cache_bytes = flush_bytes(working_set_bytes(spec, microbatch, torch.finfo(torch_dtype).bits // 8))
    flush = torch.zeros(cold_cache_bytes // 4, dtype=torch.float32) if cold_cache_bytes > 0 and dev.type == "cpu" else None
    meet = together if flush is not None else lambda: None
    layers = []
    with torch.no_grad():
        for layer in range(spec.num_layers):
            out_f, in_f = spec.layer_shape(layer)
            x, g_h = rand(microbatch, in_f), rand(microbatch, out_f)
            w = torch.nn.Parameter(rand(out_f, in_f))
            b = torch.nn.Parameter(rand(out_f)) if spec.layer_has_bias(layer) else None
            for p in (w, b):  # accumulated into, as from the second microbatch of a step on
                if p is not None:
                    p.grad = torch.zeros_like(p)
            act = spec.has_activation(layer)
            h = activation_forward(kind, linear_forward(x, w, b, gemm)) if act else None

            def forward(x=x, w=w, b=b, act=act) -> torch.Tensor:
                z = linear_forward(x, w, b, gemm)
                return activation_forward(kind, z) if act else z

            def backward_input(g_h=g_h, h=h, w=w, first=layer == 0) -> torch.Tensor | None:
                g = activation_backward(kind, g_h, h) if h is not None else g_h
                return g if first else linear_grad_input(g, w, gemm)

            weight_grad = DeferredGrad(w, b, g_h, x)
            layers.append(StageCost(*(_median_seconds(fn, dev, repeats, warmup, flush, meet)
                                      for fn in (forward, backward_input, weight_grad.run))))
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Profile(device=str(dev), dtype=name, microbatch=microbatch, layers=tuple(layers),
                   widths=tuple(spec.widths), device_name=device_name,
                   cold_cache_bytes=cold_cache_bytes if flush is not None else 0)
