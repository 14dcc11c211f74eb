"""Two gloo processes: the run writes both predictions, the measured step and its error, each labelled, before/after."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]

pytestmark = pytest.mark.dist


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_write_both_predictions_and_the_error(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "g.png"
    args = ["--dataset", "synthetic", "--samples", "256", "--widths", "16,32,32,32,8", "--batch-size", "32",
            "--microbatches", "4", "--stages", "2", "--epochs", "1", "--no-progress", "--json", str(out),
            "--gantt", str(png), "--link", "pcie"]
    port, procs = _port(), []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "PIPEGRAPH_CACHE": str(tmp_path / "cache")}
        procs.append(subprocess.Popen(TRAIN + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    texts = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        texts.append(stdout)
    res = json.loads(out.read_text())
    assert res["mode"] == "torchrun"
    for key in ("predicted_step_time", "predicted_step_time_k_devices", "prediction_error"):
        assert isinstance(res[key], float) and math.isfinite(res[key]), key
    assert math.isfinite(res["measured_step_time"]["median"]) and res["measured_step_time"]["median"] > 0
    assert res["prediction_basis"].startswith("this run: 2 processes overlap")
    assert res["prediction_basis_k_devices"].startswith("on 2 devices, link pcie")
    model = res["cost_model"]
    assert model["layers"]["origin"] == "profiled" and model["link"]["origin"] == "measured"
    assert "gloo" in model["link"]["note"] and model["loss_all_reduce"]["origin"] == "measured"
    assert res["link_k_devices"]["origin"] == "given"
    assert res["prediction_explained"]["contributors"], "the error's contributors are listed"
    assert "step time, this run: predicted" in "".join(texts) and png.stat().st_size > 0
    cached = json.loads((tmp_path / "cache" / "links.json").read_text())
    assert [e["conditions"]["transport"] for e in cached] == ["gloo"]
