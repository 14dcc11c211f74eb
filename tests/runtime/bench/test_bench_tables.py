"""Every committed benchmark result regenerates, from its JSON alone, a table that BENCHMARKS.md shows verbatim."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.bench.render import table_text

ROOT = Path(__file__).resolve().parents[3]
RESULTS = sorted((ROOT / "runtime" / "bench" / "results").glob("*.json"))


def test_results_are_committed():
    assert RESULTS, "runtime/bench/results/ holds no result JSON"


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_table_from_json_is_in_benchmarks_md(path):
    result = json.loads(path.read_text())
    text = table_text(result)
    assert text == result["table"]  # what the run printed
    assert f"```\n{text}\n```" in (ROOT / "BENCHMARKS.md").read_text(), f"{path.name}: its table is not in BENCHMARKS.md"


def test_the_command_prints_the_same_table():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "table", str(RESULTS[0])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == table_text(json.loads(RESULTS[0].read_text())) + "\n"
