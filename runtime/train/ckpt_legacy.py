"""The older per-stage checkpoints (``stage{s}-epoch{N}.pt`` + a meta.json with the history inside), read as layers.

Such a folder recorded its plan (the layer range of every stage) and whether every layer had a bias,
which is enough to cut each stage's parameter list and optimizer state back into layers. The next
save of a resumed run writes the per-layer format and removes the stage files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.train import checkpoint as ckpt


def is_legacy(meta: Any) -> bool:
    """Whether a parsed meta.json is of the per-stage kind."""
    return isinstance(meta, dict) and "format" not in meta and "stages" in meta


def _stage_file(directory: Path, stage: int, epoch: int) -> Path:
    return directory / f"stage{stage}-epoch{epoch}.pt"


def load_legacy(directory: str | Path, meta: dict) -> ckpt.Checkpoint:
    """Read a per-stage checkpoint as per-layer state; anything inconsistent is one line naming the file."""
    directory = Path(directory)
    path = directory / ckpt.META
    fp, epoch, history = meta.get("fingerprint"), meta.get("epoch"), meta.get("history")
    plan = fp.get("plan") if isinstance(fp, dict) else None
    if not (isinstance(epoch, int) and epoch >= 1 and isinstance(history, list) and isinstance(plan, list)
            and isinstance(fp.get("widths"), list) and isinstance(fp.get("bias"), bool)):
        raise ckpt.damaged(path, "a per-stage manifest without its epoch, history, widths, bias or plan")
    fingerprint = {k: v for k, v in fp.items() if k != "plan"}
    fingerprint["bias"] = "all" if fp["bias"] else "none"
    manifest = ckpt.Manifest(epoch, "legacy", fingerprint, {"stages": len(plan), "ranges": plan, "source": (
        f"a per-stage checkpoint of {len(plan)} stages")}, len(fp["widths"]) - 1)
    layers: list[ckpt.LayerState] = []
    for stage, bounds in enumerate(plan):
        file = _stage_file(directory, stage, epoch)
        data = ckpt.load_torch(file)
        params, opt = (data.get("params"), data.get("optimizer")) if isinstance(data, dict) else (None, None)
        state = opt.get("state") if isinstance(opt, dict) else None
        if not (isinstance(bounds, list) and len(bounds) == 2 and bounds[0] == len(layers)
                and isinstance(params, list) and isinstance(state, dict)):
            raise ckpt.damaged(file, f"not stage {stage} of the plan {plan}")
        per_layer = 2 if fp["bias"] else 1
        if len(params) != per_layer * (bounds[1] - bounds[0]):
            raise ckpt.damaged(file, f"{len(params)} tensors for layers [{bounds[0]}, {bounds[1]})")
        for offset in range(bounds[1] - bounds[0]):
            i = per_layer * offset
            names = {"weight": i, "bias": i + 1} if fp["bias"] else {"weight": i}
            layers.append(ckpt.LayerState(params[i], params[i + 1] if fp["bias"] else None,
                                          {n: dict(state.get(k, {})) for n, k in names.items()} | (
                                              {} if fp["bias"] else {"bias": {}})))
    if len(layers) != manifest.layers:
        raise ckpt.damaged(path, f"its plan covers {len(layers)} layers, its widths {manifest.layers}")
    return ckpt.Checkpoint(manifest, tuple(layers), [h for h in history if isinstance(h, dict)][:epoch])
