"""Per-layer state in and out of a live pipeline: parameters and each parameter's optimizer state, by layer index.

Whatever the stages, schedule, engine or process layout, layer ``l`` is the same W and b with the same
optimizer state, so a checkpoint written by one layout restores bit for bit into any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from runtime.engine.pipeline import Pipeline
from runtime.train.checkpoint import LayerState


def _to_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer's per-parameter state with its tensors on the CPU (plain values kept)."""
    return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def layer_states(pipe: Pipeline) -> dict[int, LayerState]:
    """Layer index -> its state, for every layer this process holds."""
    out = {}
    for s, st in pipe.stages.items():
        opt = pipe.optimizers[s]
        for offset, (w, b) in enumerate(st.params):
            out[st.start + offset] = LayerState(
                w.detach().cpu(), None if b is None else b.detach().cpu(),
                {"weight": _to_cpu(opt.state.get(w, {})), "bias": {} if b is None else _to_cpu(opt.state.get(b, {}))},
            )
    return out


def restore_layers(pipe: Pipeline, layers: Sequence[LayerState]) -> None:
    """Copy saved layers into this process's stages and their optimizers (device and dtype of the live ones)."""
    for s, st in pipe.stages.items():
        opt = pipe.optimizers[s]
        index = {id(p): i for i, p in enumerate(p for group in opt.param_groups for p in group["params"])}
        state: dict[int, dict[str, Any]] = {}
        with torch.no_grad():
            for offset, (w, b) in enumerate(st.params):
                layer = st.start + offset
                saved = layers[layer]
                if (saved.bias is None) != (b is None):
                    raise ValueError(f"resume: layer {layer} has {'no ' if saved.bias is None else 'a '}bias in the "
                                     f"checkpoint, the model {'has' if b is not None else 'has none'}")
                if saved.weight.shape != w.shape or (b is not None and saved.bias.shape != b.shape):
                    raise ValueError(f"resume: layer {layer} has other shapes in the checkpoint than in this model")
                w.copy_(saved.weight)
                if saved.state["weight"]:
                    state[index[id(w)]] = saved.state["weight"]
                if b is not None:
                    b.copy_(saved.bias)
                    if saved.state["bias"]:
                        state[index[id(b)]] = saved.state["bias"]
        try:
            opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"resume: the optimizer state of layers [{st.start}, {st.stop}) does not fit this "
                             f"optimizer ({type(exc).__name__})") from None
