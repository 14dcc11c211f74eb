"""A rank that dies or hangs ends every other rank of the grid, each naming it (torchrun and plain launches)."""

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TRAIN = str(ROOT / "scripts" / "train.py")
ARGS = ["--dataset", "synthetic", "--samples", "96", "--widths", "6,10,8,9,4", "--batch-size", "12", "--epochs", "50",
        "--dtype", "float64", "--microbatches", "2", "--no-progress", "--partition", "uniform"]
LINE = re.compile(r"^train\.py \[rank (\d+)\]: failed: (.*)$", re.MULTILINE)

pytestmark = pytest.mark.dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def survivor_lines(text: str) -> dict[int, str]:
    """Each rank's one-line failure report (the last, should a rank print more than one)."""
    return {int(rank): line for rank, line in LINE.findall(text)}


@pytest.mark.parametrize("layout,victim", [(["--stages", "4"], 2), (["--stages", "2", "--data-parallel", "2"], 3)],
                         ids=["pp4", "pp2xdp2"])
def test_killed_rank_is_named_by_every_survivor_under_torchrun(layout, victim):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", TRAIN,
           *ARGS, *layout, "--timeout", "30"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIPEGRAPH_FAULT": f"{victim}:3:kill"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode != 0
    lines = survivor_lines(done.stderr)
    assert sorted(lines) == sorted(set(range(4)) - {victim}), done.stderr[-4000:]
    for rank, line in lines.items():
        assert line == f"lost rank {victim} (its process died or was killed)", (rank, line)
    assert "Traceback" not in "".join(ln for ln in done.stderr.splitlines(True) if ln.startswith("train.py"))


def test_stopped_rank_is_named_as_a_timeout_by_every_survivor():
    port, victim = free_port(), 2
    procs = []
    for rank in range(4):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "4", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1",
               "PIPEGRAPH_FAULT": f"{victim}:3:stop"}
        procs.append(subprocess.Popen([sys.executable, TRAIN, *ARGS, "--stages", "2", "--data-parallel", "2",
                                       "--timeout", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        for rank, p in enumerate(procs):
            if rank == victim:
                continue
            _, err = p.communicate(timeout=120)
            assert p.returncode == 1, err[-3000:]
            assert survivor_lines(err) == {rank: f"timed out after 5 s waiting for rank {victim} (it hangs or is "
                                                 f"stopped)"}, err[-3000:]
    finally:
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].communicate(timeout=60)
