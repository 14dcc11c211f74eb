"""Pipeline x data parallel over gloo: the same parameters as plain autograd on the whole global batch.

Reference: the unsplit model as torch.nn.Sequential, full-batch autograd, torch's SGD and
torch.nn.utils.clip_grad_norm_; the grid sums each replica's microbatch sums and then the replicas, so the
parameters agree to rounding (bounded at 1e-12 in float64), and every rank must hold the same model bitwise.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from runtime.ops.model import PipeModel, init_parameters
from runtime.train.loop import epoch_order, load_training_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid_worker import BASE  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
WORKER = Path(__file__).resolve().parent / "grid_worker.py"
SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("zb-h1", 1), ("interleaved-1f1b", 2)]
CLIP = 0.05  # the synthetic model's gradient norm is ~0.3-1 at the start: clipping is active on every step

pytestmark = pytest.mark.dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(world: int, configs: list[dict], out: Path) -> None:
    """Start ``world`` ranks of the worker (torchrun's environment on loopback) and wait for all of them."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), json.dumps(configs)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]


def reference(epochs: int, clip: float | None = None, l2: float = 0.0) -> tuple[list[torch.Tensor], list[float], list[float]]:
    """Plain autograd on the unsplit model: (final parameters, per-step loss, per-step gradient norm)."""
    cfg = BASE
    data = load_training_data(cfg)
    seq = PipeModel(cfg.spec, init_parameters(cfg.spec, cfg.seed)).to_sequential().double()
    opt = torch.optim.SGD(seq.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    n, b = data.x_train.shape[0], cfg.batch_size
    losses, norms = [], []
    for epoch in range(epochs):
        order = epoch_order(cfg, n, epoch)
        for k in range(n // b):
            idx = order[k * b : (k + 1) * b]
            opt.zero_grad()
            loss = F.cross_entropy(seq(data.x_train[idx]), data.y_train[idx], reduction="sum") / b
            weights = [m.weight for m in seq if isinstance(m, torch.nn.Linear)]
            (loss + 0.5 * l2 * sum((w * w).sum() for w in weights)).backward()
            norms.append(float(torch.nn.utils.get_total_norm([p.grad for p in seq.parameters()])))
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(seq.parameters(), clip)
            opt.step()
            losses.append(float(loss.detach()))
    return [p.detach() for p in seq.parameters()], losses, norms


def check(out: Path, index: int, world: int, ref: tuple) -> None:
    """Every rank holds the same model bitwise and the same losses; both match the reference to 1e-12."""
    runs = [torch.load(out / f"{index}-rank{r}.pt", weights_only=True) for r in range(world)]
    params, losses, _ = ref
    for run in runs:
        assert run["losses"] == runs[0]["losses"]
        assert all(torch.equal(a, b) for a, b in zip(run["layers"], runs[0]["layers"]))
    assert len(runs[0]["layers"]) == len(params)
    for got, want in zip(runs[0]["layers"], params):
        assert torch.allclose(got, want, rtol=0, atol=1e-12), (got - want).abs().max()
    assert runs[0]["losses"] == pytest.approx(losses, rel=0, abs=1e-12)


def test_pp2_dp2_matches_autograd_for_every_schedule_and_clips_like_torch(tmp_path):
    configs = [{"stages": 2 * v, "schedule": s, "virtual": v, "microbatches": 2, "data_parallel": 2}
               for s, v in SCHEDULES]
    configs.append({"stages": 2, "schedule": "zb-h1", "microbatches": 2, "data_parallel": 2,
                    "clip_grad_norm": CLIP, "l2": 1e-3})
    run_workers(4, configs, tmp_path)
    plain = reference(1)
    for i in range(len(SCHEDULES)):
        check(tmp_path, i, 4, plain)
    clipped = reference(1, CLIP, 1e-3)
    assert min(clipped[2]) > CLIP  # the threshold binds at every step
    check(tmp_path, len(SCHEDULES), 4, clipped)
    assert not torch.allclose(clipped[0][0], reference(1, None, 1e-3)[0][0])  # clipping changed the result


def test_pp2_dp1_and_pp1_dp2_match_autograd(tmp_path):
    configs = [{"stages": 2 * v, "schedule": s, "virtual": v, "microbatches": 2, "data_parallel": 1}
               for s, v in SCHEDULES]
    configs += [{"stages": v, "schedule": s, "virtual": v, "microbatches": 2, "data_parallel": 2}
                for s, v in SCHEDULES]
    run_workers(2, configs, tmp_path)
    plain = reference(1)
    for i in range(len(configs)):
        check(tmp_path, i, 2, plain)


def test_two_torchrun_launchers_as_two_nodes_agree_on_every_rank(tmp_path):
    """``torchrun --nnodes 2`` twice on this machine (2 x 2 processes, PP 2 x DP 2, c10d rendezvous)."""
    port = free_port()
    args = ["--dataset", "synthetic", "--samples", "96", "--widths", "6,10,8,9,4", "--batch-size", "12", "--epochs", "1",
            "--dtype", "float64", "--lr", "0.05", "--partition", "uniform", "--no-progress", "--stages", "2",
            "--microbatches", "2", "--data-parallel", "2", "--json", str(tmp_path / "rank{rank}.json")]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "2",
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
                               "--rdzv-conf", f"is_host={int(node == 0)}",  # both "nodes" are this host: say which serves
                               str(ROOT / "scripts" / "train.py"), *args],
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in range(2)]
    logs = [node.communicate(timeout=240) for node in nodes]
    for node, (_, err) in zip(nodes, logs):
        assert node.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert sorted((r["grid"]["dp_rank"], r["grid"]["pp_rank"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for r in results:  # the same losses and accuracies on every rank, not only where the last stage lives
        assert r["step_losses"] == results[0]["step_losses"]
        assert r["epochs"][0]["train_accuracy"] == results[0]["epochs"][0]["train_accuracy"]
        assert r["test_accuracy"] == results[0]["test_accuracy"]
    assert results[0]["step_losses"] == pytest.approx(reference(1)[1], rel=0, abs=1e-12)
    # both predictions add each stage's ring all-reduce over the 2 replicas on the link, named in the cost model
    model = results[0]["cost_model"]
    reduce, link = model["gradient_all_reduce"], model["link"]
    assert reduce["replicas"] == 2 and reduce["origin"] == link["origin"] == "measured"
    assert reduce["bytes"] == [8.0 * (6 * 10 + 10 + 10 * 8 + 8), 8.0 * (8 * 9 + 9 + 9 * 4 + 4)]  # float64 W and b
    bandwidth = link["bandwidth"] or math.inf
    assert reduce["seconds"] == pytest.approx([2 * (link["latency"] + n / 2 / bandwidth) for n in reduce["bytes"]])
    for r in results:
        assert r["predicted_terms"]["gradient all-reduce"] >= 0.0
        assert r["predicted_step_time"] == pytest.approx(sum(r["predicted_terms"].values()), rel=1e-9)
        assert r["prediction_basis_k_devices"].startswith("on 4 devices (2 replicas of 2), link measured")
    printed = "".join(out for out, _ in logs)
    lines = [ln.split("] ", 1)[1] for ln in printed.splitlines() if ln.startswith("[rank ") and "train loss" in ln]
    assert len(lines) == 4 and len({ln.rsplit(",", 1)[0] for ln in lines}) == 1, printed[-2000:]
