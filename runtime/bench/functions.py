"""Benchmark `functions`: one forward + backward of the hand-derived Functions vs nn.Sequential under autograd.

Contenders, per width and dtype, all on the same seeded weights and batch (no optimizer update: it would
be the same on every side, and the GPU reference figure excludes it):

* ``autograd``: ``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU`` and torch's loss, plain autograd;
* ``compiled``: the same under ``torch.compile`` (reported as failed where it cannot compile);
* ``custom``: ``PipeModel`` (runtime.ops.functions' LinearFn/ActivationFn and the chapter's loss), weight gradient in B;
* ``custom-split``: the same with a ``WeightGradStore``: the backward defers dJ/dW, then one flush runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from partition.spec import MLPSpec
from runtime.bench.flops import describe_rate, device_peak, step_flops, throughput
from runtime.bench.models import Params, bench_spec, device_params, make_batch, reference_loss, reference_sequential
from runtime.bench.report import dtype_name, machine, ms, ratio
from runtime.bench.timing import Measured, Variant, measure, paired_ratio, release_memory
from runtime.ops.model import PipeModel, init_parameters, loss_term
from runtime.ops.wgrad import WeightGradStore
from runtime.output import text_table


@dataclass(frozen=True)
class FunctionsConfig:
    """Sizes and repetitions of the `functions` benchmark."""

    widths: tuple[int, ...] = (1024, 2048)
    layers: int = 4
    batch: int = 512
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    device: str = "cpu"
    warmup: int = 2
    repeats: int = 10
    compile: bool = True
    seed: int = 0


def _clear(params: list[torch.nn.Parameter]) -> Callable[[], None]:
    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


def _variants(cfg: FunctionsConfig, spec: MLPSpec, params: Params, dtype: torch.dtype, device: torch.device) -> list[Variant]:
    batch = make_batch(spec, cfg.batch, dtype, device)
    x, y = batch.x, batch.y
    ref = reference_loss(spec)
    seq = reference_sequential(spec, params, dtype, device)
    model = PipeModel(spec, device_params(params, dtype, device))
    seq_params, model_params = list(seq.parameters()), list(model.parameters())

    def autograd_step() -> torch.Tensor:
        loss = ref(seq(x), y)
        loss.backward()
        return loss.detach()

    def custom_step() -> torch.Tensor:
        loss = loss_term(spec, model(x), y, float(batch.rows))
        loss.backward()
        return loss.detach()

    def split_step() -> torch.Tensor:
        store = WeightGradStore()
        loss = loss_term(spec, model(x, store), y, float(batch.rows))
        loss.backward()
        store.flush()
        return loss.detach()

    out = [Variant("autograd", autograd_step, _clear(seq_params), "reference")]
    if cfg.compile:
        torch.compiler.reset()
        compiled = torch.compile(lambda a, b: ref(seq(a), b))

        def compiled_step() -> torch.Tensor:
            loss = compiled(x, y)
            loss.backward()
            return loss.detach()

        out.append(Variant("compiled", compiled_step, _clear(seq_params), "reference"))
    out += [Variant("custom", custom_step, _clear(model_params), "ours"),
            Variant("custom-split", split_step, _clear(model_params), "ours")]
    return out


def run_functions(cfg: FunctionsConfig, log: Callable[[str], None] = print,
                  partial: Callable[[dict], None] | None = None) -> dict:
    """Time every contender per width and dtype; returns the JSON-ready results (``table`` holds the text).

    ``partial`` gets the results so far after each width and dtype (to save them before a later part hangs).
    """
    device = torch.device(cfg.device)
    rows, results = [], []
    peaks = {dtype_name(d): (p.assumed if (p := device_peak(device, d)) else None) for d in cfg.dtypes}
    out = {"benchmark": "functions", "machine": machine(device), "peaks": peaks,
           "config": {"widths": list(cfg.widths), "layers": cfg.layers, "batch": cfg.batch,
                      "dtypes": [dtype_name(d) for d in cfg.dtypes], "warmup": cfg.warmup, "repeats": cfg.repeats,
                      "compile": cfg.compile, "step": "zero grads + forward + loss + backward (no optimizer update)"},
           "results": results}
    headers = ["width", "dtype", "variant", "step (median [p25-p75])", "achieved", "speedup vs autograd (paired)", "loss"]
    for width in cfg.widths:
        spec = bench_spec(width, cfg.layers)
        params = init_parameters(spec, cfg.seed)
        flops = step_flops(spec, cfg.batch)
        for dtype in cfg.dtypes:
            log(f"functions: width {width} x {cfg.layers} layers, batch {cfg.batch}, {dtype_name(dtype)} ...")
            measured = measure(_variants(cfg, spec, params, dtype, device), device, cfg.warmup, cfg.repeats)
            peak = device_peak(device, dtype)
            base = measured["autograd"]
            for m in measured.values():
                results.append(_row(m, base, width, dtype, flops, peak))
                r = results[-1]
                rows.append([width, dtype_name(dtype), m.name, ms(m.spread) if not m.error else f"failed: {m.error[:60]}",
                             describe_rate(r), ratio(r["speedup_vs_autograd"]), _loss_text(r["loss"])])
            torch.compiler.reset()
            release_memory(device)
            out["table"] = text_table(headers, rows)
            if partial is not None:
                partial(out)
    out["table"] = text_table(headers, rows)
    return out


def _row(m: Measured, base: Measured, width: int, dtype: torch.dtype, flops: int, peak: object) -> dict:
    spread = m.spread
    speed = paired_ratio(base, m) if m is not base and not m.error and not base.error else None
    return {"width": width, "dtype": dtype_name(dtype), "variant": m.name, "group": m.group, "error": m.error,
            "step_time": spread.to_json() if spread else None, "flops": flops,
            **throughput(flops, spread.median if spread else None, peak),
            "speedup_vs_autograd": speed.to_json() if speed else None,
            "loss": m.losses[0] if m.losses else None}


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.6g}"
