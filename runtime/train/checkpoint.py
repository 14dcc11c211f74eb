"""Layout-independent checkpoints on disk: one file per layer and epoch, a small manifest, the history apart.

A folder holds ``layer{l}-epoch{N}.pt`` (the layer's W, b and each parameter's optimizer state),
``history.json`` (one entry per epoch) and ``meta.json`` (the manifest: epoch, run id, the settings
that fix the math, the layout that wrote it). The manifest is written last, so it only ever names an
epoch whose files are complete; files of older epochs are removed after it. Everything is written
atomically (temporary file + rename) and read back with ``torch.load(weights_only=True)``; anything
that is not what this module wrote is refused with one line naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from partition.units import count
from runtime.output import atomic_write, write_json

FORMAT = 2
META = "meta.json"
HISTORY = "history.json"
DATA_FILE = re.compile(r"^(layer|stage)(\d+)-epoch(\d+)\.pt$")
TEMP_FILE = re.compile(r"^\.(meta\.json|history\.json|(layer|stage)\d+-epoch\d+\.pt)\..+$")
PARAMS = ("weight", "bias")


@dataclass(frozen=True)
class LayerState:
    """One layer: W, b (None without a bias) and the optimizer state of each, keyed "weight" and "bias"."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    state: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Manifest:
    """meta.json: the last complete epoch, the run that wrote it, the settings and the layout it was written with."""

    epoch: int
    run: str
    fingerprint: dict[str, Any]
    layout: dict[str, Any]
    layers: int

    @property
    def widths(self) -> list[int]:
        """The model's widths, from the fingerprint."""
        return list(self.fingerprint["widths"])


def damaged(path: Path, why: str) -> ValueError:
    """The one-line error for a checkpoint file that is not what this module wrote."""
    return ValueError(f"checkpoint: {path} is damaged or not a pipegraph checkpoint ({why}); nothing was changed")


def save_torch(path: str | Path, payload: Any) -> None:
    """torch.save atomically."""
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_torch(path: Path) -> Any:
    """torch.load with weights_only=True; any failure becomes one line naming the file."""
    if not path.exists():
        raise ValueError(f"checkpoint: {path} is missing; the checkpoint in {path.parent} is incomplete")
    if path.stat().st_size == 0:
        raise damaged(path, "empty file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, UnpicklingError, RuntimeError from a torn zip...: all mean "not ours"
        raise damaged(path, f"unreadable by torch.load: {type(exc).__name__}") from None


def layer_file(directory: str | Path, layer: int, epoch: int) -> Path:
    """Where layer ``layer``'s state after ``epoch`` epochs lives."""
    return Path(directory) / f"layer{layer}-epoch{epoch}.pt"


def save_layer(directory: str | Path, layer: int, epoch: int, run: str, st: LayerState) -> None:
    """Write one layer's parameters and optimizer state (tensors moved to the CPU)."""
    payload = {"format": FORMAT, "layer": layer, "epoch": epoch, "run": run, "weight": st.weight, "bias": st.bias,
               "state": st.state}
    save_torch(layer_file(directory, layer, epoch), payload)


def write_manifest(directory: str | Path, manifest: Manifest, history: list[dict]) -> None:
    """Make ``manifest.epoch`` the checkpoint (its layer files exist): history, then meta.json, then drop the rest."""
    directory = Path(directory)
    write_json(directory / HISTORY, history)
    write_json(directory / META, {"format": FORMAT, "epoch": manifest.epoch, "run": manifest.run,
                                  "layers": manifest.layers, "fingerprint": manifest.fingerprint,
                                  "layout": manifest.layout})
    for path in directory.iterdir():
        found = DATA_FILE.match(path.name)
        if found and not (found[1] == "layer" and int(found[3]) == manifest.epoch):
            path.unlink(missing_ok=True)


def read_meta(directory: str | Path) -> Any:
    """meta.json parsed (any JSON value, null included); a missing file or undecodable text is one line."""
    path = Path(directory) / META
    if not path.exists():
        raise ValueError(f"checkpoint: {directory} holds no {META}, so no complete checkpoint")
    try:
        return json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"not JSON: {type(exc).__name__}") from None


def parse_manifest(directory: str | Path, meta: Any) -> Manifest:
    """Check what :func:`read_meta` returned is this format's manifest."""
    path = Path(directory) / META
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise damaged(path, f"expected a manifest of format {FORMAT}, found {_describe(meta)}")
    epoch, layers, run = meta.get("epoch"), meta.get("layers"), meta.get("run")
    fp, layout = meta.get("fingerprint"), meta.get("layout")
    if not (_count(epoch) and _count(layers) and isinstance(run, str) and isinstance(fp, dict)
            and isinstance(layout, dict)):
        raise damaged(path, "a field is missing or of the wrong type")
    widths = fp.get("widths")
    if not (isinstance(widths, list) and len(widths) == layers + 1 and all(_count(w) and w > 0 for w in widths)):
        raise damaged(path, "its widths do not match its layer count")
    return Manifest(epoch, run, fp, layout, layers)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}" if value else "an empty object"
    return "null" if value is None else f"a {type(value).__name__}"


def load_layer(directory: str | Path, manifest: Manifest, layer: int) -> LayerState:
    """Load and check one layer file of the manifest's epoch (shapes from its widths, same run, same epoch)."""
    path = layer_file(directory, layer, manifest.epoch)
    data = load_torch(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise damaged(path, f"expected a layer file of format {FORMAT}, found {_describe(data)}")
    if (data.get("layer"), data.get("epoch"), data.get("run")) != (layer, manifest.epoch, manifest.run):
        raise damaged(path, f"it belongs to another run or epoch than {META}")
    rows, cols = manifest.widths[layer + 1], manifest.widths[layer]
    w, b, state = data.get("weight"), data.get("bias"), data.get("state")
    if not (isinstance(w, torch.Tensor) and tuple(w.shape) == (rows, cols)):
        raise damaged(path, f"its weight is not a {rows}x{cols} tensor")
    if not (b is None or (isinstance(b, torch.Tensor) and tuple(b.shape) == (rows,))):
        raise damaged(path, f"its bias is not a tensor of {rows}")
    if not (isinstance(state, dict) and set(state) == set(PARAMS)
            and all(isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in state.values())):
        raise damaged(path, "its optimizer state is not one entry per parameter")
    return LayerState(w, b, state)


def read_history(directory: str | Path, epoch: int) -> list[dict]:
    """The per-epoch history up to ``epoch`` (a later entry of an unfinished save is dropped)."""
    path = Path(directory) / HISTORY
    if epoch == 0 and not path.exists():
        return []
    if not path.exists():
        raise ValueError(f"checkpoint: {path} is missing; the checkpoint in {directory} is incomplete")
    try:
        entries = json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise damaged(path, f"not JSON: {type(exc).__name__}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise damaged(path, f"expected a list of epochs, found {_describe(entries)}")
    kept = entries[:epoch]
    if [e.get("epoch") for e in kept] != list(range(1, epoch + 1)):
        raise damaged(path, f"it does not hold epochs 1..{epoch}")
    return kept


def holds_checkpoint(directory: str | Path) -> bool:
    """Whether the folder holds a manifest or any layer/stage file (of this format or the older one)."""
    directory = Path(directory)
    return directory.is_dir() and any(p.name == META or DATA_FILE.match(p.name) for p in directory.iterdir())


def remove_checkpoint(directory: str | Path) -> None:
    """Delete every checkpoint file of the folder (manifest first, so no half state is ever named)."""
    directory = Path(directory)
    for name in (META, HISTORY):
        (directory / name).unlink(missing_ok=True)
    for path in directory.iterdir():
        if DATA_FILE.match(path.name):
            path.unlink(missing_ok=True)


def clean_temporary(directory: str | Path) -> list[str]:
    """Remove temporary files a killed write left behind; returns their names."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    gone = [p for p in directory.iterdir() if TEMP_FILE.match(p.name)]
    for path in gone:
        path.unlink(missing_ok=True)
    return sorted(p.name for p in gone)


@dataclass(frozen=True)
class Checkpoint:
    """A whole checkpoint as loaded: its manifest, every layer and the history up to its epoch."""

    manifest: Manifest
    layers: tuple[LayerState, ...]
    history: list[dict]


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Load and check the folder's last complete checkpoint (one line naming the file when anything is wrong)."""
    meta = read_meta(directory)
    from runtime.train.ckpt_legacy import is_legacy, load_legacy  # the older format's reader builds on this module

    if is_legacy(meta):
        return load_legacy(directory, meta)
    manifest = parse_manifest(directory, meta)
    layers = tuple(load_layer(directory, manifest, layer) for layer in range(manifest.layers))
    return Checkpoint(manifest, layers, read_history(directory, manifest.epoch))


def describe_layout(layout: dict[str, Any]) -> str:
    """The writer's layout in words, e.g. "3 stages of 1f1b, 4 microbatches, autograd engine, 1 process"."""
    if "source" in layout:
        return str(layout["source"])
    words = [f"{layout.get('stages')} stages of {layout.get('schedule')}", f"{layout.get('microbatches')} microbatches",
             f"{layout.get('engine')} engine", count(layout.get('processes'), 'process')]
    if layout.get("data_parallel", 1) != 1:
        words.append(f"data-parallel {layout['data_parallel']}")
    return ", ".join(words)
