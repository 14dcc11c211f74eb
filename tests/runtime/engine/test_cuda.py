"""GPU tier (marker ``cuda``, skipped without a GPU): emulated stages on one GPU, NCCL with one process per GPU."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.comm import LocalTransport
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[3]


def run(devices, kind, dtype=torch.float64, defer_w=False, engine=Engine.AUTOGRAD):
    spec = MLPSpec((16, 32, 24, 32, 20, 10), "relu", True, 0.01)
    ranges = ((0, 1), (1, 2), (2, 4), (4, 5))
    cfg = PipelineConfig(spec, ranges, kind, 4, tuple(devices), dtype, 0, 1, True, defer_w, engine)
    pipe = Pipeline(cfg, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9), LocalTransport())
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(32, 16, generator=g, dtype=torch.float64)
        y = torch.randint(0, 10, (32,), generator=g)
        pipe.step(x, y, 32, step)
    return [p.detach().cpu() for s in range(4) for p in pipe.stages[s].parameters()]


@pytest.mark.parametrize("kind", [ScheduleKind.ONE_F_ONE_B, ScheduleKind.ZB_H1, ScheduleKind.GPIPE])
@pytest.mark.parametrize("defer_w,engine", [(False, Engine.AUTOGRAD), (True, Engine.AUTOGRAD), (True, Engine.DIRECT)])
def test_four_stages_emulated_on_one_gpu_match_cpu(kind, defer_w, engine):
    cpu = run(["cpu"] * 4, kind, defer_w=defer_w)
    gpu = run(["cuda:0"] * 4, kind, defer_w=defer_w, engine=engine)
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)


def test_bf16_pipeline_on_gpu_tracks_float64():
    ref = run(["cuda:0"] * 4, ScheduleKind.ONE_F_ONE_B)
    low = run(["cuda:0"] * 4, ScheduleKind.ONE_F_ONE_B, dtype=torch.bfloat16)
    worst = max((a - b.double()).abs().max().item() for a, b in zip(ref, low))
    assert worst < 0.05


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL with one process per GPU needs 2+ GPUs")
def test_nccl_one_process_per_gpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(ROOT / "scripts" / "train.py"),
           "--stages", "2", "--device", "cuda", "--epochs", "1", "--no-progress", "--partition", "uniform",
           "--json", str(tmp_path / "r.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "r.json").exists()
