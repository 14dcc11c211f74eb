"""Checkpoints out to a plain nn.Sequential state_dict file, and such a file in as a checkpoint to fine-tune.

The exported file is what ``nn.Sequential(Linear, phi, Linear, phi, ..., Linear).state_dict()`` holds
(keys ``0.weight``, ``0.bias``, ``2.weight``, ...), so ``load_state_dict`` of that model reads it. A
state_dict says the widths and which layers have a bias, not the activation, the loss or l2: the
import takes those as arguments and writes an epoch-0 checkpoint (no optimizer state) that
``--resume`` continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from partition.spec import MLPSpec, resolve_bias
from runtime.ops.model import PipeModel
from runtime.train import checkpoint as ckpt
from runtime.train import ckpt_guard


def spec_of(fingerprint: dict[str, Any]) -> MLPSpec:
    """The model a checkpoint's fingerprint describes."""
    return MLPSpec(tuple(fingerprint["widths"]), fingerprint["activation"], fingerprint["bias"], fingerprint["l2"],
                   fingerprint["loss"])


def export_state_dict(checkpoint_dir: str | Path, out: str | Path) -> dict[str, torch.Tensor]:
    """Write the last complete checkpoint's parameters as an nn.Sequential state_dict file; returns it."""
    found = ckpt.load_checkpoint(checkpoint_dir)
    model = PipeModel(spec_of(found.manifest.fingerprint), [(st.weight, st.bias) for st in found.layers])
    state = model.to_sequential().state_dict()
    ckpt.save_torch(out, state)
    return state


def read_state_dict(path: str | Path) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(W, b) per Linear layer of a state_dict file, in file order; anything else in it is one line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"import: {path} is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of objects, a torn file, random bytes: none is a state_dict
        raise ValueError(f"import: {path} is not a state_dict file ({type(exc).__name__})") from None
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ValueError(f"import: {path} does not hold a state_dict (parameter names -> tensors)")
    layers, used = [], set()
    for key, w in data.items():
        if key.endswith(".weight") and w.dim() == 2:
            b = data.get(key[: -len("weight")] + "bias")
            layers.append((w, b))
            used |= {key, key[: -len("weight")] + "bias"}
    stray = [k for k in data if k not in used]
    if stray or not layers:
        raise ValueError(f"import: {path} holds {stray[0] if stray else 'no 2-D weight'}, which is not the weight or bias "
                         "of a Linear layer; only an nn.Sequential of Linear layers and activations can be imported")
    for i, (w, b) in enumerate(layers):
        if i and w.shape[1] != layers[i - 1][0].shape[0]:
            raise ValueError(f"import: Linear {i} of {path} takes {w.shape[1]} inputs, Linear {i - 1} gives "
                             f"{layers[i - 1][0].shape[0]}")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"import: the bias of Linear {i} of {path} has shape {tuple(b.shape)}, not ({w.shape[0]},)")
    return layers


def import_state_dict(path: str | Path, checkpoint_dir: str | Path, activation: str, loss: str, l2: float,
                      bias: str | None = None, overwrite: bool = False) -> MLPSpec:
    """Write a state_dict file's layers as an epoch-0 checkpoint; ``bias``, when given, must match the file."""
    layers = read_state_dict(path)
    widths = (layers[0][0].shape[1], *(w.shape[0] for w, _ in layers))
    found = frozenset(i for i, (_, b) in enumerate(layers) if b is not None)
    if bias is not None and resolve_bias(bias, len(layers)) != found:
        have = ",".join(map(str, sorted(found))) or "none"
        raise ValueError(f"bias: --bias {bias} does not match {path}, whose layers with a bias are {have}")
    spec = MLPSpec(widths, activation, found, l2, loss)
    fingerprint = {"widths": list(widths), "activation": spec.activation.value, "bias": spec.bias_name,
                   "l2": spec.l2, "loss": spec.loss.value}
    lock, run = ckpt_guard.claim(checkpoint_dir, fingerprint, resume=False, overwrite=overwrite)
    with lock:
        ckpt.remove_checkpoint(checkpoint_dir)  # only reached when empty or with overwrite
        for layer, (w, b) in enumerate(layers):
            ckpt.save_layer(checkpoint_dir, layer, 0, run, ckpt.LayerState(w, b, {"weight": {}, "bias": {}}))
        source = {"source": f"imported from {Path(path).name}"}
        ckpt.write_manifest(checkpoint_dir, ckpt.Manifest(0, run, fingerprint, source, len(layers)), [])
    return spec
