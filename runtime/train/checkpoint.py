"""Per-stage checkpoints written atomically (temporary file + rename) and loaded with weights_only=True."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

META = "meta.json"


def _atomic_write(path: Path, write: Any) -> None:
    """Write through ``write(fileobj)`` into a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should follow the umask like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stage_file(directory: str | Path, stage: int, epoch: int) -> Path:
    """Where stage ``stage``'s state after ``epoch`` epochs lives."""
    return Path(directory) / f"stage{stage}-epoch{epoch}.pt"


def save_stage(directory: str | Path, stage: int, epoch: int, params: list[torch.Tensor], optimizer: dict) -> Path:
    """Save one stage's parameters and optimizer state after ``epoch`` epochs."""
    path = stage_file(directory, stage, epoch)
    payload = {"stage": stage, "epoch": epoch, "params": [p.detach().cpu() for p in params], "optimizer": optimizer}
    _atomic_write(path, lambda fh: torch.save(payload, fh))
    return path


def load_stage(directory: str | Path, stage: int, epoch: int) -> dict:
    """Load what :func:`save_stage` wrote (tensors and plain containers only: weights_only=True)."""
    path = stage_file(directory, stage, epoch)
    if not path.exists():
        raise ValueError(f"resume: {path} is missing; the checkpoint in {directory} is incomplete")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_meta(directory: str | Path, meta: dict) -> None:
    """Record the last complete epoch (after every stage file of it exists), then drop older stage files."""
    directory = Path(directory)
    _atomic_write(directory / META, lambda fh: fh.write(json.dumps(meta, indent=1).encode()))
    keep = int(meta["epoch"])
    for old in directory.glob("stage*-epoch*.pt"):
        epoch = int(old.stem.split("epoch")[-1])
        if epoch < keep:
            old.unlink(missing_ok=True)


def read_meta(directory: str | Path) -> dict | None:
    """The last complete checkpoint's metadata, or None when the folder holds none."""
    path = Path(directory) / META
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"resume: {path} is not valid JSON ({exc})") from None


def restore(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Copy saved parameters and optimizer state into a live stage (device and dtype kept)."""
    saved = state["params"]
    if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params)):
        raise ValueError(f"resume: stage {state['stage']} in the checkpoint does not match this model's plan")
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s)
    optimizer.load_state_dict(state["optimizer"])


def write_json(path: str | Path, data: dict) -> None:
    """Write results JSON atomically (a crash never leaves half a file)."""
    _atomic_write(Path(path), lambda fh: fh.write(json.dumps(data, indent=1, default=str).encode()))
