"""Real processes over gloo: the same parameters as single-process emulation; lost ranks end every process."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runtime.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[3]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
COMMON = ["--dataset", "synthetic", "--samples", "96", "--widths", "6,10,8,9,4", "--batch-size", "12", "--epochs", "2",
          "--dtype", "float64", "--lr", "0.05", "--no-progress", "--partition", "uniform"]

pytestmark = pytest.mark.dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, args: list[str], extra_env: dict | None = None) -> list[subprocess.Popen]:
    """Start ``world`` ranks with the environment torchrun would set (env:// rendezvous on loopback)."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1", **(extra_env or {})}
        procs.append(subprocess.Popen(TRAIN + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def final_params(folder: Path, stages: int, epoch: int) -> list[torch.Tensor]:
    found = load_checkpoint(folder)
    assert found.manifest.epoch == epoch and found.manifest.layout["stages"] == stages
    return [t for st in found.layers for t in (st.weight, st.bias) if t is not None]


@pytest.mark.parametrize("world,schedule,extra", [(2, "1f1b", []), (4, "gpipe", []), (2, "zb-h1", [])])
def test_processes_match_single_process(tmp_path, world, schedule, extra):
    args = COMMON + ["--stages", str(world), "--schedule", schedule, "--microbatches", "4", *extra]
    single = subprocess.run(TRAIN + args + ["--checkpoint-dir", str(tmp_path / "one")], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    procs = launch(world, args + ["--checkpoint-dir", str(tmp_path / "many")])
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    a, b = final_params(tmp_path / "one", world, 2), final_params(tmp_path / "many", world, 2)
    assert len(a) == len(b) == 2 * 4
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("mode", ["kill", "raise"])
def test_lost_rank_ends_every_process_naming_it(mode):
    args = COMMON + ["--stages", "2", "--microbatches", "4", "--epochs", "50", "--timeout", "30"]
    procs = launch(2, args, {"PIPEGRAPH_FAULT": f"1:3:{mode}"})
    outs = [p.communicate(timeout=60) for p in procs]  # a survivor that hangs fails here (TimeoutExpired)
    assert all(p.returncode != 0 for p in procs)
    assert "rank 1" in outs[0][1], outs[0][1]
    assert "Traceback" not in outs[0][1], outs[0][1]
