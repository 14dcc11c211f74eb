"""The training command: the default reaches 95% on digits, resume is exact, bad input fails in one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.engine.pipeline import NonFiniteLoss
from runtime.train.checkpoint import load_checkpoint
from runtime.train.config import TrainConfig
from runtime.train.datasets import load_idx
from runtime.train.trainer import train

ROOT = Path(__file__).resolve().parents[3]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]


def test_default_run_reaches_95_percent_on_digits(tmp_path):
    """The README's main command, unchanged: 20 epochs, 4 emulated stages, 1F1B."""
    out = tmp_path / "r.json"
    proc = subprocess.run(TRAIN + ["--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["test_accuracy"][-1] >= 0.95
    assert len(res["train_loss"]) == 20 and res["train_loss"][-1] < res["train_loss"][0]
    assert res["config"]["schedule"] == "1f1b" and len(res["plan"]) == 4
    assert "test accuracy" in proc.stdout and "predicted" in proc.stdout
    assert res["measured_step_time"]["median"] > 0 and res["predicted_step_time"] > 0


def test_resume_gives_the_same_parameters_bitwise(tmp_path):
    spec = MLPSpec((64, 32, 16, 10))
    base = dict(spec=spec, epochs=4, stages=3, microbatches=4, progress=False, partition="uniform", batch_size=32)
    train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "straight")))
    train(TrainConfig(**{**base, "epochs": 2}, checkpoint_dir=str(tmp_path / "split")))
    res = train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "split"), resume=True))
    assert [e["epoch"] for e in res["epochs"]] == [1, 2, 3, 4]
    assert len(res["step_losses"]) == res["optimizer_steps"] == 4 * (1438 // 32)
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    for x, y in zip(a.layers, b.layers, strict=True):
        assert torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias)
    assert not list((tmp_path / "split").glob("*epoch2.pt")), "older epochs are dropped once a newer one is complete"
    with pytest.raises(ValueError, match="already at epoch 4"):
        train(TrainConfig(**base, checkpoint_dir=str(tmp_path / "split"), resume=True))
    with pytest.raises(ValueError, match="samples"):
        train(TrainConfig(**{**base, "epochs": 5, "samples": 999}, checkpoint_dir=str(tmp_path / "split"), resume=True))


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--dataset", "idx:/nonexistent"], "no such folder"),
        (["--widths", "10,5,10"], "first width"),
        (["--widths", "64"], "widths"),
        (["--microbatches", "5"], "microbatches"),
        (["--stages", "9"], "stages"),
        (["--device", "cuda:7"], "device"),
        (["--lr", "1e6", "--stages", "1", "--microbatches", "1", "--epochs", "3"], "non-finite"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, needle):
    proc = subprocess.run(TRAIN + args + ["--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_idx_folder_is_read(tmp_path):
    """Tiny MNIST-style IDX files written here train end to end."""
    import numpy as np

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 16)):
        images = rng.integers(0, 256, (n, 3, 4), dtype=np.uint8)
        labels = (images.reshape(n, -1).sum(1) % 3).astype(np.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array([n, 3, 4], ">u4").tobytes()
                                                             + images.tobytes())
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes()
                                                             + labels.tobytes())
    res = train(TrainConfig(spec=MLPSpec((12, 8, 3)), dataset=f"idx:{tmp_path}", epochs=1, stages=2, microbatches=2,
                            batch_size=16, progress=False, partition="uniform"))
    assert 0.0 <= res["test_accuracy"][0] <= 1.0 and len(res["train_loss"]) == 1
    data = load_idx(tmp_path)
    assert data.x_train.shape == (64, 12) and data.num_classes == 3
    assert torch.equal(data.y_test, torch.from_numpy(labels.astype(np.int64)))
    assert data.x_test.max() <= 1.0


def test_trace_holds_measured_and_predicted_rows(tmp_path):
    trace = tmp_path / "t.json"
    res = train(TrainConfig(spec=MLPSpec((64, 16, 16, 10)), epochs=1, stages=3, microbatches=3, batch_size=48,
                            progress=False, partition="uniform", trace=str(trace), schedule=ScheduleKind.ZB_H1))
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    measured = [e for e in spans if e["pid"] == 0]
    names = {e["name"] for e in measured}
    assert {"0F0", "2B2"} <= names and any(n.startswith("0W") for n in names)
    assert all(e["dur"] >= 0 for e in spans)
    assert len(res["measured_stage_costs"]) == 3 and all(c["f"] > 0 and c["w"] > 0 for c in res["measured_stage_costs"])


def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    base = dict(spec=MLPSpec((64, 32, 10)), stages=2, microbatches=2, progress=False, partition="uniform",
                checkpoint_dir=str(tmp_path))
    train(TrainConfig(**base, epochs=1))
    saved = load_checkpoint(tmp_path).layers[0].weight
    with pytest.raises(ValueError, match="lr 0.1 .now 1e.30"):
        train(TrainConfig(**base, epochs=3, lr=1e30, resume=True))
    with pytest.raises(NonFiniteLoss, match=r"step \d+, first seen on stage \d"):
        train(TrainConfig(**base, epochs=3, lr=1e30, overwrite=True))
    assert json.loads((tmp_path / "meta.json").read_text())["epoch"] == 1
    assert torch.equal(load_checkpoint(tmp_path).layers[0].weight, saved)
