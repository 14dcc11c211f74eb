"""The experiment scheduler: partition the model over K devices, or train on one device with a smaller minibatch?

``compare(cfg)`` plans every candidate under the memory cap (``plan``), predicts its step time and memory
(``predict``, from profiles measured before any run), measures its memory in one instrumented step
(``memory``) and trains it with the same seed on the same samples (``run``), then recommends one
(``recommend``) and writes the report (``report``: Markdown, JSON, CSV and PNG plots, with the memory-time trade
of ``pareto``). ``regenerate`` rewrites the report from its JSON alone; ``pareto_table`` tables several runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

import torch

from partition.cost import Optimizer, as_dtype
from partition.memory import training_memory
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from partition.timing import LinkModel
from partition.units import parse_bytes
from runtime.calibrate.link import dist_link
from runtime.comm import Backend, barrier, init_world, launched_by_torchrun
from runtime.compare.memory import METHOD, candidate_memory
from runtime.compare.pareto import pareto_across, pareto_summary
from runtime.compare.plan import Setting, plan_candidates
from runtime.compare.predict import Profiler, calibrate, parameter_work, predict
from runtime.compare.recommend import recommend
from runtime.compare.report import close_timings, write_report
from runtime.compare.results import add_time_to_target, entry, error_summary, same_math, settle_target
from runtime.compare.run import RunContext, epoch_order, train_candidate
from runtime.compare.types import Candidate, LRRule, RecomputePolicy
from runtime.threads import apply_threads, choose_for_model
from runtime.train.config import OptimizerKind, parse_dtype
from runtime.train.datasets import Dataset, load_dataset
from runtime.train.progress import ProgressBar

AUTO_CAP = 0.95  # "auto": this share of what one device needs for the full batch B, so that B alone does not fit
QUICK = MappingProxyType({"epochs": 30, "profile_repeats": 10})


@dataclass(frozen=True)
class CompareConfig:
    """One experiment: the model, data, global batch B, K devices, the per-device cap and how long to train."""

    spec: MLPSpec = field(default_factory=lambda: MLPSpec((64, 256, 256, 256, 10)))
    dataset: str = "digits"
    samples: int = 4096
    batch: int = 128
    devices: int = 4
    memory_cap: str = "auto"  # "auto", "none", or a size such as 2MiB
    epochs: int = 60
    target_loss: float | None = None
    lr: float = 0.1
    lr_rule: LRRule = LRRule.LINEAR
    optimizer: OptimizerKind = OptimizerKind.SGD
    momentum: float = 0.9
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    threads: int | None = None  # None: auto (runtime.threads)
    schedules: tuple[ScheduleKind, ...] = tuple(ScheduleKind)
    microbatches: tuple[int, ...] = ()  # default: K, 2K and 4K where they divide B
    recompute: tuple[RecomputePolicy, ...] = (RecomputePolicy.NONE, RecomputePolicy.FIT)  # per pipeline, see plan
    virtual: int = 2
    profile_repeats: int = 20
    calibration_steps: int = 16
    timeout: float = 60.0
    out: str | None = "out/compare"
    progress: bool = True

    def __post_init__(self) -> None:
        checks = [(self.batch >= 1, "batch", "must be >= 1"), (self.devices >= 1, "devices", "must be >= 1"),
                  (self.epochs >= 1, "epochs", "must be >= 1"), (self.lr > 0, "lr", "must be > 0"),
                  (self.threads is None or self.threads >= 1, "threads", "must be >= 1 (None: auto)"),
                  (self.virtual >= 1, "virtual", "must be >= 1"), (self.profile_repeats >= 1, "profile_repeats", "must be >= 1"),
                  (self.calibration_steps >= 1, "calibration_steps", "must be >= 1"),
                  (all(m >= 1 for m in self.microbatches), "microbatches", "must all be >= 1")]
        for ok, name, why in checks:
            if not ok:
                raise ValueError(f"{name.replace('_', '-')}: {why}, got {getattr(self, name)!r}")
        if self.devices > self.spec.num_layers:
            raise ValueError(f"devices: {self.devices} devices need at least {self.devices} layers; the model has "
                             f"{self.spec.num_layers}")
        self.cap_bytes()
        as_dtype(self.dtype)

    @property
    def memory_optimizer(self) -> Optimizer:
        """The memory model's name for the optimizer's state."""
        if self.optimizer is OptimizerKind.ADAM:
            return Optimizer.ADAM
        return Optimizer.MOMENTUM if self.momentum > 0 else Optimizer.SGD

    def cap_bytes(self) -> float | None:
        """The per-device cap in bytes (None: no cap)."""
        text = self.memory_cap.strip().lower()
        if text == "none":
            return None
        if text == "auto":
            return AUTO_CAP * training_memory(self.spec, self.batch, as_dtype(self.dtype), self.memory_optimizer).total
        return float(parse_bytes(self.memory_cap))

    def microbatch_counts(self) -> tuple[int, ...]:
        """The microbatch counts m tried for pipelines and accumulation."""
        return self.microbatches or tuple(m for m in (self.devices, 2 * self.devices, 4 * self.devices)
                                          if m <= self.batch and self.batch % m == 0) or (1,)


def _setup(cfg: CompareConfig, ctx: RunContext, n_train: int, n_test: int) -> dict:
    cap = cfg.cap_bytes()
    return {"spec": {"widths": list(cfg.spec.widths), "activation": cfg.spec.activation.value, "bias": cfg.spec.bias_name,
                     "l2": cfg.spec.l2, "loss": cfg.spec.loss.value},
            "dataset": cfg.dataset, "train_samples": n_train, "test_samples": n_test, "batch": cfg.batch,
            "devices": cfg.devices, "memory_cap": cap, "memory_cap_text": cfg.memory_cap, "auto_cap_share": AUTO_CAP,
            "epochs": cfg.epochs, "samples_per_epoch": (n_train // cfg.batch) * cfg.batch, "lr": cfg.lr,
            "lr_rule": cfg.lr_rule.describe(), "optimizer": cfg.optimizer.value, "momentum": cfg.momentum, "seed": cfg.seed,
            "dtype": cfg.dtype, "device": cfg.device, "threads": torch.get_num_threads(),
            "mode": "torchrun" if ctx.distributed else "single-process emulation",
            "one_real_device": not ctx.distributed and not (cfg.device.startswith("cuda")
                                                             and torch.cuda.device_count() >= cfg.devices),
            "memory_method": METHOD}


def compare(cfg: CompareConfig, log: Callable[[str], None] = print) -> dict:
    """Run the whole experiment; returns the results (also written under ``cfg.out`` when set).

    Torch runs with the threads runtime.threads chooses for ``cfg.threads`` meanwhile (restored afterwards).
    """
    threads = torch.get_num_threads()
    apply_threads(choose_for_model(cfg.threads, launched_by_torchrun(), cfg.spec, cfg.batch, cfg.devices, cfg.device))
    try:
        return _compare(cfg, log)
    finally:
        torch.set_num_threads(threads)


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the block takes to ``timings[key]``."""
    begin = time.perf_counter()
    try:
        yield
    finally:
        timings[key] += time.perf_counter() - begin


def _compare(cfg: CompareConfig, log: Callable[[str], None]) -> dict:
    begin = time.perf_counter()
    timings = dict.fromkeys(("planning", "profiling", "calibration", "prediction", "memory_probe", "training"), 0.0)
    distributed = launched_by_torchrun()
    rank = 0
    if distributed:  # a long collective timeout: ranks wait at a barrier while rank 0 runs the one-device candidates
        world = init_world(Backend.NCCL if cfg.device.startswith("cuda") else Backend.GLOO, max(cfg.timeout, 86_400.0))
        rank = world.rank
        if world.world_size != cfg.devices:
            raise ValueError(f"devices: --devices {cfg.devices} but torchrun started {world.world_size} processes")
    ctx = RunContext(cfg.device, cfg.dtype, cfg.optimizer, cfg.momentum, cfg.seed, cfg.timeout, distributed)
    data = load_dataset(cfg.dataset, cfg.spec, cfg.seed, cfg.samples)
    if data.x_train.shape[0] < cfg.batch:
        raise ValueError(f"batch: {cfg.batch} is larger than the {data.x_train.shape[0]} training samples")
    setup = _setup(cfg, ctx, data.x_train.shape[0], data.x_test.shape[0])
    profiler = Profiler(cfg.spec, ctx, cfg.profile_repeats)
    with _timed(timings, "planning"):
        setting = Setting(cfg.spec, cfg.batch, cfg.devices, setup["memory_cap"], as_dtype(cfg.dtype), cfg.memory_optimizer,
                          tuple(cfg.schedules), cfg.microbatch_counts(), cfg.virtual, cfg.lr, cfg.lr_rule,
                          tuple(cfg.recompute))
        cands = plan_candidates(setting, profiler.layers)
        if distributed:  # a searched (auto) schedule is handed to a pipeline built in this one process only
            cands = [replace(c, reason=why) if (why := _not_under_torchrun(c)) and c.feasible else c for c in cands]
        for c in cands:  # every rank profiles the same sizes in the same order (averaged over the ranks under torchrun)
            if c.planned:
                profiler.layers(c.microbatch_size)
    timings["planning"] -= profiler.seconds
    timings["profiling"] = profiler.seconds
    spanning = [c for c in cands if c.planned and ctx.spans_processes(c)]  # first, while every rank takes part
    mine = spanning + [c for c in cands if c.planned and not ctx.spans_processes(c) and rank == 0]
    figures = _measure(cfg, ctx, data, mine, profiler, timings, rank)
    barrier()
    if rank != 0:
        return {}
    with _timed(timings, "planning"):
        entries = [entry(c, *(f.get(c.id) for f in figures)) for c in cands]
        target, source = settle_target(entries, cfg.target_loss)
        add_time_to_target(entries, target)
        setup.update(target_loss=target, target_source=source)
        out = {"setup": setup, "candidates": entries, "recommendation": recommend(entries, setup),
               "same_math": same_math(entries, cfg.batch), "prediction_errors": error_summary(entries),
               "timings": timings}
        out["pareto"] = pareto_summary(out)
    if cfg.out:
        write_report(out, cfg.out, started=begin)
    else:
        close_timings(timings, begin, 0.0)
    log(f"recommendation: {out['recommendation']['label']}")
    return out


def _measure(cfg: CompareConfig, ctx: RunContext, data: Dataset, cands: list[Candidate], profiler: Profiler,
             timings: dict[str, float], rank: int) -> tuple[dict, dict, dict]:
    """Predict every planned candidate, then probe the memory of and train those that fit: (predictions, memory, runs)."""
    with _timed(timings, "calibration"):
        param_extra = parameter_work(cfg.spec, ctx)
        link = _link(cfg, ctx, rank)
    first = epoch_order(data.x_train.shape[0], cfg.batch, cfg.seed, 0)
    per_epoch = (data.x_train.shape[0] // cfg.batch) * cfg.batch
    bar = ProgressBar(sum(cfg.epochs * (per_epoch // c.minibatch) for c in cands if c.feasible), "compare",
                      cfg.progress and rank == 0)
    preds, memory, runs = {}, {}, {}
    for c in cands:  # the skeleton is timed right before and after the run it predicts
        with _timed(timings, "calibration"):
            calib = calibrate(ctx, cfg.spec, c, data.x_train, data.y_train, first, cfg.calibration_steps, link)
        if c.feasible:
            with _timed(timings, "memory_probe"):
                memory[c.id] = candidate_memory(ctx, cfg.spec, c, data.x_train[first[: c.minibatch]],
                                                data.y_train[first[: c.minibatch]])
            with _timed(timings, "training"):
                runs[c.id] = train_candidate(ctx, cfg.spec, data, c, cfg.batch, cfg.epochs, cfg.target_loss,
                                             lambda note: bar.update(1, note))
            with _timed(timings, "calibration"):
                calib = calib.merge(calibrate(ctx, cfg.spec, c, data.x_train, data.y_train, first, cfg.calibration_steps,
                                              link))
        with _timed(timings, "prediction"):
            preds[c.id] = predict(c, profiler, calib, param_extra, ctx.spans_processes(c), link, _boundary_bytes(cfg, c))
    bar.close()
    return preds, memory, runs


def _not_under_torchrun(cand: Candidate) -> str:
    """Why ``cand`` cannot run under torchrun ('' when it can)."""
    if cand.ready is not None:
        return "not applicable under torchrun: the auto schedule runs in one process"
    return ""


def _link(cfg: CompareConfig, ctx: RunContext, rank: int) -> LinkModel:
    """Under torchrun, the link between the processes, measured now (ping-pongs up to twice the widest activation)."""
    if not ctx.distributed:
        return LinkModel()
    backend = Backend.NCCL if cfg.device.startswith("cuda") else Backend.GLOO
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if backend is Backend.NCCL else "cpu")
    widest = cfg.batch * max(cfg.spec.widths) * torch.finfo(ctx.torch_dtype).bits // 8
    return dist_link(backend, device, 2 * widest, rank, cfg.timeout)[0]


def _boundary_bytes(cfg: CompareConfig, cand: Candidate) -> list[float]:
    """Bytes of the activation leaving each stage of ``cand`` per microbatch."""
    size = torch.finfo(parse_dtype(cfg.dtype)).bits // 8
    return [float(cand.microbatch_size * cfg.spec.widths[b] * size) for _, b in cand.ranges]


def load_results(json_path: str | Path, flag: str = "from-json") -> dict:
    """The results of a run, read back from its JSON (ValueError naming ``flag`` when it is not one)."""
    try:
        results = json.loads(Path(json_path).read_text())
    except OSError as err:
        raise ValueError(f"{flag}: cannot read {json_path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{flag}: {json_path} is not JSON ({err})") from None
    if not isinstance(results, dict) or "candidates" not in results or "timings" not in results:
        raise ValueError(f"{flag}: {json_path} is not a report written by compare.py (no candidates/timings)")
    return results


def regenerate(json_path: str | Path, out: str | Path) -> dict:
    """Rewrite the Markdown, CSV, PNGs (and JSON) under ``out`` from a results JSON, without running anything."""
    results = load_results(json_path)
    write_report(results, out, started=None)
    return results


def pareto_table(json_paths: Sequence[str | Path]) -> str:
    """The memory-time table over runs of one model at several caps (``pareto.pareto_across``), as Markdown."""
    return "\n".join(pareto_across([load_results(path, "pareto-table") for path in json_paths])) + "\n"
