"""The Transport protocol's two implementations, and the watchdog's verdict rules on an in-memory store."""

import inspect
import threading

import pytest
import torch

from runtime.comm import DistTransport, LocalTransport, Transport
from runtime.engine import watchdog
from runtime.engine.watchdog import Fault, Verdict, Watchdog
from runtime.ops.clip import clip_grad_norm


@pytest.mark.parametrize("cls", [LocalTransport, DistTransport])
def test_both_transports_implement_the_protocol_with_its_signatures(cls):
    members = [n for n, v in vars(Transport).items() if inspect.isfunction(v) and not n.startswith("_")]
    assert sorted(members) == ["flush", "prepost", "ready", "recv", "send"]
    for name in members:
        assert inspect.signature(getattr(cls, name)) == inspect.signature(getattr(Transport, name)), name


class DictStore:
    """The store calls the watchdog makes, on a dict (thread-safe like the real one)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key, value):
        with self.lock:
            self.data[key] = value.encode()

    def get(self, key):
        with self.lock:
            return self.data[key]

    def add(self, key, amount):
        with self.lock:
            value = int(self.data.get(key, b"0")) + amount
            self.data[key] = str(value).encode()
            return value

    def check(self, keys):
        with self.lock:
            return all(k in self.data for k in keys)


def test_verdict_round_trips_and_reads_as_one_line():
    for v in (Verdict(3, Fault.LOST), Verdict(2, Fault.HUNG, "5"), Verdict(1, Fault.FAILED, "bad | input")):
        assert Verdict.decode(v.encode()) == v
    assert Verdict(2, Fault.HUNG, "5").describe() == "timed out after 5 s waiting for rank 2 (it hangs or is stopped)"
    assert Verdict(3, Fault.LOST).describe() == "lost rank 3 (its process died or was killed)"


def test_the_rank_whose_heartbeat_stopped_first_is_named_and_the_first_verdict_stands(monkeypatch):
    store = DictStore()
    dogs = [Watchdog(store, r, 4, timeout=5.0, label=f"r{r}", beat=0.01, stale=0.2) for r in range(4)]
    now = 100.0
    # rank 3 went quiet at t=90, rank 1 (another survivor that already left) at t=95 but said it was done
    for dog in dogs:
        dog._seen = {0: (9, now), 1: (7, 95.0), 2: (8, now), 3: (5, 90.0)}
        dog._done = {1}
        dog._store_ok = now  # the store answered at t=100
    monkeypatch.setattr(watchdog.time, "monotonic", lambda: now)
    assert dogs[0]._stalest() == 3
    first = dogs[0]._decide(Verdict(2, Fault.LOST), hung=True)  # its own wait was on rank 2: still rank 3
    assert first == Verdict(3, Fault.HUNG, "5")
    dogs[2]._seen[3] = (5, now)  # rank 2 sees nobody stale, yet adopts the verdict already written
    assert dogs[2]._decide(Verdict(0, Fault.LOST), hung=False) == first


def test_a_failing_rank_announces_itself():
    store = DictStore()
    failing, other = (Watchdog(store, r, 2, timeout=5.0, label=f"r{r}") for r in (1, 0))
    failing.announce(ValueError("resume: no checkpoint in ckpt\nsecond line"))
    assert other._read_verdict() == Verdict(1, Fault.FAILED, "resume: no checkpoint in ckpt")


def test_split_clipping_equals_torch_clip_grad_norm_on_the_whole():
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4)]
    ref = [g.clone() for g in grads]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in ref]
    for p, g in zip(params, ref):
        p.grad = g
    want = float(torch.nn.utils.clip_grad_norm_(params, 0.5))
    halves = (grads[:2], grads[2:])  # two "ranks", each adding the other's partial sum of squares
    partial = [sum(float(g.square().sum()) for g in h) for h in halves]
    norms = [clip_grad_norm(h, 0.5, lambda own, other=partial[1 - i]: own + other) for i, h in enumerate(halves)]
    assert norms[0] == norms[1] == pytest.approx(want, rel=1e-15)
    assert want > 0.5
    for g, r in zip(grads, ref):
        assert torch.allclose(g, r, rtol=0, atol=1e-15)
