"""Exercise 3, memory for training vs inference: the memory model's terms beside the bytes measured here and now."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from partition.cost import Optimizer
from partition.memory import inference_memory, training_memory
from partition.units import format_bytes
from runtime.chapter.common import ChapterConfig, minibatch, model
from runtime.chapter.saved import saved_while
from runtime.ops.model import PipeModel


class _LivePeak(TorchDispatchMode):
    """Peak bytes of the tensors operations return while it is active and that are still alive (each storage once),
    leaving out the storages of ``exclude`` (the parameters, which views such as W^T share)."""

    def __init__(self, exclude: list[torch.Tensor]) -> None:
        super().__init__()
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.items: list[tuple[weakref.ref, int, int]] = []
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.excluded:
                self.items.append((weakref.ref(t), t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        self.items = [item for item in self.items if item[0]() is not None]
        self.peak = max(self.peak, sum({ptr: n for _, ptr, n in self.items}.values()))
        return out


def _nbytes(tensors: object) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer(kind: Optimizer, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if kind is Optimizer.ADAM:
        return torch.optim.Adam(params, lr=1e-3)
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9 if kind is Optimizer.MOMENTUM else 0.0)


def measure(cfg: ChapterConfig) -> tuple[dict[str, int], dict[str, int]]:
    """(training, inference) bytes measured on the model: training by term after one step, inference as the peak of
    live tensors in a no-grad forward, the input batch counted."""
    net: PipeModel = model(cfg)
    x, y = minibatch(cfg)
    params = list(net.parameters())
    saved, j = saved_while(lambda: net.objective(x, y), exclude=params)
    j.backward()
    opt = _optimizer(cfg.optimizer, params)
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim() > 0]
    training = {"parameters": _nbytes(params), "gradients": _nbytes(p.grad for p in params),
                "optimizer": _nbytes(state), "saved activations": saved.nbytes}
    tracker = _LivePeak(params)
    with torch.no_grad(), tracker:
        net(x)
    inference = {"parameters": _nbytes(params), "live activations": tracker.peak + _nbytes([x])}
    return training, inference


def exercise_memory(cfg: ChapterConfig) -> dict:
    """Predicted (``partition.memory``) and measured bytes, term by term, for training and for inference."""
    measured_train, measured_infer = measure(cfg)
    train = training_memory(cfg.spec, cfg.batch, cfg.dtype, cfg.optimizer)
    infer = inference_memory(cfg.spec, cfg.batch, cfg.dtype)

    def rows(report: object, measured: dict[str, int]) -> list[dict]:
        return [{"term": term, "predicted": n, "measured": measured.get(term)} for term, n in report.rows()
                if n or term in measured]

    return {"exercise": cfg.exercise.value, "widths": list(cfg.spec.widths), "batch": cfg.batch, "dtype": cfg.dtype,
            "optimizer": cfg.optimizer.value,
            "training": {"rows": rows(train, measured_train), "predicted": train.total,
                         "measured": sum(measured_train.values())},
            "inference": {"rows": rows(infer, measured_infer), "predicted": infer.total,
                          "measured": sum(measured_infer.values())},
            "ratio": train.total / infer.total}


def memory_text(report: dict) -> str:
    """Both footprints, term by term, predicted beside measured."""
    lines = [f"exercise 3: memory of MLP {'-'.join(map(str, report['widths']))}, minibatch {report['batch']}, "
             f"{report['dtype']}, optimizer {report['optimizer']}"]
    for part in ("training", "inference"):
        lines += ["", f"{part:<20}{'predicted':>14}{'measured':>14}"]
        for r in report[part]["rows"]:
            measured = "-" if r["measured"] is None else format_bytes(r["measured"])
            lines.append(f"  {r['term']:<18}{format_bytes(r['predicted']):>14}{measured:>14}")
        lines.append(f"  {'total':<18}{format_bytes(report[part]['predicted']):>14}{format_bytes(report[part]['measured']):>14}")
    lines += ["", f"Training needs {report['ratio']:.2f}x the memory of inference here: it keeps gradients, optimizer state "
                  "and every activation the backward pass reads, where inference keeps only the layer being computed."]
    return "\n".join(lines)
