"""The older per-stage checkpoints (``stage{s}-epoch{N}.pt`` + a meta.json with the history inside), read as layers.

Such a folder recorded its plan (the layer range of every stage) and whether every layer had a bias,
which is enough to cut each stage's parameter list and optimizer state back into layers. The next
save of a resumed run writes the per-layer format and removes the stage files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from partition.spec import MLPSpec, resolve_bias
from runtime.train import checkpoint as ckpt


def is_legacy(meta: Any) -> bool:
    """Whether a parsed meta.json is of the per-stage kind."""
    return isinstance(meta, dict) and "format" not in meta and "stages" in meta


def _stage_file(directory: Path, stage: int, epoch: int) -> Path:
    return directory / f"stage{stage}-epoch{epoch}.pt"


def _biased(bias: Any, layers: int) -> frozenset[int] | None:
    """The layers with a bias, from the older fingerprint's bool (or, in its last versions, --bias words)."""
    try:
        return resolve_bias(bias, layers)
    except ValueError:
        return None


def load_legacy(directory: str | Path, meta: dict) -> ckpt.Checkpoint:
    """Read a per-stage checkpoint as per-layer state; anything inconsistent is one line naming the file."""
    directory = Path(directory)
    path = directory / ckpt.META
    fp, epoch, history = meta.get("fingerprint"), meta.get("epoch"), meta.get("history")
    plan = fp.get("plan") if isinstance(fp, dict) else None
    widths = fp.get("widths") if isinstance(fp, dict) else None
    biased = _biased(fp.get("bias"), len(widths) - 1) if isinstance(widths, list) and len(widths) > 1 else None
    if not (isinstance(epoch, int) and epoch >= 1 and isinstance(history, list) and isinstance(plan, list)
            and biased is not None):
        raise ckpt.damaged(path, "a per-stage manifest without its epoch, history, widths, bias or plan")
    fingerprint = {k: v for k, v in fp.items() if k != "plan"}
    fingerprint["bias"] = MLPSpec(tuple(widths), bias=biased).bias_name
    manifest = ckpt.Manifest(epoch, "legacy", fingerprint, {"stages": len(plan), "ranges": plan, "source": (
        f"a per-stage checkpoint of {len(plan)} stages")}, len(widths) - 1)
    layers: list[ckpt.LayerState] = []
    for stage, bounds in enumerate(plan):
        file = _stage_file(directory, stage, epoch)
        data = ckpt.load_torch(file)
        params, opt = (data.get("params"), data.get("optimizer")) if isinstance(data, dict) else (None, None)
        state = opt.get("state") if isinstance(opt, dict) else None
        if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] == len(layers)
                and isinstance(params, list) and all(isinstance(t, torch.Tensor) for t in params)
                and isinstance(state, dict)):
            raise ckpt.damaged(file, f"not stage {stage} of the plan {plan}")
        i = 0  # params run W, b, W, b, ... (no b where a layer has none); the optimizer state has the same indices
        for layer in range(bounds[0], bounds[1]):
            names = ["weight", "bias"] if layer in biased else ["weight"]
            if i + len(names) > len(params):
                raise ckpt.damaged(file, f"{len(params)} tensors for layers [{bounds[0]}, {bounds[1]})")
            found = {n: dict(state.get(i + k, {})) for k, n in enumerate(names)}
            layers.append(ckpt.LayerState(params[i], params[i + 1] if len(names) == 2 else None,
                                          {"bias": {}} | found))
            i += len(names)
        if i != len(params):
            raise ckpt.damaged(file, f"{len(params)} tensors for layers [{bounds[0]}, {bounds[1]})")
    if len(layers) != manifest.layers:
        raise ckpt.damaged(path, f"its plan covers {len(layers)} layers, its widths {manifest.layers}")
    return ckpt.Checkpoint(manifest, tuple(layers), [h for h in history if isinstance(h, dict)][:epoch])
