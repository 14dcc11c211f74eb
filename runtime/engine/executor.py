"""Executes each rank's action list from the schedule module (and nothing else), recording real timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from partition.schedule.actions import Action, Op, Schedule, format_table
from partition.schedule.comms import insert_comms
from runtime.engine.stage import Stage
from runtime.transport import Message, Transport

RECEIVES = (Op.RECV_F, Op.RECV_B)


@dataclass(frozen=True)
class ActionRecord:
    """One executed action: which rank ran it, wall-clock start and end (seconds), how many W it fused."""

    rank: int
    action: Action
    start: float
    end: float
    fused: int = 1


@dataclass
class StepResult:
    """What one step (one schedule flush) produced on this process."""

    loss: torch.Tensor | None
    records: list[ActionRecord] = field(default_factory=list)


class Executor:
    """Runs ``schedule`` (communication inserted here) for the ranks this process holds.

    One process may hold every rank (single-process emulation: the ranks' lists are interleaved,
    each advancing until it waits on a message) or a single rank (torchrun: receives block).
    Consecutive W actions of one stage run as one fused weight-gradient GEMM per layer.
    ``on_grads_ready(stage)`` is called right after a stage's last weight-gradient action of the step
    (its gradients are then final), so that their reduction across replicas can start while other work runs.
    """

    def __init__(
        self,
        schedule: Schedule,
        stages: Mapping[int, Stage],
        transport: Transport,
        ranks: Sequence[int],
        fuse_w: bool = True,
        on_grads_ready: Callable[[Stage], None] | None = None,
    ) -> None:
        self.schedule = insert_comms(schedule)
        self.stages = dict(stages)
        self.transport = transport
        self.ranks = list(ranks)
        self.fuse_w = fuse_w
        self.on_grads_ready = on_grads_ready
        self._last_grad: dict[tuple[int, int], int] = {}  # (rank, stage) -> index of its last W or BW
        for r in self.ranks:
            for i, a in enumerate(self.schedule.actions[r]):
                if a.stage not in self.stages:
                    raise ValueError(f"executor: rank {r} runs {a} but this process holds no stage {a.stage}")
                if a.op in (Op.W, Op.BW):
                    self._last_grad[(r, a.stage)] = i
        # (rank, index of a receive, or -1 for the start of the step) -> the rank's next receive, posted then
        self._next_recv: dict[tuple[int, int], Action] = {}
        for r in self.ranks:
            recvs = [(-1, None)] + [(i, a) for i, a in enumerate(self.schedule.actions[r]) if a.op in RECEIVES]
            for (i, _), (_, b) in zip(recvs, recvs[1:]):
                self._next_recv[(r, i)] = b
        self._inbox: dict[tuple[Op, int, int], torch.Tensor] = {}
        self._outbox: dict[tuple[Op, int, int], torch.Tensor] = {}

    def _rank_of(self, stage: int) -> int:
        return self.schedule.placement[stage]

    def _message(self, op: Op, stage: int, mb: int, peer: int) -> Message:
        """The message feeding (op, stage, mb): F = input of stage's F, B = output gradient of stage's backward."""
        direction = 0 if op is Op.F else 1
        tag = (stage * 2 + direction) * self.schedule.num_microbatches + mb
        return Message((op, stage, mb), tag, peer)

    def _recv_message(self, a: Action) -> Message:
        if a.op is Op.RECV_F:
            return self._message(Op.F, a.stage, a.microbatch, self._rank_of(a.stage - 1))
        return self._message(Op.B, a.stage, a.microbatch, self._rank_of(a.stage + 1))

    def run_step(
        self,
        inputs: Mapping[int, torch.Tensor],
        targets: Mapping[int, torch.Tensor],
        denom: float,
        rows: int,
        sync_timing: bool = False,
    ) -> StepResult:
        """Run one flush over all microbatches; ``rows`` is the microbatch size (receive buffer shapes)."""
        self._inputs, self._targets, self._denom, self._rows = inputs, targets, denom, rows
        self._sync = sync_timing
        result = StepResult(loss=None)
        for r in self.ranks:  # each rank's receives are posted one ahead (runtime.comm), the first one now
            if (r, -1) in self._next_recv:
                self.transport.prepost(*self._receive_spec(self._next_recv[(r, -1)]))
        ptr = dict.fromkeys(self.ranks, 0)
        lists = {r: self.schedule.actions[r] for r in self.ranks}
        while any(ptr[r] < len(lists[r]) for r in self.ranks):
            progressed = False
            for r in self.ranks:
                acts = lists[r]
                while ptr[r] < len(acts):
                    a = acts[ptr[r]]
                    if a.op in RECEIVES and not self.transport.ready(self._recv_message(a)):
                        break
                    ptr[r] += self._execute(r, acts, ptr[r], result)
                    progressed = True
            if not progressed:
                stuck = {r: str(lists[r][ptr[r]]) for r in self.ranks if ptr[r] < len(lists[r])}
                raise RuntimeError(f"executor: no rank can progress, waiting at {stuck}\n{format_table(self.schedule)}")
        self.transport.flush()
        if self._inbox or self._outbox:
            left = sorted(map(str, {**self._inbox, **self._outbox}))[:4]
            raise RuntimeError(f"executor: tensors left over after the step: {left}")
        return result

    def _execute(self, rank: int, acts: Sequence[Action], i: int, result: StepResult) -> int:
        """Run acts[i] (and following W of the same stage when fusing); returns how many actions it consumed."""
        a = acts[i]
        count = 1
        if a.op is Op.W and self.fuse_w:
            while i + count < len(acts) and acts[i + count].op is Op.W and acts[i + count].stage == a.stage:
                count += 1
        start = time.perf_counter()
        self._dispatch(a, acts[i : i + count], result)
        if self._sync and self.stages[a.stage].device.type == "cuda":
            torch.cuda.synchronize(self.stages[a.stage].device)
        result.records.append(ActionRecord(rank, a, start, time.perf_counter(), count))
        if (rank, i) in self._next_recv:
            self.transport.prepost(*self._receive_spec(self._next_recv[(rank, i)]))
        if self.on_grads_ready is not None and i <= self._last_grad.get((rank, a.stage), -1) < i + count:
            self.on_grads_ready(self.stages[a.stage])
        return count

    def _dispatch(self, a: Action, group: Sequence[Action], result: StepResult) -> None:
        stage = self.stages[a.stage]
        s, mb = a.stage, a.microbatch
        if a.op is Op.F:
            x = self._inputs[mb] if stage.is_first else self._inbox.pop((Op.F, s, mb))
            out = stage.forward(mb, x, self._targets.get(mb) if stage.is_last else None, self._denom)
            if stage.is_last:
                result.loss = out if result.loss is None else result.loss + out
            else:
                self._hand_on(Op.F, s, s + 1, mb, out)
        elif a.op in (Op.B, Op.BW):
            grad = None if stage.is_last else self._inbox.pop((Op.B, s, mb))
            grad_in = stage.backward_input(mb, grad, with_weights=a.op is Op.BW)
            if a.op is Op.BW:
                stage.backward_weight(mb)
            if not stage.is_first:
                self._hand_on(Op.B, s, s - 1, mb, grad_in)
        elif a.op is Op.W:
            stage.backward_weight_fused([g.microbatch for g in group])
        elif a.op in (Op.SEND_F, Op.SEND_B):
            op, dst = (Op.F, s + 1) if a.op is Op.SEND_F else (Op.B, s - 1)
            tensor = self._outbox.pop((op, s, mb))
            dst_dev = self.stages[dst].device if dst in self.stages else stage.device
            self.transport.send(self._message(op, dst, mb, self._rank_of(dst)), tensor, dst_dev)
        elif a.op in RECEIVES:
            msg, shape, dtype, device = self._receive_spec(a)
            self._inbox[msg.key] = self.transport.recv(msg, shape, dtype, device)
        else:  # pragma: no cover - every Op is handled above
            raise ValueError(f"executor: unknown action {a}")

    def _receive_spec(self, a: Action) -> tuple[Message, tuple[int, int], torch.dtype, torch.device]:
        """The message a receive action takes, with its buffer's shape, dtype and device (from the plan)."""
        stage = self.stages[a.stage]
        width = stage.input_width if a.op is Op.RECV_F else stage.output_width
        return self._recv_message(a), (self._rows, width), stage.params[0][0].dtype, stage.device

    def _hand_on(self, op: Op, src: int, dst: int, mb: int, tensor: torch.Tensor) -> None:
        """Pass ``tensor`` to stage ``dst``: in-process when it lives on the same rank, else via a SEND action."""
        if self._rank_of(dst) == self._rank_of(src):
            self._inbox[(op, dst, mb)] = tensor.to(self.stages[dst].device)
        else:
            self._outbox[(op, src, mb)] = tensor
