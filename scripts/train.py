"""Train the chapter's MLP, on one device or as a pipeline of stages (emulated in one process, or torchrun).

    python scripts/train.py                                    # digits, 4 emulated stages, 1F1B, CPU
    python scripts/train.py --stages 1 --microbatches 1        # plain single-device training
    python scripts/train.py --stages 1 --microbatches 4        # gradient accumulation: the reference
    python scripts/train.py --widths 64,256,256,10 --activation tanh --no-bias --l2 1e-4 --loss squared-error
    python scripts/train.py --dataset synthetic --widths 32,64,64,8 --stages 3 --schedule zb-h1 --microbatches 6
    python scripts/train.py --dataset idx:/data/fashion --widths 784,256,256,10 --device cuda --dtype bfloat16
    python scripts/train.py --stages 4 --schedule interleaved-1f1b --virtual-stages 2 \
        --widths 64,32,32,32,32,32,32,32,10 --activation tanh
    python scripts/train.py --checkpoint-dir ckpt --epochs 10; python scripts/train.py --checkpoint-dir ckpt --resume
    torchrun --standalone --nproc-per-node=4 scripts/train.py --stages 4 --microbatches 8   # one stage per process
    torchrun --standalone --nproc-per-node=4 scripts/train.py --stages 2 --data-parallel 2 --clip-grad-norm 1
    torchrun --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=JOB \
        scripts/train.py --stages 4 --data-parallel 2       # on each of two nodes: PP 4 x DP 2
"""

from __future__ import annotations

import argparse
import sys

from _cli import HelpFormatter, add_bias_flags, run_main

from partition.plan import format_ranges
from partition.recompute import parse_recompute
from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec, parse_widths
from partition.units import parse_bytes
from runtime.calibrate.run import LINK_HELP, format_predictions
from runtime.engine.stage import Engine
from runtime.ops.gemm import Gemm
from runtime.output import output_line
from runtime.threads import HELP as THREADS_HELP
from runtime.threads import parse_threads
from runtime.train.config import DTYPES, OptimizerKind, TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; --help explains every flag."""
    p = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("model (the chapter's MLP)")
    g.add_argument("--widths", default="64,128,128,128,10", help="layer widths, inputs first (default %(default)s)")
    g.add_argument("--activation", default="relu", choices=["relu", "tanh", "sigmoid"], help="phi after every hidden layer")
    add_bias_flags(g)
    g.add_argument("--l2", type=float, default=0.0, help="lambda of the l2 term s = lambda/2 sum ||W||^2")
    g.add_argument("--loss", default="cross-entropy", choices=["cross-entropy", "squared-error"], help="l(o, y)")
    g = p.add_argument_group("data and optimisation")
    g.add_argument("--dataset", default="digits", help="digits (shipped), synthetic, or idx:DIR (MNIST-style files)")
    g.add_argument("--samples", type=int, default=4096, help="examples of the synthetic dataset")
    g.add_argument("--batch-size", type=int, default=64, help="examples per optimizer step (the global batch)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate")
    g.add_argument("--optimizer", default="sgd", choices=[o.value for o in OptimizerKind], help="per-stage optimizer")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--epochs", type=int, default=20, help="passes over the training set")
    g.add_argument("--seed", type=int, default=0, help="parameters, data split and order")
    g.add_argument("--dtype", default="float32", choices=list(DTYPES), help="parameters, activations and gradients")
    g = p.add_argument_group("pipeline")
    g.add_argument("--stages", type=int, default=4, help="pipeline stages (1 = one device)")
    g.add_argument("--schedule", default="1f1b", choices=[k.value for k in ScheduleKind], help="pipeline schedule")
    g.add_argument("--microbatches", type=int, default=4, help="microbatches per step (must divide the batch)")
    g.add_argument("--virtual-stages", "--virtual", dest="virtual", type=int, default=1,
                   help="stages per rank for interleaved-1f1b (under torchrun write --virtual-stages: torchrun "
                        "takes --virtual for its own --virtual-local-rank)")
    g.add_argument("--partition", default="optimal",
                   help="optimal, uniform, parameters, time-blocks, or explicit inclusive ranges like 0-1,2-3")
    g.add_argument("--device", default="cpu", help="cpu or cuda (stages spread over GPUs, or emulated on one)")
    g.add_argument("--devices", default=None, help="one device per stage, e.g. cuda:0,cuda:0,cuda:1,cuda:1")
    g.add_argument("--no-fuse-w", dest="fuse_w", action="store_false", help="run deferred weight gradients one by one")
    g.add_argument("--defer-w", action="store_true",
                   help="run the weight gradients at the end of the step, one fused GEMM per layer (more memory); "
                        "a wait between the last backward steps holds one microbatch's instead")
    g.add_argument("--engine", default="autograd", choices=[e.value for e in Engine],
                   help="autograd: the hand-derived Functions driven by autograd's engine; direct: the same "
                        "equations called without building a graph (less overhead per action)")
    g.add_argument("--gemm", default="torch", choices=[k.value for k in Gemm],
                   help="the kernel of each layer's forward and input-gradient GEMMs: torch (its matmul, any dtype and "
                        "device) or onednn (oneDNN's linear kernel: --engine direct, float32, CPU; 10-20%% faster at "
                        "widths from 1024 on the project's CPU, slower at small widths) (default %(default)s)")
    g.add_argument("--recompute", default="none",
                   help="activation recomputation: none, all, first:K (the first K layers of every stage), or one "
                        "per stage, comma-separated, e.g. all,none,first:1 (default %(default)s)")
    g.add_argument("--memory-cap", help="with --schedule auto: bytes per device the generated schedule keeps within, "
                                        "e.g. 200MiB (activations get the cap minus parameters, gradients, optimizer state)")
    g.add_argument("--max-inflight", type=int, help="with --schedule auto: at most this many microbatches in flight per stage")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds any wait on another rank may take")
    g.add_argument("--threads", default="auto", help=THREADS_HELP)
    g.add_argument("--data-parallel", type=int, default=1, metavar="D",
                   help="replicas of the pipeline, each on 1/D of every batch, gradients all-reduced per stage "
                        "(torchrun: D x ranks-per-pipeline processes) (default %(default)s)")
    g.add_argument("--clip-grad-norm", type=float, default=None, metavar="MAX",
                   help="clip the global gradient 2-norm (over every stage and replica) to MAX (default: off)")
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None, help="write results (config, per-epoch loss/accuracy, timings) here")
    g.add_argument("--trace", default=None, help="Chrome trace of the last step, measured and predicted (this run)")
    g.add_argument("--gantt", default=None, help="Gantt PNG of the last step, measured above predicted, per rank")
    g.add_argument("--link", default="measured", help=f"{LINK_HELP} (default %(default)s)")
    g.add_argument("--checkpoint-dir", default=None,
                   help="save every layer and its optimizer state after each epoch (atomic; one run per folder)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the last complete checkpoint (any stages, partition, schedule or engine)")
    g.add_argument("--overwrite", action="store_true", help="replace a checkpoint the folder already holds")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p.parse_args(argv)


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """Turn parsed flags into a checked TrainConfig (ValueError names the bad flag)."""
    spec = MLPSpec(parse_widths(a.widths), a.activation, a.bias, a.l2, a.loss)
    return TrainConfig(
        spec=spec, dataset=a.dataset, samples=a.samples, batch_size=a.batch_size, lr=a.lr,
        optimizer=OptimizerKind(a.optimizer), momentum=a.momentum, epochs=a.epochs, seed=a.seed, dtype=a.dtype,
        device=a.device, stages=a.stages, schedule=ScheduleKind(a.schedule), microbatches=a.microbatches,
        virtual=a.virtual, partition=a.partition, devices=a.devices, trace=a.trace, gantt=a.gantt, link=a.link,
        checkpoint_dir=a.checkpoint_dir,
        resume=a.resume, overwrite=a.overwrite, json=a.json, progress=a.progress and sys.stderr.isatty(),
        timeout=a.timeout, fuse_w=a.fuse_w, defer_w=a.defer_w, engine=Engine(a.engine), gemm=Gemm(a.gemm),
        recompute=parse_recompute(a.recompute),
        threads=parse_threads(a.threads), data_parallel=a.data_parallel, clip_grad_norm=a.clip_grad_norm,
        memory_cap=parse_bytes(a.memory_cap) if a.memory_cap else None, max_inflight=a.max_inflight,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse, train, print the schedule, the measured vs predicted step time and the accuracy."""
    from runtime.train.trainer import train

    cfg = config_from_args(parse_args(argv))
    results = train(cfg, log=output_line)  # one write a line: torchrun's ranks share one stdout
    if results.get("reporter", True) and results["epochs"]:
        output_line("\n".join([results["schedule_table"], "the schedule in time (unit costs F = B = W = 1):",
                                results["timeline_chart"],
                                f"plan (layers per stage): {format_ranges(results['plan'])}  devices: "
                                f"{results['devices']}  mode: {results['mode']}", format_predictions(results)]))
    if results["epochs"]:  # every rank: the loss and accuracy are the whole grid's, the same on each
        last = results["epochs"][-1]
        who = f"[rank {results['rank']}] " if results["mode"] == "torchrun" else ""
        output_line(f"{who}epoch {last['epoch']}: train loss {last['train_loss']:.4f}, test accuracy "
                    f"{last['test_accuracy']:.2%}, {results['samples_per_second']:.0f} samples/s")
    return 0


if __name__ == "__main__":
    run_main(main, "train.py")
