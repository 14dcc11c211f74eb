"""simulate.py with a given model: the saved profile's layer times summed per stage, boundaries sized from widths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from partition.timing import StageCost
from runtime.train.profile import Profile

ROOT = Path(__file__).resolve().parents[3]


def test_simulate_a_given_model_from_a_saved_profile(tmp_path):
    """Layers 8-16-16-16-4 with F/B/W of (1,2,3), (4,5,6), (7,8,9), (10,11,12) ms; stages 0-1 and 2-3.

    Stage 0: F 5, B 7, W 9 ms; stage 1: F 17, B 19, W 21 ms; the activation between them is 32 rows x 16 floats.
    GPipe, 2 ranks, 1 microbatch, free link: 5 + 17 + (19 + 21) + (7 + 9) = 78 ms.
    """
    ms = 1e-3
    layers = tuple(StageCost(a * ms, (a + 1) * ms, (a + 2) * ms) for a in (1, 4, 7, 10))
    prof = tmp_path / "p.json"
    Profile("cpu", "float32", 32, layers, (8, 16, 16, 16, 4), "cpu").save(prof)
    out = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "simulate.py"), "--widths", "8,16,16,16,4",
                           "--microbatch-size", "32", "--profile", str(prof), "--partition", "0-1,2-3", "--stages", "2",
                           "--schedule", "gpipe", "--microbatches", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["costs"] == [pytest.approx({"f": 5 * ms, "b": 7 * ms, "w": 9 * ms}),
                            pytest.approx({"f": 17 * ms, "b": 19 * ms, "w": 21 * ms})]
    assert res["link"]["activation_bytes"] == [32 * 16 * 4, 32 * 4 * 4]
    assert res["makespan"] == pytest.approx(78 * ms)
    assert "profile" in proc.stdout and "0-1,2-3" in proc.stdout
