"""The contenders every benchmark draws from: our schedules, the full-batch pass, gradient accumulation, peers.

Every contender's timed step holds the same work: zero the gradients, forward and backward of the batch (in
microbatches, or in one piece for the full batch), the optimizer step (SGD with lr = 0: its arithmetic runs,
the weights stay seeded, so every step sees the same weights), and, where ``after_step`` is given (under
torchrun: the all-reduce of the step's loss), that too. Every contender also reports the gradients its last
step left (``Variant.grads``), by (layer, "w" or "b"), for the equal-math check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from partition.schedule.actions import ScheduleKind
from partition.spec import MLPSpec
from runtime.bench.models import LossFn, sgd_frozen
from runtime.bench.timing import Group, Variant
from runtime.engine.pipeline import Pipeline, PipelineConfig
from runtime.engine.stage import Engine
from runtime.ops.gemm import Gemm, gemm_problem
from runtime.transport import LocalTransport

DEFER = "+defer-w"
DIRECT = "+direct"
ONEDNN = "+onednn"
FULL_BATCH = "full-batch"
FULL_BATCH_EVERY_RANK = "full-batch:every-rank"
COMPILED = "full-batch:compiled"
FULL_BATCH_ONEDNN = "full-batch:onednn"
FULL_BATCH_ONEDNN_EVERY_RANK = "full-batch:onednn:every-rank"
ONE_DEVICE = (FULL_BATCH, FULL_BATCH_ONEDNN, COMPILED)  # the one-device baselines: the fastest is the limit
EVERY_RANK = (FULL_BATCH_EVERY_RANK, FULL_BATCH_ONEDNN_EVERY_RANK)  # the same on every rank at once
AfterStep = Callable[[object], object]  # loss -> loss, inside the timed step (e.g. the loss all-reduce)
Grads = dict[tuple[int, str], torch.Tensor]


@dataclass(frozen=True)
class OurSchedule:
    """One of our contenders: a schedule kind, optionally with the W deferred to the end of the step (the drain's
    waits holding one each, ``partition.schedule.transforms``),
    optionally on the direct engine (the same equations without autograd's engine), and there optionally with
    oneDNN's GEMM kernel for F and B (``runtime.ops.gemm``)."""

    kind: ScheduleKind
    defer_w: bool = False
    direct: bool = False
    onednn: bool = False

    def __post_init__(self) -> None:
        if self.onednn and not self.direct:
            raise ValueError(f"schedules: {ONEDNN} needs {DIRECT} (oneDNN's kernel has no autograd formula)")

    def unavailable(self, device: str | torch.device, dtype: torch.dtype) -> Variant | None:
        """This contender as a failed row saying why, where it cannot run on ``device`` in ``dtype`` (None: it can);
        the same on every rank, so all of them skip it alike."""
        problem = gemm_problem(Gemm.ONEDNN, [device], dtype, self.direct) if self.onednn else None
        return None if problem is None else Variant.failed(f"ours:{self.name}", Group.OURS, ValueError(problem))

    @property
    def name(self) -> str:
        """``1f1b``, ``1f1b+defer-w``, ``1f1b+defer-w+direct`` or ``1f1b+defer-w+direct+onednn``."""
        return (self.kind.value + (DEFER if self.defer_w else "") + (DIRECT if self.direct else "")
                + (ONEDNN if self.onednn else ""))

    @classmethod
    def parse(cls, text: str) -> OurSchedule:
        """``"zb-h1"``, ``"1f1b+defer-w"``, ``"gpipe+direct+onednn"`` (an ``ours:`` prefix is allowed); ValueError
        names the choices."""
        base = text.removeprefix("ours:")
        flags = []
        for suffix in (ONEDNN, DIRECT, DEFER):
            flags.append(base.endswith(suffix))
            base = base.removesuffix(suffix)
        onednn, direct, defer = flags
        try:
            kind = ScheduleKind(base)
            if kind not in ScheduleKind.fixed():
                raise ValueError(base)
        except ValueError:
            names = ", ".join(k.value for k in ScheduleKind.fixed())
            raise ValueError(f"schedules: unknown {text!r}; choose from {names}, each optionally with "
                             f"{DEFER}, {DIRECT} and {DIRECT}{ONEDNN}, in that order") from None
        return cls(kind, defer, direct, onednn)


def parse_schedules(text: str | None, default: tuple[OurSchedule, ...]) -> tuple[OurSchedule, ...]:
    """``"1f1b,zb-h1+direct"`` -> our contenders (``default`` when ``text`` is empty or None)."""
    names = [s.strip() for s in (text or "").split(",") if s.strip()]
    return tuple(OurSchedule.parse(s) for s in names) if names else default


DEFAULT_SCHEDULES = tuple(OurSchedule(k) for k in ScheduleKind.fixed()) + (
    OurSchedule(ScheduleKind.ONE_F_ONE_B, True),
    OurSchedule(ScheduleKind.GPIPE, False, True),
    OurSchedule(ScheduleKind.ONE_F_ONE_B, False, True),
    OurSchedule(ScheduleKind.ONE_F_ONE_B, True, True),
)


def pipeline_config(spec: MLPSpec, ranges: tuple, ours: OurSchedule, m: int, device: str, dtype: torch.dtype,
                    seed: int, virtual: int) -> PipelineConfig:
    """The PipelineConfig of one of our contenders (all stages on ``device``)."""
    extra: dict[str, object] = {"defer_w": True} if ours.defer_w else {}
    if ours.direct:
        extra["engine"] = Engine.DIRECT
    if ours.onednn:
        extra["gemm"] = Gemm.ONEDNN
    v = virtual if ours.kind is ScheduleKind.INTERLEAVED_1F1B else 1
    return PipelineConfig(spec, ranges, ours.kind, m, (device,) * len(ranges), dtype, seed, v, True, **extra)


def _keep(loss: object) -> object:
    return loss


def pipeline_grads(pipe: Pipeline) -> Callable[[], Grads]:
    """The gradients held by this process's stages of ``pipe``, by (layer, "w"/"b")."""

    def grads() -> Grads:
        out: Grads = {}
        for st in pipe.stages.values():
            for i, (w, b) in enumerate(st.params):
                out[(st.start + i, "w")] = w.grad
                if b is not None:
                    out[(st.start + i, "b")] = b.grad
        return out

    return grads


def module_grads(modules: Iterable[tuple[int, nn.Module]]) -> Callable[[], Grads]:
    """The gradients of the Linear layers of each (first layer index, module), by (layer, "w"/"b")."""

    def grads() -> Grads:
        out: Grads = {}
        for first, module in modules:
            for i, lin in enumerate(m for m in module.modules() if isinstance(m, nn.Linear)):
                out[(first + i, "w")] = lin.weight.grad
                if lin.bias is not None:
                    out[(first + i, "b")] = lin.bias.grad
        return out

    return grads


def ours_variant(name: str, pipe: Pipeline, x: torch.Tensor | None, y: torch.Tensor | None, batch: int,
                 after_step: AfterStep = _keep) -> Variant:
    """Our pipeline's step (its zero-grad and optimizer step are inside ``Pipeline.step``)."""
    return Variant(f"ours:{name}", lambda: after_step(pipe.step(x, y, batch).loss), group=Group.OURS,
                   grads=pipeline_grads(pipe))


def torch_variant(name: str, group: Group, params: list[nn.Parameter], run: Callable[[], object],
                  grads: Callable[[], Grads], after_step: AfterStep = _keep) -> Variant:
    """A plain-torch contender: zero grads (set to None), ``run()`` (forward + backward, returns the loss), SGD."""
    opt = sgd_frozen(params)

    def step() -> object:
        opt.zero_grad(set_to_none=True)
        loss = run()
        opt.step()
        return after_step(loss)

    return Variant(name, step, group=group, grads=grads)


def full_batch_run(seq: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                   compiled: bool = False) -> Callable[[], torch.Tensor]:
    """One forward + backward of the whole batch in one piece (m = 1), optionally under ``torch.compile``."""
    forward = torch.compile(lambda a, b: loss_fn(seq(a), b)) if compiled else (lambda a, b: loss_fn(seq(a), b))

    def run() -> torch.Tensor:
        loss = forward(x, y)
        loss.backward()
        return loss.detach()

    return run


def accumulation_run(seq: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                     microbatches: int) -> Callable[[], torch.Tensor]:
    """Forward + backward microbatch by microbatch into the same gradients (``loss_fn`` scaled by 1/m already)."""
    rows = x.shape[0] // microbatches

    def run() -> torch.Tensor:
        total = torch.zeros((), device=x.device, dtype=torch.float64)
        for xm, ym in zip(x.split(rows), y.split(rows)):
            loss = loss_fn(seq(xm), ym)
            loss.backward()
            total += loss.detach()
        return total

    return run


def full_batch_variants(seq: nn.Sequential, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, compiled: bool,
                        after_step: AfterStep = _keep) -> list[Variant]:
    """The full-batch pass (m = 1) and, with ``compiled``, the same under ``torch.compile``: the one-device baselines."""
    params, grads = list(seq.parameters()), module_grads([(0, seq)])
    out = [torch_variant(FULL_BATCH, Group.BASELINE, params, full_batch_run(seq, loss_fn, x, y), grads, after_step)]
    if compiled:
        try:
            run = full_batch_run(seq, loss_fn, x, y, compiled=True)
        except Exception as exc:  # noqa: BLE001 - torch.compile that cannot start is reported, not fatal
            return out + [Variant.failed(COMPILED, Group.BASELINE, exc)]
        out.append(torch_variant(COMPILED, Group.BASELINE, params, run, grads, after_step))
    return out


def onednn_full_batch(spec: MLPSpec, params: Sequence[tuple[torch.Tensor, torch.Tensor | None]], dtype: torch.dtype,
                      device: torch.device, x: torch.Tensor | None, y: torch.Tensor | None,
                      after_step: AfterStep = _keep, name: str = FULL_BATCH_ONEDNN) -> Variant:
    """The full batch in one piece (m = 1, one stage) on our direct engine with oneDNN's GEMMs: the one-device
    baseline for contenders that use them (a failed row saying why where oneDNN cannot run)."""
    problem = gemm_problem(Gemm.ONEDNN, [device], dtype, direct=True)
    if problem is not None:
        return Variant.failed(name, Group.BASELINE, ValueError(problem))
    cfg = PipelineConfig(spec, ((0, spec.num_layers),), ScheduleKind.GPIPE, 1, (str(device),), dtype,
                         engine=Engine.DIRECT, gemm=Gemm.ONEDNN)
    pipe = Pipeline(cfg, sgd_frozen, LocalTransport(), init=params)
    return Variant(name, lambda: after_step(pipe.step(x, y, x.shape[0]).loss), group=Group.BASELINE,
                   grads=pipeline_grads(pipe))


class Placement(Enum):
    """Where a torch.distributed.pipelining schedule puts its stages (ours place interleaved and zb-v alike)."""

    ONE = "one stage a rank"
    LOOP = "stage s on rank s mod p (2 a rank under torchrun, all on one rank)"
    V = "rank r holds stages r and 2p-1-r"

    def num_stages(self, world: int, one_rank: int) -> int:
        """Stages over ``world`` ranks (``one_rank``: how many a looped schedule gets on a single rank)."""
        if self is Placement.ONE:
            return world
        return 2 * world if self is Placement.V or world > 1 else one_rank

    def stages_of(self, rank: int, world: int, num_stages: int) -> list[int]:
        """The stages ``rank`` holds, in increasing order."""
        if self is Placement.V:
            return sorted({rank, num_stages - 1 - rank})
        return [s for s in range(num_stages) if s % world == rank]


@dataclass(frozen=True)
class Peer:
    """A torch.distributed.pipelining schedule as a contender: its class name, placement and builder.

    ``build(modules, num_stages, microbatches, loss_fn, device)`` gets this rank's stage modules by stage index
    and returns ``run(x, y)``: one forward + backward of the batch, the summed loss where this rank holds it.
    """

    schedule: str
    placement: Placement
    build: Callable[..., Callable[[torch.Tensor | None, torch.Tensor | None], object]]
