"""Training: data, per-stage optimizers, one schedule flush per step, metrics, checkpoints, resume."""

from __future__ import annotations

import os
import signal
import statistics
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, replace

import torch

from partition.schedule.actions import format_table
from runtime.calibrate.run import predict_run, state_kind
from runtime.comm import (
    Backend,
    DistTransport,
    LocalTransport,
    all_reduce_sum,
    barrier,
    init_world,
    launched_by_torchrun,
    shutdown,
)
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.ops.model import forward_layers
from runtime.train import checkpoint as ckpt
from runtime.train import ckpt_guard, ckpt_state
from runtime.train.config import OptimizerKind, TrainConfig
from runtime.train.datasets import Dataset, load_dataset
from runtime.train.layout import check_device, resolve_devices, resolve_ranges
from runtime.train.measure import step_figures
from runtime.train.progress import ProgressBar

RECENT_STEPS = 32  # steps whose action records give the measured per-action times


def optimizer_factory(cfg: TrainConfig) -> Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]:
    """Build the per-stage optimizer the config names."""
    if cfg.optimizer is OptimizerKind.ADAM:
        return lambda params: torch.optim.Adam(params, lr=cfg.lr)
    return lambda params: torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)


def build_pipeline(cfg: TrainConfig) -> tuple[Pipeline, bool]:
    """The pipeline for this process: every stage (single process) or this rank's stages (torchrun)."""
    ranges = resolve_ranges(cfg.spec, cfg.stages, cfg.partition, cfg.batch_size // cfg.microbatches)
    distributed = launched_by_torchrun()
    if not distributed:
        devices = resolve_devices(cfg.device, cfg.devices, cfg.stages)
        pcfg = PipelineConfig(cfg.spec, ranges, cfg.schedule, cfg.microbatches, devices, cfg.torch_dtype, cfg.seed,
                              cfg.virtual, cfg.fuse_w, cfg.defer_w, cfg.engine, cfg.recompute)
        pcfg.build_schedule()
        return Pipeline(pcfg, optimizer_factory(cfg), LocalTransport()), False
    backend = Backend.NCCL if cfg.device.startswith("cuda") else Backend.GLOO
    if cfg.devices or cfg.device not in ("cpu", "cuda"):
        raise ValueError("device: under torchrun each process takes cuda:LOCAL_RANK (--device cuda) or the CPU "
                         "(--device cpu); --devices and explicit indices are for single-process runs")
    if backend is Backend.NCCL:
        check_device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}")
    probe = PipelineConfig(cfg.spec, ranges, cfg.schedule, cfg.microbatches, ("cpu",) * cfg.stages, cfg.torch_dtype,
                           cfg.seed, cfg.virtual, cfg.fuse_w, cfg.defer_w, cfg.engine, cfg.recompute)
    probe.build_schedule()
    world = init_world(backend, cfg.timeout)
    if world.world_size != probe.num_ranks:
        raise ValueError(f"stages: {cfg.stages} stages of {cfg.schedule.value} need {probe.num_ranks} processes, "
                         f"torchrun started {world.world_size}")
    dev = f"cuda:{world.local_rank}" if backend is Backend.NCCL else "cpu"
    pcfg = replace(probe, devices=(dev,) * cfg.stages)
    return Pipeline(pcfg, optimizer_factory(cfg), DistTransport(backend, cfg.timeout), [world.rank]), True


def gather_layers(pipe: Pipeline, distributed: bool) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Every layer's (W, b) on the CPU, summed in from the ranks that own them under torchrun."""
    spec = pipe.cfg.spec
    out = []
    for layer in range(spec.num_layers):
        rows, cols = spec.layer_shape(layer)
        w = torch.zeros(rows, cols, dtype=torch.float64)
        b = torch.zeros(rows, dtype=torch.float64) if spec.layer_has_bias(layer) else None
        out.append((w, b))
    for st in pipe.stages.values():
        for offset, (w, b) in enumerate(st.params):
            out[st.start + offset][0].copy_(w.detach())
            if b is not None:
                out[st.start + offset][1].copy_(b.detach())
    if distributed:
        out = [(all_reduce_sum(w), None if b is None else all_reduce_sum(b)) for w, b in out]
    return out


def evaluate(pipe: Pipeline, data: Dataset, distributed: bool) -> float:
    """Test accuracy of the current parameters (the whole model, float64, on the CPU)."""
    layers = gather_layers(pipe, distributed)
    with torch.no_grad():
        o = forward_layers(pipe.cfg.spec, layers, data.x_test, 0)
    return float((o.argmax(1) == data.y_test).double().mean())


def fingerprint(cfg: TrainConfig) -> dict:
    """What must not change between a run and its resumption (the layout may: checkpoints are per layer)."""
    return {"widths": list(cfg.spec.widths), "activation": cfg.spec.activation.value, "bias": cfg.spec.bias_name,
            "l2": cfg.spec.l2, "loss": cfg.spec.loss.value, "dataset": cfg.dataset, "samples": cfg.samples,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr, "optimizer": cfg.optimizer.value, "momentum": cfg.momentum, "seed": cfg.seed,
            "dtype": cfg.dtype, "clip_grad_norm": cfg.clip_grad_norm}


def checkpoint_layout(cfg: TrainConfig, pipe: Pipeline, distributed: bool) -> dict:
    """The layout that wrote a checkpoint, kept in its manifest (a resumption may choose another)."""
    return {"stages": cfg.stages, "ranges": [list(r) for r in pipe.cfg.ranges], "schedule": cfg.schedule.value,
            "virtual": cfg.virtual, "microbatches": cfg.microbatches, "engine": cfg.engine.value,
            "data_parallel": cfg.data_parallel, "processes": int(os.environ.get("WORLD_SIZE", "1")) if distributed else 1}


def _leader(distributed: bool) -> bool:
    """Whether this process speaks for the run about its checkpoint folder (global rank 0 under torchrun)."""
    return not distributed or os.environ.get("RANK") == "0"


def _claim(cfg: TrainConfig, distributed: bool, held: ExitStack) -> str:
    """Lock the checkpoint folder for this run (one process does) and check it; returns the run id.

    Under torchrun the verdict travels to every rank, so each fails with the same line.
    """
    leader = _leader(distributed)
    verdict = ""
    if leader:
        try:
            lock, run = ckpt_guard.claim(cfg.checkpoint_dir, fingerprint(cfg), cfg.resume, cfg.overwrite)
            held.callback(lock.release)
            verdict = "ok " + run
        except ValueError as exc:
            verdict = "error " + str(exc)
    if distributed:
        verdict = ckpt_guard.share_text(verdict, leader)
    kind, _, text = verdict.partition(" ")
    if kind != "ok":
        raise ValueError(text)
    return text


def _restore(cfg: TrainConfig, pipe: Pipeline, log: Callable[[str], None] | None) -> tuple[int, list[dict]]:
    """Load the last complete checkpoint when resuming: (epochs done, history so far)."""
    if not cfg.resume:
        return 0, []
    found = ckpt.load_checkpoint(cfg.checkpoint_dir)
    saved, now = found.manifest.fingerprint, fingerprint(cfg)
    changed = [k for k in now if k in saved and saved[k] != now[k]]
    if changed:
        raise ValueError("resume: the checkpoint was written with other settings: "
                         + ", ".join(f"{k} {saved[k]} (now {now[k]})" for k in changed))
    ckpt_state.restore_layers(pipe, found.layers)
    if log is not None:
        log(f"resumed from epoch {found.manifest.epoch} of {cfg.checkpoint_dir} "
            f"(written by {ckpt.describe_layout(found.manifest.layout)})")
    return found.manifest.epoch, found.history


def _save(cfg: TrainConfig, pipe: Pipeline, epoch: int, history: list[dict], run: str, distributed: bool) -> None:
    """Write every held layer, wait for all ranks, then (one writer) the manifest that makes the epoch complete.

    With ``overwrite`` the folder's old checkpoint goes just before the first epoch is written.
    """
    if cfg.overwrite and epoch == 1:
        if _leader(distributed):
            ckpt.remove_checkpoint(cfg.checkpoint_dir)
        barrier()
    for layer, state in ckpt_state.layer_states(pipe).items():
        ckpt.save_layer(cfg.checkpoint_dir, layer, epoch, run, state)
    barrier()
    if pipe.last is not None:
        manifest = ckpt.Manifest(epoch, run, fingerprint(cfg), checkpoint_layout(cfg, pipe, distributed),
                                 cfg.spec.num_layers)
        ckpt.write_manifest(cfg.checkpoint_dir, manifest, history)
    barrier()


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train as configured; returns the results (also written to ``cfg.json`` by the last stage's process)."""
    with ExitStack() as held:
        return _train(cfg, log, held)


def _train(cfg: TrainConfig, log: Callable[[str], None], held: ExitStack) -> dict:
    """The body of :func:`train`; ``held`` releases the checkpoint folder's lock however training ends."""
    data = load_dataset(cfg.dataset, cfg.spec, cfg.seed, cfg.samples)
    n = data.x_train.shape[0]
    if n < cfg.batch_size:
        raise ValueError(f"batch-size: {cfg.batch_size} is larger than the {n} training samples")
    pipe, distributed = build_pipeline(cfg)
    reporter = pipe.last is not None
    check = all_reduce_sum if distributed else None
    run = _claim(cfg, distributed, held) if cfg.checkpoint_dir else ""
    start_epoch, history = _restore(cfg, pipe, log if reporter else None)
    if start_epoch >= cfg.epochs:
        raise ValueError(f"resume: the checkpoint in {cfg.checkpoint_dir} is already at epoch {start_epoch} of "
                         f"--epochs {cfg.epochs}; ask for more epochs to continue")
    steps_per_epoch = n // cfg.batch_size
    prediction = predict_run(pipe, optimizer_factory(cfg), data.x_train[: cfg.batch_size], data.y_train[: cfg.batch_size],
                             cfg.batch_size, distributed, cfg.timeout, cfg.link, state_kind(cfg.optimizer.value, cfg.momentum))
    bar = ProgressBar((cfg.epochs - start_epoch) * steps_per_epoch, "train", cfg.progress and reporter)
    step_times: list[float] = []
    records = []
    recent: deque = deque(maxlen=RECENT_STEPS)  # action records of the last steps: the measured action times
    step = start_epoch * steps_per_epoch
    fault = planned_fault(pipe.ranks)
    for epoch in range(start_epoch, cfg.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        losses, correct, t_epoch = [], 0, time.perf_counter()
        for k in range(steps_per_epoch):
            idx = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            traced = epoch == cfg.epochs - 1 and k == steps_per_epoch - 1
            if fault is not None and fault[1] == step:
                inject_fault(fault[2])
            t0 = time.perf_counter()
            out = pipe.step(data.x_train[idx], data.y_train[idx], cfg.batch_size, step, traced, check)
            step_times.append(time.perf_counter() - t0)
            recent.append(out.records)
            if traced:
                records = out.records
            step += 1
            if reporter:
                losses.append(out.loss)
                correct += out.correct
            bar.update(1, f"epoch {epoch + 1} loss {losses[-1]:.4f}" if losses else "")
        elapsed = time.perf_counter() - t_epoch
        acc = evaluate(pipe, data, distributed)
        entry = {"epoch": epoch + 1, "train_loss": statistics.fmean(losses) if losses else None,
                 "train_accuracy": correct / (steps_per_epoch * cfg.batch_size) if reporter else None,
                 "test_accuracy": acc, "seconds": elapsed, "samples_per_second": steps_per_epoch * cfg.batch_size / elapsed,
                 "step_losses": losses if reporter else []}
        history.append(entry)
        if cfg.checkpoint_dir:
            _save(cfg, pipe, epoch + 1, history, run, distributed)
    bar.close()
    figures = step_figures(pipe, records, [r for rs in recent for r in rs], step_times, cfg, distributed, prediction)
    results = {
        "config": {**asdict(cfg), "spec": {**asdict(cfg.spec), "activation": cfg.spec.activation.value,
                                            "loss": cfg.spec.loss.value}, "optimizer": cfg.optimizer.value,
                   "schedule": cfg.schedule.value, "engine": cfg.engine.value},
        "mode": "torchrun" if distributed else "single-process",
        "reporter": reporter,
        "num_ranks": pipe.schedule.num_ranks,
        "schedule_table": format_table(pipe.schedule),
        "plan": [list(r) for r in pipe.cfg.ranges],
        "devices": list(pipe.cfg.devices),
        "epochs": history,
        "train_loss": [h["train_loss"] for h in history],
        "step_losses": [loss for h in history for loss in h.get("step_losses", [])],
        "optimizer_steps": step,
        "test_accuracy": [h["test_accuracy"] for h in history],
        "samples_per_second": statistics.median(h["samples_per_second"] for h in history) if history else None,
        "peak_memory_bytes": _peak_memory(pipe),
        **figures,
    }
    if reporter and cfg.json:
        ckpt.write_json(cfg.json, results)
    if distributed:  # leave the group together: tearing gloo down at interpreter exit can abort the process
        barrier()
        shutdown()
    return results


def planned_fault(ranks: list[int]) -> tuple[int, int, str] | None:
    """Fault injection for tests: PIPEGRAPH_FAULT=RANK:STEP:kill|raise makes that rank fail at that step."""
    text = os.environ.get("PIPEGRAPH_FAULT")
    if not text:
        return None
    rank, step, mode = text.split(":")
    return (int(rank), int(step), mode) if int(rank) in ranks and len(ranks) == 1 else None


def inject_fault(mode: str) -> None:
    """Die the way PIPEGRAPH_FAULT asked: SIGKILL (no goodbye) or an exception."""
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise RuntimeError("injected fault (PIPEGRAPH_FAULT)")


def _peak_memory(pipe: Pipeline) -> int | None:
    """Peak CUDA memory allocated on this process's GPUs (None on CPU)."""
    devs = {st.device for st in pipe.stages.values() if st.device.type == "cuda"}
    return sum(torch.cuda.max_memory_allocated(d) for d in devs) if devs else None
