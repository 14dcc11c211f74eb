"""Profiler: measured F, B and W seconds per layer on a device (warm-up, CUDA events on GPU, medians), as JSON.

Each layer is timed with the runtime's own kernels (``runtime.ops.equations``, on the run's GEMM kernel,
``runtime.ops.gemm``, and the deferred weight gradient of ``runtime.ops.wgrad``), on random data:

* F: z = x W^T + b (one addmm, or oneDNN's linear), then h = phi(z) when an activation follows;
* B: g = dJ/dh * phi'(h) when an activation follows (threshold_backward for ReLU), then dJ/dx = g W (not on
  layer 0, whose input is data and needs no gradient);
* W: dJ/dW += g^T x (addmm_ into the gradient), dJ/db += sum_rows g.

By default the CPU caches are overwritten before every timed call with as many bytes as the whole step touches
(weights, gradients, a microbatch's activations), at least 16 MiB and at most 64 MiB: inside a pipeline the other
layers and stages run in between, so a large layer's weights come from memory (timed hot, layers of width 1024
come out 8-26% faster than a pipelined step runs them). A small model does not stay in cache either: between two
uses of a layer the rest of the step takes time, and in that time other work on the machine evicts it (on this
2-core VM with a 32 MiB last-level cache, a busy wait of 1.5 ms that touches no memory slows the next call of a
256-wide layer by 9%, one of 5 ms by 35%); inside a step such a layer runs as it does after a 16 MiB flush, not
after one of its own 1.8 MiB (``compare.py --quick``'s predictions were 4-15% low with the smaller flush, -3% to
+6% with the floor). These are the pieces
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
MIN_FLUSH_BYTES = 16 << 20  # the smallest default flush: what a step's other work evicts (module docstring)


def working_set_bytes(spec: MLPSpec, microbatch: int, itemsize: int) -> int:
    """The default flush size: the bytes a step touches between two uses of one layer (every layer's weights and
    their gradients, and one microbatch's input, output and gradient of each layer), at least MIN_FLUSH_BYTES and
    at most COLD_CACHE_BYTES."""
    total = 0
    for layer in range(spec.num_layers):
        out_f, in_f = spec.layer_shape(layer)
        total += 2 * out_f * (in_f + 1) + microbatch * (in_f + 2 * out_f)
    return flush_bytes(total * itemsize)


def flush_bytes(touched: int) -> int:
    """How many bytes to overwrite the CPU caches with before timing work whose data a step last used
    ``touched`` bytes ago: at least MIN_FLUSH_BYTES, at most COLD_CACHE_BYTES (see the module docstring)."""
    return min(max(touched, MIN_FLUSH_BYTES), COLD_CACHE_BYTES)


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

    With ``flush`` (a buffer larger than the last-level cache) the CPU caches are overwritten before each
    timed call, so the layer's weights come from memory, as they do in a pipeline whose other layers ran
    in between. ``together`` is called right before each timed call (after the flush).
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
            if flush is not None:
                flush.add_(1)
            together()
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
    a pipelined step does between two uses of a layer; None (the default) flushes the step's working set
    (``working_set_bytes``: 16-64 MiB); 0 keeps the layer's tensors hot across repeats (a layer alone in a loop).
    ``together`` runs right before every timed call on the CPU: under torchrun a barrier, so that every rank's timed
    calls run at once, sharing the caches and the memory bandwidth as the ranks of a pipelined step do (measured
    here at width 1024: a layer's B + W 7-13% slower beside another process's GEMMs than alone).
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
        cold_cache_bytes = working_set_bytes(spec, microbatch, torch.finfo(torch_dtype).bits // 8)
    flush = torch.zeros(cold_cache_bytes // 4, dtype=torch.float32) if cold_cache_bytes > 0 and dev.type == "cpu" else None
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
            layers.append(StageCost(*(_median_seconds(fn, dev, repeats, warmup, flush, together)
                                      for fn in (forward, backward_input, weight_grad.run))))
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return Profile(device=str(dev), dtype=name, microbatch=microbatch, layers=tuple(layers),
                   widths=tuple(spec.widths), device_name=device_name,
                   cold_cache_bytes=cold_cache_bytes if flush is not None else 0)
