"""The skeleton's messages at the real model's size: widened on the way out, the skeleton's columns on the way in."""

import pytest
import torch

from partition.schedule.actions import Op, ScheduleKind
from partition.spec import MLPSpec
from partition.timing import LinkModel
from runtime.calibrate import overhead
from runtime.calibrate.padded import PaddedTransport
from runtime.train.config import TrainConfig
from runtime.train.process import build_pipeline, optimizer_factory
from runtime.transport import LocalTransport, Message

RANGES = [(0, 2), (2, 4)]
WIDTHS = (8, 16, 32, 24, 10)


class Recorder:
    """A transport that keeps what it was handed."""

    def __init__(self):
        self.sent, self.posted, self.asked, self.buffers = [], [], [], []

    def send(self, msg, tensor, dst_device):
        self.sent.append((msg, tensor.clone()))
        self.buffers.append(tensor.data_ptr())

    def ready(self, msg):
        return True

    def prepost(self, msg, shape, dtype, device):
        self.posted.append((msg.key, shape))

    def recv(self, msg, shape, dtype, device):
        self.asked.append((msg.key, shape))
        return torch.arange(shape[0] * shape[1], dtype=dtype).reshape(shape)

    def flush(self):
        pass


def test_messages_travel_as_wide_as_the_real_boundary_and_arrive_as_the_skeletons():
    inner = Recorder()
    t = PaddedTransport(inner, RANGES, WIDTHS)
    forward, backward = Message((Op.F, 1, 0), 7, 0), Message((Op.B, 0, 3), 9, 1)
    assert t.real_width(forward) == 32 and t.real_width(backward) == 32  # both cross the boundary after layer 1
    assert t.real_width(Message((Op.B, 1, 0), 1, 0)) == 10 and t.real_width(Message((Op.F, 0, 0), 1, 0)) == 8
    payload = torch.tensor([[1.5], [2.5], [3.5]])
    t.send(forward, payload, torch.device("cpu"))
    (msg, wide), = inner.sent
    assert msg is forward and wide.shape == (3, 32)
    assert torch.equal(wide[:, :1], payload) and not wide[:, 1:].any()
    t.prepost(backward, (3, 1), torch.float32, torch.device("cpu"))
    got = t.recv(backward, (3, 1), torch.float32, torch.device("cpu"))
    assert inner.posted == [((Op.B, 0, 3), (3, 32))] and inner.asked == [((Op.B, 0, 3), (3, 32))]
    assert got.shape == (3, 1) and got.is_contiguous() and got[:, 0].tolist() == [0.0, 32.0, 64.0]
    assert t.ready(backward)


def test_a_buffer_is_kept_per_message_and_refilled():
    inner = Recorder()
    t = PaddedTransport(inner, RANGES, WIDTHS)
    msg = Message((Op.F, 1, 0), 7, 0)
    t.send(msg, torch.ones(2, 1), torch.device("cpu"))
    t.send(msg, torch.full((2, 1), 4.0), torch.device("cpu"))
    assert [w[:, 0].tolist() for _, w in inner.sent] == [[1.0, 1.0], [4.0, 4.0]]
    assert inner.buffers[0] == inner.buffers[1]  # the same buffer, refilled
    t.send(Message((Op.F, 1, 1), 8, 0), torch.ones(2, 1), torch.device("cpu"))
    assert inner.buffers[2] != inner.buffers[0]  # another message has its own
    with pytest.raises(ValueError, match="rows, features"):
        t.send(msg, torch.ones(2), torch.device("cpu"))


class FakeDist(LocalTransport):
    """Stands in for the transport between processes (so the skeleton's messages get padded), in one process."""

    def __init__(self):
        super().__init__()
        self.widths = []

    def send(self, msg, tensor, dst_device):
        self.widths.append(tensor.shape[1])
        super().send(msg, tensor, dst_device)


def _skeleton():
    cfg = TrainConfig(spec=MLPSpec((6, 20, 12, 4)), batch_size=8, microbatches=2, stages=2, schedule=ScheduleKind.GPIPE,
                      progress=False, partition="0-1,2-2")
    pipe, _ = build_pipeline(cfg)
    return pipe, overhead.skeleton_pipeline(pipe, FakeDist(), optimizer_factory(cfg))


def test_the_skeleton_between_processes_sends_the_real_models_bytes_then_gets_its_transport_back(monkeypatch):
    monkeypatch.setattr(overhead, "DistTransport", FakeDist)
    pipe, skel = _skeleton()
    fake = skel.executor.transport
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    over, _ = overhead.action_overheads(skel, x, y, 8, 3, False, LinkModel(), pipe.cfg.spec.widths)
    assert skel.cfg.spec.widths == (6, 1, 1, 4) and len(over) == 2
    assert fake.widths and set(fake.widths) == {12}  # the boundary after layer 1 is 12 wide in the real model
    assert skel.executor.transport is fake  # its closing all-reduce is timed next, by the transport's rank


def test_the_skeleton_in_one_process_keeps_its_own_messages():
    pipe, skel = _skeleton()  # overhead.DistTransport is the real one: a FakeDist is not padded
    overhead.action_overheads(skel, torch.randn(8, 6), torch.randint(0, 4, (8,)), 8, 3, False, LinkModel(),
                              pipe.cfg.spec.widths)
    assert set(skel.executor.transport.widths) == {1}


def test_under_torchrun_the_untimed_and_the_timed_steps_each_fill_the_window(monkeypatch):
    """A step taking 10 ms and a 0.25 s window: 25 untimed and 25 timed steps (not 2 and 16); in one process 2 + 16;
    with at most 30 steps each, a 1 us step runs 30 + 30."""
    pipe, skel = _skeleton()
    calls = []
    original = skel.step
    monkeypatch.setattr(skel, "step", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    monkeypatch.setattr(overhead, "WINDOW", 0.25)
    monkeypatch.setattr(overhead, "slowest", lambda seconds: 0.01)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    overhead.action_overheads(skel, x, y, 8, 16, True, LinkModel())
    assert len(calls) == 50
    calls.clear()
    overhead.action_overheads(skel, x, y, 8, 16, False, LinkModel())
    assert len(calls) == 18
    calls.clear()
    monkeypatch.setattr(overhead, "MAX_STEPS", 30)
    monkeypatch.setattr(overhead, "slowest", lambda seconds: 1e-6)
    overhead.action_overheads(skel, x, y, 8, 16, True, LinkModel())
    assert len(calls) == 60
