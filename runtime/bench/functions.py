"""Benchmark `functions`: one forward + backward of the hand-derived Functions vs nn.Sequential under autograd.

Contenders, per width and dtype, all on the same seeded weights and batch (no optimizer update: it would
be the same on every side, and the GPU reference figure excludes it):

* ``autograd``: ``nn.Sequential`` of ``nn.Linear`` + ``nn.ReLU`` and torch's loss, plain autograd;
* ``compiled``: the same under ``torch.compile`` (reported as failed where it cannot compile);
* ``custom``: ``PipeModel`` (runtime.ops.functions' LinearFn/ActivationFn and the chapter's loss), weight gradient in B;
* ``custom-split``: the same with a ``WeightGradStore``: the backward defers dJ/dW, then one flush runs it.

After the timed steps every contender's loss and gradients are checked against float64 (runtime.bench.equal_math).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from partition.cost import step_flops
from partition.spec import MLPSpec
from runtime.bench import equal_math
from runtime.bench.contenders import Grads, module_grads
from runtime.bench.flops import describe_rate, device_peak, throughput
from runtime.bench.models import Batch, Params, bench_spec, device_params, make_batch, reference_loss, reference_sequential
from runtime.bench.report import dtype_name, machine, ms, ratio
from runtime.bench.rows import math_cell
from runtime.bench.timing import Group, Measured, Variant, measure, paired_ratio, release_memory
from runtime.ops.model import PipeModel, init_parameters, loss_term
from runtime.ops.wgrad import WeightGradStore
from runtime.output import text_table

STEP = "zero grads + forward + loss + backward, all timed (no optimizer update)"


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


def _zeroed(params: list[torch.nn.Parameter], run: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``run`` after setting the gradients to None, both inside the timed step."""

    def step() -> torch.Tensor:
        for p in params:
            p.grad = None
        return run()

    return step


def _variants(cfg: FunctionsConfig, spec: MLPSpec, params: Params, dtype: torch.dtype, batch: Batch) -> list[Variant]:
    x, y, device = batch.x, batch.y, batch.x.device
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

    seq_grads = module_grads([(0, seq)])

    def model_grads() -> Grads:
        out: Grads = {}
        for layer, (w, b) in enumerate(model.layer_params()):
            out[(layer, "w")] = w.grad
            if b is not None:
                out[(layer, "b")] = b.grad
        return out

    out = [Variant("autograd", _zeroed(seq_params, autograd_step), group=Group.BASELINE, grads=seq_grads)]
    if cfg.compile:
        torch.compiler.reset()
        compiled = torch.compile(lambda a, b: ref(seq(a), b))

        def compiled_step() -> torch.Tensor:
            loss = compiled(x, y)
            loss.backward()
            return loss.detach()

        out.append(Variant("compiled", _zeroed(seq_params, compiled_step), group=Group.BASELINE, grads=seq_grads))
    out += [Variant("custom", _zeroed(model_params, custom_step), grads=model_grads),
            Variant("custom-split", _zeroed(model_params, split_step), grads=model_grads)]
    return out


def run_functions(cfg: FunctionsConfig, log: Callable[[str], None] = print,
                  partial: Callable[[dict], None] | None = None) -> dict:
    """Time every contender per width and dtype; returns the JSON-ready results (``table`` holds the text).

    ``partial`` gets the results so far after each width and dtype (to save them before a later part hangs).
    """
    device = torch.device(cfg.device)
    results: list[dict] = []
    peaks = {dtype_name(d): (p.assumed if (p := device_peak(device, d)) else None) for d in cfg.dtypes}
    out = {"benchmark": "functions", "machine": machine(device), "peaks": peaks,
           "config": {"widths": list(cfg.widths), "layers": cfg.layers, "batch": cfg.batch,
                      "dtypes": [dtype_name(d) for d in cfg.dtypes], "warmup": cfg.warmup, "repeats": cfg.repeats,
                      "compile": cfg.compile, "step": STEP},
           "results": results}
    for width in cfg.widths:
        spec = bench_spec(width, cfg.layers)
        params = init_parameters(spec, cfg.seed)
        flops = step_flops(spec, cfg.batch)
        for dtype in cfg.dtypes:
            log(f"functions: width {width} x {cfg.layers} layers, batch {cfg.batch}, {dtype_name(dtype)} ...")
            batch = make_batch(spec, cfg.batch, dtype, device)
            variants = _variants(cfg, spec, params, dtype, batch)
            measured = measure(variants, device, cfg.warmup, cfg.repeats)
            checks = equal_math.check_all(variants, *equal_math.reference(spec, params, batch.x, batch.y), dtype,
                                          skip={n for n, r in measured.items() if r.error})
            del variants
            peak = device_peak(device, dtype)
            base = measured["autograd"]
            results += [_row(m, base, width, dtype, flops, peak) | {"math": checks[m.name].to_json() if m.name in checks
                                                                    else None} for m in measured.values()]
            torch.compiler.reset()
            release_memory(device)
            out["table"] = table_text(out)
            if partial is not None:
                partial(out)
    out["table"] = table_text(out)
    return out


def table_text(result: dict) -> str:
    """The `functions` table, from the result's JSON alone."""
    body = [[r["width"], r["dtype"], r["variant"], ms(r["step_time"]) if not r["error"] else f"failed: {r['error'][:60]}",
             describe_rate(r), ratio(r["speedup_vs_autograd"]), _loss_text(r["loss"]), math_cell(r)]
            for r in result["results"]]
    return text_table(["width", "dtype", "variant", "step (median [p25-p75])", "achieved", "speedup vs autograd (paired)",
                       "loss", "math"], body)


def _row(m: Measured, base: Measured, width: int, dtype: torch.dtype, flops: int, peak: object) -> dict:
    spread = m.spread
    speed = paired_ratio(base, m) if m is not base and not m.error and not base.error else None
    return {"width": width, "dtype": dtype_name(dtype), "variant": m.name, "group": m.group.value, "error": m.error,
            "step_time": spread.to_json() if spread else None, "flops": flops,
            **throughput(flops, spread.median if spread else None, peak),
            "speedup_vs_autograd": speed.to_json() if speed else None,
            "loss": m.losses[0] if m.losses else None}


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.6g}"
