"""Result writing: the text and Markdown tables by hand, and atomic writes that leave no temporary file."""

import json
import os

import pytest

from runtime.output import atomic_write, error_line, json_text, markdown_table, output_line, text_table, write_json


def test_text_table_by_hand():
    assert text_table(["a", "long header"], [[1, "x"], ["wide cell", ""]]) == (
        "a          long header\n"
        "---------  -----------\n"
        "1          x\n"
        "wide cell")


def test_right_aligned_columns():
    assert text_table(["n", "name"], [[7, "a"], [123, "bb"]], right={0}) == "  n  name\n---  ----\n  7  a\n123  bb"


def test_markdown_table_by_hand():
    assert markdown_table(["k", "v"], [["a|b", 2]]) == ["| k | v |", "| --- | --- |", "| a/b | 2 |"]


def test_write_json_is_atomic_and_follows_the_umask(tmp_path):
    path = tmp_path / "deep" / "r.json"
    write_json(path, {"x": 1, "t": {1, 2} and "set"})
    assert json.loads(path.read_text()) == {"x": 1, "t": "set"} and path.read_text() == json_text({"x": 1, "t": "set"})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    write_json(None, {"x": 2})  # nothing to do

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"x": 1, "t": "set"}  # the old file survives
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # and no temporary file is left


@pytest.mark.parametrize("say,fd,lines,written", [
    (error_line, 2, ("train.py [rank 2]: failed: lost rank 3", "second\n"),
     [b"train.py [rank 2]: failed: lost rank 3\n", b"second\n"]),
    (output_line, 1, ("step | rank 0\n   3 | 0BW1", "[rank 1] epoch 1: train loss 1.3865"),
     [b"step | rank 0\n   3 | 0BW1\n", b"[rank 1] epoch 1: train loss 1.3865\n"]),
])
def test_each_line_is_one_write_so_ranks_lines_never_interleave(monkeypatch, say, fd, lines, written):
    """Under torchrun the ranks share one stderr and one stdout: a line written as text, then newline, once ran into
    the other rank's line ('...1BW1[rank 1] epoch 1')."""
    calls = []
    monkeypatch.setattr("runtime.output.os.write", lambda fd, data: calls.append((fd, data)) or len(data))
    for line in lines:
        say(line)
    assert calls == [(fd, data) for data in written]


def test_a_partly_taken_write_is_finished(monkeypatch):
    calls = []
    monkeypatch.setattr("runtime.output.os.write", lambda fd, data: calls.append(data) or min(len(data), 4))
    output_line("0123456789")
    assert calls == [b"0123456789\n", b"456789\n", b"89\n"]
