"""``--threads N|auto``: parsing, and the auto rule's branches (the probe replaced by given timings)."""

import pytest
import torch

from partition.spec import MLPSpec
from runtime import threads
from runtime.threads import SMALL_STEP_FLOPS, apply_threads, choose_for_model, choose_threads, parse_threads


def test_parse():
    assert parse_threads("auto") is None and parse_threads("AUTO") is None and parse_threads("3") == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="threads: expected a number >= 1 or auto"):
            parse_threads(bad)


def test_rule_without_probe(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 8)
    monkeypatch.setattr(threads, "_probe_seconds", lambda *a: pytest.fail("no probe expected"))
    assert choose_threads(3, True, 1e12, (1, 1, 1)).threads == 3  # as asked, even under torchrun
    assert choose_threads(None, True, 1e12, (1, 1, 1)).reason == "auto: one per rank under torchrun"
    assert choose_threads(None, False, SMALL_STEP_FLOPS / 2, (1, 1, 1)).threads == 1
    assert choose_threads(None, False, 1e12, (1, 1, 1), "cuda:0").threads == 1
    # the train.py default model (64-128-128-128-10, batch 64) is far below the threshold
    assert choose_for_model(None, False, MLPSpec((64, 128, 128, 128, 10)), 64, 4).threads == 1


def test_rule_with_probe(monkeypatch):
    monkeypatch.setattr(threads, "cores", lambda: 4)
    seen = []

    def probe(n, rows, width_in, width_out):
        seen.append((n, rows, width_in, width_out))
        return {1: 1.0, 4: times[4]}[n]

    monkeypatch.setattr(threads, "_probe_seconds", probe)
    spec = MLPSpec((1024,) * 9)
    times = {4: 0.5}
    assert choose_for_model(None, False, spec, 512, 8).threads == 4  # twice as fast: all cores
    assert seen[-2:] == [(1, 64, 1024, 1024), (4, 64, 1024, 1024)]  # the widest layer at one microbatch
    times = {4: 0.9}
    assert choose_for_model(None, False, spec, 512, 8).threads == 1  # 10% faster is within the margin: 1 thread


def test_apply():
    before = torch.get_num_threads()
    try:
        assert apply_threads(threads.ThreadChoice(1, "x")).threads == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
