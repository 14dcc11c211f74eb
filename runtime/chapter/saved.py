"""What autograd keeps for backward: the tensors saved while a piece of code builds a graph, and their bytes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Saved:
    """``tensors``: how many times a tensor was saved for backward; ``nbytes``: bytes of the distinct storages
    among them, leaving out the excluded ones (parameters: saving one costs no memory of its own)."""

    tensors: int
    nbytes: int


def saved_while(run: Callable[[], T], exclude: Iterable[torch.Tensor] = ()) -> tuple[Saved, T]:
    """Run ``run()`` under saved_tensors_hooks; what it saved, and its result (which keeps the saved tensors alive)."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = run()
    return Saved(count, sum(storages.values())), result


def graph_nodes(roots: Iterable[torch.Tensor]) -> int:
    """Number of distinct autograd nodes (backward functions) reachable from the ``grad_fn`` of ``roots``."""
    seen: set[int] = set()
    stack = [t.grad_fn for t in roots if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return len(seen)
