"""The rough edges a newcomer hit, each pinned: defaults in --help, one range notation, bad values and paths refused early."""

import os
import random
import re
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from partition.dot import to_dot
from partition.graph import GraphMode, MLPSpec, build_graph
from partition.plan import format_ranges, parse_ranges
from partition.units import count
from runtime.train.config import TrainConfig
from runtime.train.fits import check_fits, predicted_bytes
from runtime.train.layout import check_device
from runtime.train.outputs import check_outputs

ROOT = Path(__file__).resolve().parents[3]


def script(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> None:
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_train_help_shows_every_default():
    text = script("train.py", "--help").stdout
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"^  (--[\w-]+).*?(?=^  --|^\S|\Z)", text, re.M | re.S)}
    expected = {"--batch-size": "64", "--lr": "0.1", "--epochs": "20", "--stages": "4", "--microbatches": "4",
                "--schedule": "1f1b", "--momentum": "0.9", "--dtype": "float32", "--virtual-stages": "1",
                "--activation": "relu", "--partition": "optimal", "--device": "cpu", "--bias": "all"}
    for flag, default in expected.items():
        assert re.search(rf"\(default:?\s+{re.escape(default)}\)", " ".join(blocks[flag].split())), (flag, blocks[flag])


def test_compare_help_shows_every_default():
    text = script("compare.py", "--help").stdout
    blocks = {m.group(1): m.group(0) for m in re.finditer(r"^  (--[\w-]+).*?(?=^  --|^\S|\Z)", text, re.M | re.S)}
    expected = {"--activation": "relu", "--l2": "0.0", "--loss": "cross-entropy", "--batch": "128", "--devices": "4",
                "--lr-rule": "linear", "--optimizer": "sgd", "--momentum": "0.9", "--seed": "0", "--dtype": "float32",
                "--device": "cpu", "--out": "out/compare", "--dataset": "digits"}
    for flag, default in expected.items():
        assert re.search(rf"\(default:?\s+{re.escape(default)}\)", " ".join(blocks[flag].split())), (flag, blocks[flag])


def test_one_range_notation_in_and_out():
    rng = random.Random(0)
    for _ in range(50):
        layers = rng.randint(1, 9)
        cuts = sorted(rng.sample(range(1, layers), rng.randint(0, layers - 1)))
        bounds = [0, *cuts, layers]
        ranges = tuple(zip(bounds, bounds[1:]))
        text = format_ranges(ranges)
        assert parse_ranges(text, layers) == ranges
        assert all(re.fullmatch(r"\d+-\d+", part) for part in text.split(","))
    assert format_ranges(((0, 2), (2, 3))) == "0-1,2-2" and parse_ranges("0-1,2", 3) == ((0, 2), (2, 3))
    dot = to_dot(build_graph(MLPSpec((4, 3, 3, 2)), GraphMode.FORWARD), stages=((0, 2), (2, 3)))
    assert "stage 0: layers 0-1 = W(1), W(2)" in dot and "stage 1: layers 2-2 = W(3)" in dot
    r = script("plan.py", "--widths", "8,8,8,8,4", "--stages", "3", "--microbatch", "4", "--ranges", "0-1,2-2,3-3")
    assert r.returncode == 0, r.stderr
    table = [line.split() for line in r.stdout.splitlines() if re.match(r"\s+[0-2]\s+\d", line)]
    assert [row[1] for row in table[:3]] and all(re.fullmatch(r"\d+-\d+", row[1]) for row in table)
    assert re.search(r"given\s+0-1,2-2,3-3\s", r.stdout)


def test_train_prints_the_plan_in_the_same_notation():
    r = script("train.py", "--epochs", "1", "--stages", "2", "--partition", "0-2,3", "--no-progress", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "plan (layers per stage): 0-2,3-3 " in r.stdout


def test_output_paths_are_checked_before_the_first_step(tmp_path):
    r = script("train.py", "--epochs", "30", "--json", "/proc/pg.json")
    one_line_error(r, "--json", "/proc/pg.json")
    assert "epoch" not in r.stdout
    r = script("train.py", "--epochs", "30", "--trace", str(tmp_path / "j.json"), "--gantt", str(tmp_path))
    one_line_error(r, "--gantt", "folder")
    cfg = TrainConfig(trace=str(tmp_path / "nodir" / "t.json"), json=str(tmp_path / "a" / "b" / "r.json"),
                      checkpoint_dir=str(tmp_path / "ck" / "pt"))
    check_outputs(cfg)
    assert (tmp_path / "nodir").is_dir() and (tmp_path / "a" / "b").is_dir() and not (tmp_path / "ck").exists()
    assert not (tmp_path / "nodir" / "t.json").exists()
    (tmp_path / "locked").mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes into a read-only folder anyway: nothing to refuse there
        with pytest.raises(ValueError, match="--checkpoint-dir: cannot write"):
            check_outputs(TrainConfig(checkpoint_dir=str(tmp_path / "locked" / "ck")))
    with pytest.raises(ValueError, match="--checkpoint-dir: cannot write"):
        check_outputs(TrainConfig(checkpoint_dir="/proc/pipegraph-ck"))


def test_output_checks_of_several_ranks_at_once_never_trip_over_each_other(tmp_path):
    """Under torchrun every rank checks the same --json path and --checkpoint-dir at the same moment (a shared probe
    file, or a folder made for the proof and removed again, once let one rank's check undo another's: that rank
    quit, and its peer waited in the process group's start until it timed out)."""
    target = tmp_path / "out" / "result.json"
    errors = []

    def check() -> None:
        try:
            for _ in range(200):
                check_outputs(TrainConfig(json=str(target), trace=str(target.with_suffix(".trace.json")),
                                          checkpoint_dir=str(tmp_path / "ck" / "pt")))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    workers = [threading.Thread(target=check) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert errors == [] and not target.exists() and list((tmp_path / "out").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the checkpoint folder is left for the run to make


def test_an_oversize_run_is_refused_before_allocating():
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = script("train.py", "--widths", "64,50000,50000,10", "--stages", "3")
    one_line_error(r, "memory:", "on cpu", "available", "narrower layers")
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert after < max(before, 2 * 1024 * 1024)  # kilobytes: the child never came near the 28 GiB it would need


def test_the_refusal_says_which_batch_fits():
    cfg = TrainConfig(spec=MLPSpec((16, 32, 32, 4)), batch_size=64, microbatches=4, stages=2, momentum=0.0)
    need = predicted_bytes(cfg)["cpu"]
    check_fits(cfg, available=lambda device: need)  # exactly enough: runs
    one, two = predicted_bytes(cfg, 1)["cpu"], predicted_bytes(cfg, 2)["cpu"]
    rows = 5  # what fits when the device has the bytes of 5-row microbatches: --batch-size 20
    with pytest.raises(ValueError, match=r"--batch-size 20 would fit") as err:
        check_fits(cfg, available=lambda device: one + (rows - 1) * (two - one))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="alone need"):
        check_fits(cfg, available=lambda device: 2 * one - two - 1)


def test_cpu_index_and_zero_or_negative_values_name_their_flag():
    with pytest.raises(ValueError, match="cpu:5 does not exist"):
        check_device("cpu:5")
    check_device("cpu:0")
    one_line_error(script("train.py", "--device", "cpu:5"), "cpu:5")
    one_line_error(script("plan.py", "--memory-report", "--batch", "0"), "--batch", "> 0")
    one_line_error(script("plan.py", "--microbatches", "0"), "--microbatches")
    one_line_error(script("plan.py", "--memory-report", "--batch", "-7"), "--batch", "-7")
    one_line_error(script("train.py", "--batch-size", "0"), "batch-size")


def test_plurals():
    assert [count(1, "device"), count(2, "device"), count(1, "process"), count(3, "process")] == \
        ["1 device", "2 devices", "1 process", "3 processes"]
    r = script("simulate.py", "--stages", "1", "--microbatches", "1")
    assert r.returncode == 0 and r.stdout.startswith("1f1b: 1 rank, 1 stage, 1 microbatch;"), r.stderr


@pytest.mark.dist
@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="no torchrun")
def test_torchrun_world_size_mismatch_is_said_once_with_a_nonzero_exit():
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(ROOT / "scripts" / "train.py"), "--stages", "4"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    ours = [line for line in r.stderr.splitlines() if line.startswith("train.py")]
    assert r.returncode != 0
    assert ours == ["train.py [rank 0]: error: stages: 1 replica of 4 stages of 1f1b need 4 processes, torchrun started 2"]


def test_the_onednn_kernel_is_refused_in_one_line_where_it_cannot_run():
    one_line_error(script("train.py", "--gemm", "onednn"), "gemm: onednn needs the direct engine")
    one_line_error(script("train.py", "--gemm", "onednn", "--engine", "direct", "--dtype", "float64"),
                   "gemm: onednn computes in float32 only, not float64")
    one_line_error(script("train.py", "--gemm", "onednn", "--engine", "direct", "--device", "cuda"),
                   "gemm: onednn runs on the CPU only")


def test_a_run_on_the_onednn_kernel_trains_and_predicts(tmp_path):
    out = tmp_path / "r.json"
    r = script("train.py", "--gemm", "onednn", "--engine", "direct", "--epochs", "1", "--samples", "256", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = __import__("json").loads(out.read_text())
    assert data["config"]["gemm"] == "onednn" and data["predicted_step_time"] > 0 and data["measured_step_time"]["median"] > 0
    from runtime.engine.stage import Engine
    from runtime.ops.gemm import Gemm
    from runtime.train.process import pipeline_config

    cfg = TrainConfig(engine=Engine.DIRECT, gemm=Gemm.ONEDNN)
    assert pipeline_config(cfg, ("cpu",) * cfg.stages).gemm is Gemm.ONEDNN
