"""One run per checkpoint folder: an owner file under an OS lock, and the checks made before the first step.

The lock is ``fcntl.flock`` on ``lock.json``: the kernel drops it when its process ends, however it
ends (a ``kill -9`` included), so a stale lock can never block a later run, while a live run keeps
every other one out. The file's content (process id, host, start time, the run's settings) only
serves the refusal message.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import torch

from runtime.comm import all_reduce_sum
from runtime.train import checkpoint as ckpt

LOCK = "lock.json"


class FolderLock:
    """Holds ``lock.json`` of a checkpoint folder until :meth:`release` (or the process's end)."""

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]) -> None:
        """Take the lock or raise ValueError naming the run that holds it."""
        self.path = Path(directory) / LOCK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh: BinaryIO = open(self.path, "a+b")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().decode(errors="replace")
            fh.close()
            raise ValueError(f"checkpoint-dir: {self.path.parent} is in use by another run ({_owner(owner)}); "
                             "wait for it to finish or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                             "fingerprint": fingerprint}).encode())
        fh.flush()
        self._fh: BinaryIO | None = fh

    def release(self) -> None:
        """Let another run have the folder (the file stays: removing it could let two runs lock two files)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owner(text: str) -> str:
    """Who holds the lock, as far as its file says."""
    try:
        data = json.loads(text)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(data["started"])))
        return f"process {int(data['pid'])} on {data['host']}, started {when}"
    except (ValueError, KeyError, TypeError):
        return "its owner file is being written"


def claim(directory: str | Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool) -> tuple[FolderLock, str]:
    """Lock the folder and check it suits the run; returns the lock and a fresh run id.

    Refused in one line: a folder another run holds; ``resume`` without a checkpoint there; a fresh
    run into a folder that holds one, unless ``overwrite`` (the caller then removes the old checkpoint
    when it saves its first epoch, so a run that fails before that leaves it whole). Temporary files
    of a killed write are removed once the lock is held.
    """
    directory = Path(directory)
    if resume and not ckpt.holds_checkpoint(directory):
        raise ValueError(f"resume: {directory} holds no checkpoint; run without --resume to start one")
    lock = FolderLock(directory, fingerprint)
    try:
        ckpt.clean_temporary(directory)
        if not resume and not overwrite and ckpt.holds_checkpoint(directory):
            raise ValueError(f"checkpoint-dir: {directory} already holds a checkpoint; add --resume to continue it "
                             "or --overwrite to replace it")
    except BaseException:
        lock.release()
        raise
    return lock, uuid.uuid4().hex[:16]


def share_text(text: str, leader: bool, size: int = 1024) -> str:
    """Every rank gets the leader's ``text`` (UTF-8, up to ``size`` bytes), moved as a tensor, never pickled."""
    buf = torch.zeros(size, dtype=torch.int64)
    if leader:
        data = text.encode()[:size]
        buf[: len(data)] = torch.tensor(list(data), dtype=torch.int64)
    buf = all_reduce_sum(buf)
    return bytes(int(v) for v in buf if v > 0).decode(errors="replace")
