"""Every output path of a run checked, and its folder made, before the first step: a bad path fails before training."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from runtime.train.config import TrainConfig

FILE_FLAGS = ("json", "trace", "gantt")  # TrainConfig fields naming a file the run writes at its end


def check_file(path: str | Path, flag: str) -> None:
    """Make ``path``'s folder and prove a file can be created there, as the run's atomic write (a temporary file
    renamed over ``path``) will; ValueError naming ``--flag`` otherwise. The probe has a name of its own, never
    ``path``: under torchrun every rank checks the same path at once, and one rank's probe must not be another's."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag}: cannot write {path}: {err.strerror or err}") from None


def check_folder(path: str | Path, flag: str) -> None:
    """Prove files can be created in the folder ``path`` without making it (the run makes its own): a probe folder
    of a name of its own, with a file in it, is made and removed in the deepest folder that exists; ValueError
    naming ``--flag`` otherwise. Nothing is ever made at ``path`` itself: under torchrun every rank checks the same
    folder at once, and one rank removing a folder it had made for the proof once took it from under another's
    probe (that rank then quit as if the input were bad, and its peers waited for it in the process group)."""
    path = Path(path)
    base = next(p for p in (path, *path.parents) if p.exists())
    try:
        probe = tempfile.mkdtemp(prefix=".pipegraph-probe-", dir=base)
        fd, inner = tempfile.mkstemp(dir=probe)
        os.close(fd)
        os.unlink(inner)
        os.rmdir(probe)
    except OSError as err:
        raise ValueError(f"{flag}: cannot write into {path}: {err.strerror or err}") from None


def check_outputs(cfg: TrainConfig) -> None:
    """Check --json, --trace, --gantt and --checkpoint-dir as :func:`check_file` and :func:`check_folder` do."""
    for field in FILE_FLAGS:
        value = getattr(cfg, field)
        if value:
            check_file(value, f"--{field}")
    if cfg.checkpoint_dir:
        check_folder(cfg.checkpoint_dir, "--checkpoint-dir")
