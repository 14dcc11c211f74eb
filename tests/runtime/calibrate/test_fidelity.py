"""The fidelity benchmark's bookkeeping: its cases, and rows that summarise the runs (subprocesses stubbed)."""

import pytest

from runtime.calibrate import fidelity as fid


def test_the_cases_are_the_ones_the_table_promises():
    names = [c.name for c in fid.default_cases()]
    assert names[0] == "train.py (default)" and names[-1] == "compare.py --quick"
    dist = [c for c in fid.default_cases() if c.ranks == 2]
    assert len(dist) == 8 and {c.args[c.args.index("--widths") + 1] for c in dist} == {"64,64,64,64,64",
                                                                                       "1024,1024,1024,1024,1024"}
    inter = next(c for c in dist if "interleaved" in c.name)
    assert inter.args[inter.args.index("--stages") + 1] == "4"  # 2 ranks x 2 virtual stages


def test_rows_report_the_median_absolute_error_its_range_and_the_median_runs_term(monkeypatch, tmp_path):
    errors = iter([0.30, -0.05, 0.08])  # three runs of one case

    def fake(case, folder, timeout):
        e = next(errors)
        return [{"name": case.name, "predicted": 1.0 + e, "measured": 1.0, "error": e, "term": f"term {e:+.2f}",
                 "terms": {"optimizer": e}}]

    monkeypatch.setattr(fid, "run_case", fake)
    (row,) = fid.fidelity([fid.Case("c", "train.py", ())], runs=3, log=lambda _: None)
    assert row["median_abs_error"] == pytest.approx(0.08) and row["min_abs_error"] == pytest.approx(0.05)
    assert row["max_abs_error"] == pytest.approx(0.30) and row["errors"] == [0.30, -0.05, 0.08]
    assert row["largest_term"] == "term +0.08" and row["within_target"] and row["predicted_terms"] == {"optimizer": 0.08}
    table = fid.fidelity_table([row, {**row, "name": "d", "median_abs_error": 0.2, "within_target": False}])
    assert table[2].endswith("| yes |") and table[3].endswith("| no: term +0.08 |")


def test_a_failing_case_is_a_row_that_says_why(monkeypatch):
    def fake(case, folder, timeout):
        if case.name == "bad":
            raise RuntimeError("exit 1: ValueError: boom")
        return [{"name": case.name, "predicted": 1.0, "measured": 1.0, "error": 0.0, "term": "-"}]

    monkeypatch.setattr(fid, "run_case", fake)
    rows = fid.fidelity([fid.Case("good", "train.py", ()), fid.Case("bad", "train.py", ())], runs=2, log=lambda _: None)
    bad = next(r for r in rows if r["name"] == "bad")
    assert bad["runs"] == 0 and bad["failed"] == ["exit 1: ValueError: boom"] * 2
    assert next(r for r in rows if r["name"] == "good")["runs"] == 2
    assert any(line.endswith("| failed: exit 1: ValueError: boom |") for line in fid.fidelity_table(rows))


def test_rows_say_how_far_the_measured_medians_moved_between_runs(monkeypatch):
    measured = iter([0.010, 0.013, 0.011])  # one case measured three times: 10, 13 and 11 ms

    def fake(case, folder, timeout):
        m = next(measured)
        return [{"name": case.name, "predicted": 0.010, "measured": m, "error": (0.010 - m) / m, "term": "-"}]

    monkeypatch.setattr(fid, "run_case", fake)
    (row,) = fid.fidelity([fid.Case("c", "train.py", ())], runs=3, log=lambda _: None)
    assert row["measured_runs"] == [0.010, 0.013, 0.011] and row["measured_drift"] == pytest.approx(0.3)
    head, _, line = fid.fidelity_table([row])
    assert "| measured median, run to run |" in head and "| 30% |" in line
    old = {k: v for k, v in row.items() if k not in ("measured_runs", "measured_drift")}
    assert "run to run" not in fid.fidelity_table([old])[0]  # a result saved before keeps its printed columns
