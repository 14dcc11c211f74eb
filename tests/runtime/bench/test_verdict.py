"""Verdicts on given figures: the headline named before the run is judged (never the fastest of the run), a
contender that failed the equal-math check is excluded, and the bounds are applied as stated."""

from runtime.bench.verdict import DIST_OF_LIMIT, DIST_VS_BEST_PEER, Target, verdicts


def spread(median, p25=None, p75=None):
    return {"median": median, "p25": median if p25 is None else p25, "p75": median if p75 is None else p75,
            "min": median, "max": median, "n": 3}


def row(name, group, seconds, ok=True, **extra):
    return {"variant": name, "group": group, "error": None, "step_time": spread(seconds),
            "math": {"ok": ok, "worst_relative_error": 0.0 if ok else 0.75, "detail": "worst layer 0 w sum of squares"},
            **extra}


def dist_result(headline="ours:zb-h1+defer-w+direct"):
    return {"benchmark": "dist", "config": {"headline": headline}, "results": [
        row("ours:zb-h1+defer-w+direct", "ours", 0.100, best_peer="peer:dualpipev",
            speedup_vs_best_peer=spread(1.25, 1.21, 1.27), paired_peer="peer:1f1b", speedup_vs_paired_peer=spread(1.3),
            fraction_of_limit=spread(0.80, 0.78, 0.82), full_batch="full-batch:onednn"),
        row("ours:1f1b", "ours", 0.090, best_peer="peer:dualpipev", speedup_vs_best_peer=spread(1.40),
            paired_peer="peer:1f1b", speedup_vs_paired_peer=spread(1.45), fraction_of_limit=spread(0.90)),
        row("full-batch", "baseline", 0.226),
        row("peer:dualpipev", "peer", 0.125),
        row("peer:gpipe", "peer", 0.050, ok=False),
    ]}


def test_target_line_bounds_and_spread():
    t = Target("x", 1.20)
    assert t.line(1.20, "speedup").startswith("MET ")
    assert t.line(1.1999, "speedup").startswith("MISSED")
    assert t.line(1.25, "speedup", spread(1.25, 1.2, 1.3)) == "MET     x: speedup 1.250 [1.200-1.300] (target >= 1.20)"
    assert Target("e", 0.10, at_least=False).line(0.11, "error").startswith("MISSED")
    assert t.line(None, "speedup").startswith("n/a")


def test_dist_judges_the_fixed_headline_not_the_fastest():
    lines = verdicts(dist_result())
    assert lines[0] == ("MET     dist: headline ours:zb-h1+defer-w+direct vs the best torch schedule (peer:dualpipev), "
                        f"samples/s: speedup 1.250 [1.210-1.270] (target >= {DIST_VS_BEST_PEER:.2f})")
    assert lines[1] == ("MISSED  dist: headline ours:zb-h1+defer-w+direct vs the physical limit (world size x "
                        f"full-batch:onednn's samples/s): fraction 0.800 [0.780-0.820] (target >= {DIST_OF_LIMIT:.2f})")
    # ours:1f1b is faster (1.40x, 0.90 of the limit) but is not the headline: it only appears as information
    assert not any("ours:1f1b" in line for line in lines if not line.startswith("INFO"))
    assert lines[-1].startswith("MISSED  dist: equal math: peer:gpipe failed")


def test_dist_headline_named_otherwise_and_failing_math():
    lines = verdicts(dist_result("ours:1f1b"))
    assert lines[0].startswith("MET     dist: headline ours:1f1b vs the best torch schedule (peer:dualpipev)")
    assert lines[1].startswith("MET     dist: headline ours:1f1b vs the physical limit") and "0.900" in lines[1]
    result = dist_result()
    result["results"][0]["math"] = {"ok": False, "worst_relative_error": 0.75, "detail": "worst layer 0 w sum: 7.5e-01"}
    lines = verdicts(result)
    assert lines[0] == ("MISSED  dist: headline ours:zb-h1+defer-w+direct failed the equal-math check "
                        "(worst layer 0 w sum: 7.5e-01)")
    assert not any(line.startswith("MET     dist: headline") for line in lines)
    assert verdicts(dist_result("ours:gpipe"))[0].startswith("MISSED  dist: headline ours:gpipe did not run")


def test_pipeline_headline_against_accumulation_and_best_peer():
    head = row("ours:1f1b+defer-w+direct", "ours", 0.1, dtype="float32", accumulation="accumulation",
               speedup_vs_accumulation=spread(0.99), best_peer="peer:looped-bfs", speedup_vs_best_peer=spread(1.10),
               speedup_vs_full_batch=spread(0.95))
    faster = row("ours:gpipe", "ours", 0.05, dtype="float32", speedup_vs_accumulation=spread(2.0),
                 speedup_vs_best_peer=spread(2.0))
    result = {"benchmark": "pipeline", "config": {"headline": "ours:1f1b+defer-w+direct"},
              "results": [head, faster, row("accumulation", "baseline", 0.099, dtype="float32")]}
    lines = verdicts(result)
    assert lines[0].startswith("MISSED  pipeline float32: headline ours:1f1b+defer-w+direct vs accumulation: speedup 0.990")
    assert lines[1].startswith("MET     pipeline float32: headline ours:1f1b+defer-w+direct vs peer:looped-bfs: "
                               "speedup 1.100")
    assert lines[2].startswith("INFO") and "0.950x" in lines[2]
    assert lines[3] == "INFO    pipeline float32: fastest of ours in this run (information, not a verdict): ours:gpipe"
    assert lines[4].startswith("MET     pipeline float32: equal math")


def test_contention_ratio_bound():
    assert verdicts({"benchmark": "contention", "ratio": 1.5})[0].startswith("MET     contention")
    assert verdicts({"benchmark": "contention", "ratio": 1.51})[0].startswith("MISSED  contention")
