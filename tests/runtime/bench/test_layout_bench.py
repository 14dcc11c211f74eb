"""bench.py layouts on a tiny model: PP2 and DP2 trained under torchrun, the winner and the planner's pick reported."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bench.layouts import parse_models

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.dist
def test_pp2_and_dp2_run_and_the_verdict_names_the_faster(tmp_path):
    out = tmp_path / "layouts.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "layouts", "--models", "16x4",
                           "--processes", "2", "--batch", "16", "--microbatches", "2", "--samples", "64", "--epochs", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {r["layout"]: r for r in result["rows"]}
    assert set(rows) == {"PP2", "DP2"}
    for r in rows.values():  # both trained, and the run's JSON held its own prediction
        assert r["measured_step_time"] > 0 and r["run_prediction"] > 0
        assert r["processes"] == f"2 processes on {result['cores']} cores" + (" (oversubscribed)" if result["cores"] < 2 else "")
    won = min(rows, key=lambda name: rows[name]["measured_step_time"])
    picked = min(rows, key=lambda name: rows[name]["planner_step_time"])
    assert sorted(r["planner_rank"] for r in rows.values()) == [1, 2] and rows[picked]["planner_rank"] == 1
    verdict, = result["verdicts"]
    assert verdict.startswith(f"16x4, 2 processes on {result['cores']} cores") and f": {won} won (" in verdict
    assert verdict.endswith(f"the planner picked {picked}: {'yes' if picked == won else 'no'}; the runs' own "
                            f"predictions picked {min(rows, key=lambda n: rows[n]['run_prediction'])}")
    assert verdict in done.stdout


def test_models_are_width_x_layers():
    assert parse_models("1024x8, 256x16") == ((1024, 8), (256, 16))
    with pytest.raises(ValueError, match="WIDTHxLAYERS"):
        parse_models("1024")
