"""Run one benchmark from its configuration: time it, print its table and verdicts, write its JSON."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch

from runtime.bench.contenders import Peer
from runtime.bench.contention import ContentionConfig, run_contention
from runtime.bench.dist import DistBenchConfig, run_dist_bench
from runtime.bench.functions import FunctionsConfig, run_functions
from runtime.bench.gemms import GemmBenchConfig, run_gemm_bench
from runtime.bench.models import bench_spec
from runtime.bench.pipeline import PipelineBenchConfig, run_pipeline_bench
from runtime.bench.report import machine
from runtime.bench.sim import SimBenchConfig, run_sim_bench
from runtime.bench.verdict import verdicts
from runtime.comm import launched_by_torchrun
from runtime.output import write_json
from runtime.threads import ThreadChoice, apply_threads, choose_for_model, parse_threads
from runtime.train.layout import check_device

BenchConfig = FunctionsConfig | PipelineBenchConfig | DistBenchConfig | SimBenchConfig | GemmBenchConfig | ContentionConfig


def bench_threads(cfg: BenchConfig, text: str) -> ThreadChoice:
    """``--threads`` for this benchmark (runtime.threads' rule, probed on its model), applied to torch."""
    if isinstance(cfg, ContentionConfig):
        return ThreadChoice(torch.get_num_threads(), "the training command chooses its own")
    if isinstance(cfg, FunctionsConfig):
        spec, batch, m = bench_spec(max(cfg.widths), cfg.layers), cfg.batch, 1
    elif isinstance(cfg, GemmBenchConfig):
        spec, batch, m = bench_spec(cfg.width, 1), cfg.batch, cfg.microbatches
    else:
        spec, batch, m = bench_spec(cfg.width, cfg.layers), cfg.batch, cfg.microbatches
    return apply_threads(choose_for_model(parse_threads(text), launched_by_torchrun(), spec, batch, m, cfg.device))


def _measure(cfg: BenchConfig, peers: Mapping[str, Peer], partial: Callable[[dict], None],
             train_command: Sequence[str]) -> dict:
    if isinstance(cfg, FunctionsConfig):
        return run_functions(cfg, partial=partial)
    if isinstance(cfg, GemmBenchConfig):
        return run_gemm_bench(cfg)
    if isinstance(cfg, ContentionConfig):
        return run_contention(cfg, train_command)
    if isinstance(cfg, PipelineBenchConfig):
        return run_pipeline_bench(cfg, peers, partial=partial)
    if isinstance(cfg, DistBenchConfig):
        if not launched_by_torchrun():
            raise ValueError("dist: run it under torchrun, e.g. torchrun --nproc_per_node=2 scripts/bench.py dist")
        return run_dist_bench(cfg, peers)
    return run_sim_bench(cfg)


def run_bench(cfg: BenchConfig, peers: Mapping[str, Peer], threads: ThreadChoice, json_path: str | None = None,
              train_command: Sequence[str] = (), log: Callable[[str], None] = print) -> dict | None:
    """Measure, add the verdicts, print table and verdicts and write the JSON (on rank 0 only under torchrun).

    ``train_command`` starts the training command (the `contention` benchmark runs it). Returns the results,
    or None on the other ranks.
    """
    result = _measure(cfg, peers, lambda r: write_json(json_path, r), train_command)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    result.setdefault("machine", machine(torch.device("cpu")))["threads"] = {
        "torch_threads": torch.get_num_threads(), "chosen": threads.threads, "reason": threads.reason}
    result["verdicts"] = verdicts(result)
    log(result["table"])
    for line in result["verdicts"]:
        log(line)
    write_json(json_path, result)
    return result


def setup_device(device: str, tf32: bool) -> str:
    """Apply ``--tf32``, give ``cuda`` one explicit index (every contender on it; pipelining compares devices),
    and check the device exists (under torchrun each rank picks its own GPU instead)."""
    if tf32:
        torch.set_float32_matmul_precision("high")
    if device == "cuda" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.current_device()}"
    if not launched_by_torchrun():
        check_device(device)
    return device
