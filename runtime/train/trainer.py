"""Training: data, per-stage optimizers, one schedule flush per step, metrics, checkpoints, resume."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack

from runtime.comm import barrier, launched_by_torchrun
from runtime.engine.pipeline import Pipeline
from runtime.output import write_json
from runtime.threads import apply_threads, choose_for_model
from runtime.train import checkpoint as ckpt
from runtime.train import ckpt_guard, ckpt_state
from runtime.train.config import TrainConfig
from runtime.train.fits import check_fits
from runtime.train.loop import Tally, json_path, load_training_data, predict, run_epoch, steps_per_epoch, summarize
from runtime.train.outputs import check_outputs
from runtime.train.process import Process, build_pipeline, evaluate, gather_layers, optimizer_factory, start
from runtime.train.progress import ProgressBar
from runtime.train.slow_steps import SlowSteps

__all__ = ["build_pipeline", "evaluate", "gather_layers", "optimizer_factory", "train"]


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


def _claim(cfg: TrainConfig, proc: Process, held: ExitStack) -> str:
    """Lock the checkpoint folder for this run (global rank 0 does) and check it; returns the run id.

    Under torchrun the verdict travels to every rank, so each fails with the same line.
    """
    leader = proc.rank == 0
    verdict = ""
    if leader:
        try:
            lock, run = ckpt_guard.claim(cfg.checkpoint_dir, fingerprint(cfg), cfg.resume, cfg.overwrite)
            held.callback(lock.release)
            verdict = "ok " + run
        except ValueError as exc:
            verdict = "error " + str(exc)
    if proc.distributed:
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


def _save(cfg: TrainConfig, proc: Process, epoch: int, history: list[dict], run: str) -> None:
    """Replica 0 writes its layers; all ranks wait; global rank 0 writes the manifest that makes the epoch complete.

    With ``overwrite`` the folder's old checkpoint goes just before the first epoch is written.
    """
    if cfg.overwrite and epoch == 1:
        if proc.rank == 0:
            ckpt.remove_checkpoint(cfg.checkpoint_dir)
        barrier()
    if proc.grid is None or proc.grid.dp_rank == 0:  # the other replicas hold the same layers, bit for bit
        for layer, state in ckpt_state.layer_states(proc.pipe).items():
            ckpt.save_layer(cfg.checkpoint_dir, layer, epoch, run, state)
    barrier()
    if proc.rank == 0:  # every rank holds the whole grid's history
        manifest = ckpt.Manifest(epoch, run, fingerprint(cfg), checkpoint_layout(cfg, proc.pipe, proc.distributed),
                                 cfg.spec.num_layers)
        ckpt.write_manifest(cfg.checkpoint_dir, manifest, history)
    barrier()


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train as configured; returns the results (also written to ``cfg.json`` by the last stage's process)."""
    with ExitStack() as held:
        return _train(cfg, log, held)


def _train(cfg: TrainConfig, log: Callable[[str], None], held: ExitStack) -> dict:
    """The body of :func:`train`; ``held`` releases the checkpoint folder's lock however training ends."""
    data = load_training_data(cfg)  # first: a dataset that does not fit the widths is the most basic error
    check_outputs(cfg)
    check_fits(cfg)
    apply_threads(choose_for_model(cfg.threads, launched_by_torchrun(), cfg.spec, cfg.batch_size, cfg.microbatches,
                                   cfg.device))
    proc = start(cfg)
    with proc.guard():
        results = _epochs(cfg, log, held, data, proc)
        path = json_path(cfg, proc)
        if path:
            write_json(path, results)
    proc.close()
    return results


def _quiet(_: str) -> None:
    return None


def _epochs(cfg: TrainConfig, log: Callable[[str], None], held: ExitStack, data: object, proc: Process) -> dict:
    """Claim and restore the checkpoint, run the remaining epochs (saving after each), summarize."""
    pipe = proc.pipe
    reporter = proc.rank == 0
    run = _claim(cfg, proc, held) if cfg.checkpoint_dir else ""
    start_epoch, history = _restore(cfg, pipe, log if reporter else None)
    if start_epoch >= cfg.epochs:
        raise ValueError(f"resume: the checkpoint in {cfg.checkpoint_dir} is already at epoch {start_epoch} of "
                         f"--epochs {cfg.epochs}; ask for more epochs to continue")
    per_epoch = steps_per_epoch(cfg, data)
    prediction = predict(cfg, proc, data)
    bar = ProgressBar((cfg.epochs - start_epoch) * per_epoch, "train", cfg.progress and reporter)
    tally = Tally(step=start_epoch * per_epoch, slow=SlowSteps(prediction.here.step_time, log if reporter else _quiet))
    for epoch in range(start_epoch, cfg.epochs):
        history.append(run_epoch(cfg, proc, data, epoch, tally, bar))
        if cfg.checkpoint_dir:
            _save(cfg, proc, epoch + 1, history, run)
    bar.close()
    return summarize(cfg, proc, history, tally, prediction)
