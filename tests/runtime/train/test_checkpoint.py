"""Checkpoints: per layer and layout-free (resume on another layout is bitwise), export/import, damage refused in one line."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.engine.stage import Engine
from runtime.train import checkpoint as ckpt
from runtime.train.ckpt_guard import FolderLock
from runtime.train.config import OptimizerKind, TrainConfig
from runtime.train.export import export_state_dict, import_state_dict
from runtime.train.trainer import train

ROOT = Path(__file__).resolve().parents[3]
TRAIN = [sys.executable, str(ROOT / "scripts" / "train.py")]
CONVERT = [sys.executable, str(ROOT / "scripts" / "convert.py")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SPEC = MLPSpec((64, 24, 16, 12, 10))
# fuse_w=False: every layout sums the microbatches' weight gradients in the same order, so any two are bitwise equal
BASE = dict(spec=SPEC, microbatches=4, batch_size=128, dtype="float64", fuse_w=False, progress=False, partition="uniform")
CLI = ["--widths", "64,24,16,10", "--stages", "1", "--microbatches", "2", "--batch-size", "128", "--no-progress"]


def cfg(folder: Path, **kw) -> TrainConfig:
    return TrainConfig(**{**BASE, "checkpoint_dir": str(folder), **kw})


def same_state(a: ckpt.Checkpoint, b: ckpt.Checkpoint) -> bool:
    """Parameters and every optimizer state tensor bitwise equal."""
    for x, y in zip(a.layers, b.layers, strict=True):
        if not torch.equal(x.weight, y.weight) or (x.bias is None) != (y.bias is None):
            return False
        if x.bias is not None and not torch.equal(x.bias, y.bias):
            return False
        for name in ckpt.PARAMS:
            if x.state[name].keys() != y.state[name].keys():
                return False
            if not all(torch.equal(v, y.state[name][k]) for k, v in x.state[name].items()):
                return False
    return True


@pytest.mark.parametrize("first,then", [
    (dict(stages=3, schedule=ScheduleKind.ONE_F_ONE_B), dict(stages=2, schedule=ScheduleKind.ZB_H1)),
    (dict(stages=2, optimizer=OptimizerKind.ADAM, lr=0.01),
     dict(stages=4, optimizer=OptimizerKind.ADAM, lr=0.01, schedule=ScheduleKind.ONE_F_ONE_B, engine=Engine.DIRECT,
          partition="0-0,1-1,2-2,3-3")),
    (dict(stages=4, schedule=ScheduleKind.INTERLEAVED_1F1B, virtual=2), dict(stages=1, partition="0-3")),
], ids=["1f1b3-to-zbh1x2", "adam-2-to-1f1b4-direct", "interleaved-to-one"])
def test_resume_on_another_layout_equals_an_uninterrupted_run_bitwise(tmp_path, first, then):
    train(cfg(tmp_path / "straight", epochs=4, **first))
    train(cfg(tmp_path / "split", epochs=2, **first))
    lines = []
    res = train(cfg(tmp_path / "split", epochs=4, resume=True, **then), log=lines.append)
    assert any(line.startswith("resumed from epoch 2") for line in lines), lines
    a, b = ckpt.load_checkpoint(tmp_path / "straight"), ckpt.load_checkpoint(tmp_path / "split")
    assert a.manifest.epoch == b.manifest.epoch == 4
    assert same_state(a, b)
    assert [h["step_losses"] for h in a.history] == [h["step_losses"] for h in b.history]
    assert res["step_losses"] == [x for h in a.history for x in h["step_losses"]]
    assert b.manifest.layout["stages"] == then["stages"] and a.manifest.layout["stages"] == first["stages"]


def launch(world: int, args: list[str]) -> list[subprocess.CompletedProcess]:
    """``world`` ranks of train.py with the environment torchrun would set (loopback rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [subprocess.Popen(TRAIN + args, env={**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                                 "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, outs)]


@pytest.mark.dist
def test_resume_as_pipeline_x_data_parallel_matches_to_1e_12(tmp_path):
    """3 stages in one process for 2 epochs, then PP 2 x DP 2 (4 processes): the replicas' gradients are summed
    in another order than one pipeline's, so the match is to rounding, not bitwise."""
    common = ["--dataset", "synthetic", "--samples", "96", "--widths", "6,10,8,9,4", "--batch-size", "12",
              "--microbatches", "2", "--dtype", "float64", "--lr", "0.05", "--partition", "uniform", "--no-progress"]
    for folder, epochs in (("straight", "4"), ("split", "2")):
        done = subprocess.run(TRAIN + common + ["--stages", "3", "--epochs", epochs, "--checkpoint-dir",
                                                str(tmp_path / folder)], capture_output=True, text=True, env=ENV)
        assert done.returncode == 0, done.stderr
    ranks = launch(4, common + ["--stages", "2", "--data-parallel", "2", "--epochs", "4", "--resume",
                                "--checkpoint-dir", str(tmp_path / "split")])
    assert all(r.returncode == 0 for r in ranks), [r.stderr[-2000:] for r in ranks]
    assert "resumed from epoch 2" in ranks[0].stdout
    a, b = ckpt.load_checkpoint(tmp_path / "straight"), ckpt.load_checkpoint(tmp_path / "split")
    assert b.manifest.layout["data_parallel"] == 2 and b.manifest.epoch == 4
    for x, y in zip(a.history, b.history, strict=True):  # written by rank 0, which holds only the first stage
        assert len(x["step_losses"]) == len(y["step_losses"]) > 0
        assert max(abs(u - v) for u, v in zip(x["step_losses"], y["step_losses"])) <= 1e-12
    for x, y in zip(a.layers, b.layers, strict=True):
        for u, v in ((x.weight, y.weight), (x.bias, y.bias),
                     (x.state["weight"]["momentum_buffer"], y.state["weight"]["momentum_buffer"])):
            assert (u - v).abs().max().item() <= 1e-12


@pytest.mark.dist
def test_under_torchrun_every_rank_refuses_in_one_line(tmp_path):
    """The verdict of the rank that holds the folder reaches the others as a tensor: each exits non-zero."""
    args = ["--dataset", "synthetic", "--samples", "96", "--widths", "6,10,8,4", "--batch-size", "12", "--stages", "2",
            "--microbatches", "2", "--no-progress", "--resume", "--checkpoint-dir", str(tmp_path / "nothing")]
    ranks = launch(2, args)
    assert all(r.returncode != 0 for r in ranks)
    assert "holds no checkpoint" in ranks[0].stderr and "Traceback" not in ranks[0].stderr + ranks[1].stderr
    assert len(ranks[0].stderr.strip().splitlines()) == 1, ranks[0].stderr


def test_files_are_per_layer_and_meta_stays_small(tmp_path):
    train(cfg(tmp_path, epochs=1, stages=2))
    size1 = (tmp_path / ckpt.META).stat().st_size
    train(cfg(tmp_path, epochs=3, stages=2, resume=True))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["history.json", "layer0-epoch3.pt", "layer1-epoch3.pt", "layer2-epoch3.pt", "layer3-epoch3.pt",
                     "lock.json", "meta.json"]
    assert (tmp_path / ckpt.META).stat().st_size == size1 < 2048
    history = json.loads((tmp_path / ckpt.HISTORY).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and "history" not in json.loads((tmp_path / ckpt.META).read_text())
    layer = torch.load(tmp_path / "layer1-epoch3.pt", weights_only=True)
    assert layer["weight"].shape == (16, 24) and set(layer["state"]["weight"]) == {"momentum_buffer"}


def test_export_import_round_trip_is_bit_identical(tmp_path):
    train(cfg(tmp_path / "a", epochs=1, stages=2))
    first = export_state_dict(tmp_path / "a", tmp_path / "a.pt")
    seq = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                        nn.Linear(12, 10)).double()
    seq.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))  # strict: the same keys and shapes
    import_state_dict(tmp_path / "a.pt", tmp_path / "b", "relu", "cross-entropy", 0.0)
    second = export_state_dict(tmp_path / "b", tmp_path / "b.pt")
    assert list(first) == list(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    lines = []
    res = train(cfg(tmp_path / "b", epochs=2, stages=2, resume=True), log=lines.append)  # fine-tune the import
    assert lines[0].startswith("resumed from epoch 0") and len(res["epochs"]) == 2


def test_a_users_model_with_bias_on_some_layers_imports_and_exports(tmp_path):
    seq = nn.Sequential(nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 3))
    torch.save(seq.state_dict(), tmp_path / "user.pt")
    spec = import_state_dict(tmp_path / "user.pt", tmp_path / "c", "tanh", "squared-error", 0.01, bias="1")
    assert spec.bias_name == "1" and spec.widths == (6, 5, 3)
    back = export_state_dict(tmp_path / "c", tmp_path / "back.pt")
    assert list(back) == ["0.weight", "2.weight", "2.bias"]
    assert all(torch.equal(back[k], v) for k, v in seq.state_dict().items())
    with pytest.raises(ValueError, match="--bias all does not match"):
        import_state_dict(tmp_path / "user.pt", tmp_path / "d", "tanh", "squared-error", 0.0, bias="all")
    torch.save({"0.weight": torch.zeros(5, 6), "bn.running_mean": torch.zeros(5)}, tmp_path / "bn.pt")
    with pytest.raises(ValueError, match="bn.running_mean, which is not the weight or bias of a Linear"):
        import_state_dict(tmp_path / "bn.pt", tmp_path / "e", "relu", "cross-entropy", 0.0)


def test_convert_command_line_round_trip_and_one_line_refusal(tmp_path):
    train(cfg(tmp_path / "a", epochs=1, stages=2))
    run = [*CONVERT, "export", str(tmp_path / "a"), str(tmp_path / "a.pt")]
    assert subprocess.run(run, capture_output=True, text=True, env=ENV).returncode == 0
    done = subprocess.run([*CONVERT, "import", str(tmp_path / "a.pt"), str(tmp_path / "b")], capture_output=True,
                          text=True, env=ENV)
    assert done.returncode == 0 and "bias all" in done.stdout, done.stderr
    assert all(torch.equal(x.weight, y.weight) for x, y in zip(ckpt.load_checkpoint(tmp_path / "a").layers,
                                                                ckpt.load_checkpoint(tmp_path / "b").layers))
    (tmp_path / "junk.pt").write_bytes(os.urandom(999))
    for args, needle in (([str(tmp_path / "junk.pt"), str(tmp_path / "c")], "is not a state_dict file"),
                         ([str(tmp_path / "a.pt"), str(tmp_path / "b")], "already holds a checkpoint")):
        one_line_failure(subprocess.run([*CONVERT, "import", *args], capture_output=True, text=True, env=ENV), needle)


def damage_layer_empty(folder):
    (folder / "layer1-epoch1.pt").write_bytes(b"")


def damage_layer_random(folder):
    (folder / "layer2-epoch1.pt").write_bytes(os.urandom(4096))


def damage_layer_unrelated(folder):
    torch.save(torch.ones(3), folder / "layer0-epoch1.pt")


def damage_layer_missing(folder):
    (folder / "layer3-epoch1.pt").unlink()


def damage_layer_other_run(folder):
    payload = torch.load(folder / "layer1-epoch1.pt", weights_only=True)
    torch.save({**payload, "run": "0123456789abcdef"}, folder / "layer1-epoch1.pt")


def damage_history(folder):
    (folder / ckpt.HISTORY).write_text("{}")


def meta_holding(value):
    return lambda folder: (folder / ckpt.META).write_text(json.dumps(value))


def damage_meta_torch(folder):
    torch.save({"epoch": 3}, folder / ckpt.META)


DAMAGE = {
    "empty-layer": (damage_layer_empty, "empty file"),
    "random-layer": (damage_layer_random, "unreadable by torch.load"),
    "unrelated-torch-save": (damage_layer_unrelated, "expected a layer file"),
    "missing-layer": (damage_layer_missing, "is missing"),
    "layer-of-another-run": (damage_layer_other_run, "belongs to another run"),
    "history": (damage_history, "expected a list of epochs"),
    "meta-list": (meta_holding([1, 2]), "found a list"),
    "meta-empty-object": (meta_holding({}), "found an empty object"),
    "meta-null": (meta_holding(None), "found null"),
    "meta-torch-save": (damage_meta_torch, "not JSON"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_checkpoint_is_one_line_and_keeps_the_last_good_epoch(tmp_path, name):
    train(cfg(tmp_path, epochs=1, stages=2))
    damage, needle = DAMAGE[name]
    damage(tmp_path)
    before = files(tmp_path)
    with pytest.raises(ValueError, match=needle) as info:
        train(cfg(tmp_path, epochs=3, stages=2, resume=True))
    assert "\n" not in str(info.value)
    assert files(tmp_path) == before


def files(folder: Path) -> dict[str, bytes]:
    """The checkpoint's files and their bytes (the lock file's owner line aside)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "lock.json"}


def run_cli(args, env=None, timeout=300):
    return subprocess.run(TRAIN + CLI + args, capture_output=True, text=True, timeout=timeout, env=env or ENV)


def one_line_failure(proc, needle):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr, proc.stderr


def test_command_line_refusals_are_one_line_and_nonzero(tmp_path):
    folder = tmp_path / "ck"
    one_line_failure(run_cli(["--checkpoint-dir", str(folder), "--resume"]), "holds no checkpoint")
    folder.mkdir()
    (folder / "notes.txt").write_text("garbage")
    one_line_failure(run_cli(["--checkpoint-dir", str(folder), "--resume"]), "holds no checkpoint")
    assert run_cli(["--checkpoint-dir", str(folder), "--epochs", "1"]).returncode == 0
    one_line_failure(run_cli(["--checkpoint-dir", str(folder), "--epochs", "1", "--seed", "1"]),
                     "already holds a checkpoint")
    (folder / ckpt.META).write_text("null")
    one_line_failure(run_cli(["--checkpoint-dir", str(folder), "--resume", "--epochs", "2"]), "found null")
    (folder / "layer0-epoch1.pt").write_bytes(b"")
    (folder / ckpt.META).write_text("[1, 2]")
    done = run_cli(["--checkpoint-dir", str(folder), "--epochs", "1", "--overwrite"])
    assert done.returncode == 0, done.stderr
    assert ckpt.load_checkpoint(folder).manifest.epoch == 1


def test_a_second_run_on_a_held_folder_is_refused(tmp_path):
    train(cfg(tmp_path, epochs=1, stages=1))
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                               "from runtime.train.ckpt_guard import FolderLock; lock = FolderLock(sys.argv[2], {});"
                               "print('held', flush=True); sys.stdin.read()", str(ROOT), str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = files(tmp_path)
        proc = subprocess.run(TRAIN + ["--widths", "64,24,16,12,10", "--checkpoint-dir", str(tmp_path), "--resume",
                                       "--epochs", "2", "--no-progress"], capture_output=True, text=True, env=ENV,
                              timeout=300)
        one_line_failure(proc, f"in use by another run (process {holder.pid} on")
        assert files(tmp_path) == before
        with pytest.raises(ValueError, match="in use by another run"):
            train(cfg(tmp_path, epochs=2, stages=1, resume=True))
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path, {}):  # in one process as well: the lock is not re-entrant
        with pytest.raises(ValueError, match="in use by another run"):
            train(cfg(tmp_path, epochs=2, stages=1, resume=True))


def test_kill_9_then_resume_continues_exactly_and_cleans_temporary_files(tmp_path):
    args = ["--dtype", "float64", "--seed", "3", "--no-fuse-w"]
    folder = tmp_path / "killed"
    victim = subprocess.Popen(TRAIN + CLI + args + ["--epochs", "1000", "--checkpoint-dir", str(folder)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while not (folder / ckpt.META).exists():  # until its first complete epoch, while it keeps running
            with pytest.raises(subprocess.TimeoutExpired):
                victim.wait(timeout=0.1)
    finally:
        victim.kill()  # SIGKILL: no cleanup of any kind
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    epoch = ckpt.load_checkpoint(folder).manifest.epoch
    assert epoch >= 1
    (folder / f".layer0-epoch{epoch + 1}.pt.k1l2ed").write_bytes(b"half")  # what a write killed mid-way leaves
    (folder / ".meta.json.x9").write_bytes(b"{")
    (folder / ".keep").write_bytes(b"not ours")
    total = ["--epochs", str(epoch + 2)]
    resumed = run_cli(args + total + ["--checkpoint-dir", str(folder), "--resume", "--stages", "2", "--schedule", "zb-h1"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from epoch {epoch}" in resumed.stdout
    assert not list(folder.glob(".*.pt.*")) and not list(folder.glob(".meta.json.*")) and (folder / ".keep").exists()
    straight = run_cli(args + total + ["--checkpoint-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr
    assert same_state(ckpt.load_checkpoint(folder), ckpt.load_checkpoint(tmp_path / "straight"))


def write_per_stage(folder: Path, found: ckpt.Checkpoint, bias: object) -> None:
    """The older format, as its writer laid it out: per stage, params [W, b, W, ...], optimizer.state_dict()."""
    plan = found.manifest.layout["ranges"]
    for stage, (start, stop) in enumerate(plan):
        named = [(t, st.state[n]) for st in found.layers[start:stop] for n, t in zip(ckpt.PARAMS, (st.weight, st.bias))
                 if t is not None]
        optimizer = {"state": {i: state for i, (_, state) in enumerate(named)},
                     "param_groups": [{"lr": 0.1, "params": list(range(len(named)))}]}
        torch.save({"stage": stage, "epoch": found.manifest.epoch, "params": [t for t, _ in named],
                    "optimizer": optimizer}, folder / f"stage{stage}-epoch{found.manifest.epoch}.pt")
    fp = {**found.manifest.fingerprint, "bias": bias, "plan": plan}
    (folder / ckpt.META).write_text(json.dumps({"epoch": found.manifest.epoch, "history": found.history,
                                                 "stages": len(plan), "fingerprint": fp}))


@pytest.mark.parametrize("bias,spec_bias", [(True, "all"), ("hidden", "hidden")])
def test_an_older_per_stage_checkpoint_resumes_exactly_or_is_refused_in_one_line(tmp_path, bias, spec_bias):
    spec = MLPSpec(SPEC.widths, bias=spec_bias)
    train(cfg(tmp_path / "straight", epochs=3, stages=3, spec=spec))
    train(cfg(tmp_path / "new", epochs=2, stages=3, spec=spec))
    old = tmp_path / "old"
    old.mkdir()
    write_per_stage(old, ckpt.load_checkpoint(tmp_path / "new"), bias)
    lines = []
    train(cfg(old, epochs=3, stages=2, resume=True, spec=spec), log=lines.append)
    assert "per-stage checkpoint of 3 stages" in lines[0]
    assert same_state(ckpt.load_checkpoint(old), ckpt.load_checkpoint(tmp_path / "straight"))
    assert not list(old.glob("stage*")), "the stage files go once the per-layer epoch is complete"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ckpt.META).write_text(json.dumps({"epoch": 2, "history": [], "stages": 2, "fingerprint": {}}))
    with pytest.raises(ValueError, match="per-stage manifest without"):
        train(cfg(tmp_path / "bad", epochs=3, stages=2, resume=True))
