"""Which peer is gone: heartbeats in the rendezvous store, one verdict every rank shares, a named exit on SIGTERM.

Every rank bumps its heartbeat counter in the launcher's store a few times a second from a thread of its own.
When a wait fails (gloo says "connection closed" or "timed out", which names at best a neighbour), the rank
looks for the rank whose heartbeat stopped first, and the first rank to decide writes the verdict to the
store; every rank then reports that verdict, so all survivors name the same rank. A rank that fails on its
own announces itself. When torchrun ends the survivors with SIGTERM (it does so as soon as one worker
exits), the signal reaches the watchdog thread through a wakeup pipe even while the main thread is blocked
inside a collective, and the rank prints the verdict before it leaves.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from runtime.output import error_line


class Store(Protocol):
    """The part of torch.distributed's key-value store the watchdog uses."""

    def set(self, key: str, value: str) -> None: ...  # noqa: D102
    def get(self, key: str) -> bytes: ...  # noqa: D102
    def add(self, key: str, amount: int) -> int: ...  # noqa: D102
    def check(self, keys: list[str]) -> bool: ...  # noqa: D102


class Fault(Enum):
    """How a rank was lost."""

    LOST = "lost"  # its process died or was killed: connections closed, heartbeat stopped
    HUNG = "hung"  # alive but silent: waits on it time out, heartbeat stopped
    FAILED = "failed"  # it raised an error of its own and said so


@dataclass(frozen=True)
class Verdict:
    """Who is gone and how; ``detail`` is the timeout in seconds (hung) or the rank's own message (failed)."""

    rank: int
    fault: Fault
    detail: str = ""

    def encode(self) -> str:
        """The text stored under the verdict key."""
        return f"{self.rank}|{self.fault.value}|{self.detail}"

    @classmethod
    def decode(cls, text: str) -> Verdict:
        """Inverse of :meth:`encode`."""
        rank, fault, detail = text.split("|", 2)
        return cls(int(rank), Fault(fault), detail)

    def describe(self) -> str:
        """One line naming the rank."""
        if self.fault is Fault.HUNG:
            return f"timed out after {self.detail} s waiting for rank {self.rank} (it hangs or is stopped)"
        if self.fault is Fault.FAILED:
            return f"rank {self.rank} failed: {self.detail}"
        return f"lost rank {self.rank} (its process died or was killed)"


def timed_out(exc: BaseException) -> bool:
    """Whether a failed wait ran out of time (rather than losing its connection)."""
    text = str(exc).lower()
    return isinstance(exc, TimeoutError) or "timeout" in text or "timed out" in text


class Watchdog:
    """Heartbeats and the shared verdict for one rank of a ``world_size``-rank run."""

    def __init__(self, store: Store, rank: int, world_size: int, timeout: float, label: str,
                 beat: float = 0.25, stale: float = 3.0, store_host: int | None = None) -> None:
        """``store_host``: the rank whose process serves the store (rank 0 without torchrun's agent), if any."""
        self.store, self.rank, self.world_size, self.store_host = store, rank, world_size, store_host
        self.timeout, self.label, self.beat, self.stale = timeout, label, beat, stale
        self._io = threading.Lock()  # one store request at a time from this process's threads
        self._exit = threading.Lock()  # held by whichever thread reports the failure
        self._stop = threading.Event()
        self._seen: dict[int, tuple[int, float]] = {}
        self._store_ok = time.monotonic()  # when the store last answered the heartbeat thread
        self._done: set[int] = set()
        self._pipe: tuple[int, int] | None = None
        self._old_handler: object = None
        with self._io:
            session = self.store.add(f"pipegraph/joins/{rank}", 1)  # one namespace per run in this process group
        self.prefix = f"pipegraph/{session}/"

    def _key(self, what: str, rank: int | None = None) -> str:
        return self.prefix + what + ("" if rank is None else f"/{rank}")

    def start(self) -> Watchdog:
        """Start beating and listening for SIGTERM (call from the main thread)."""
        self._bump()
        now = time.monotonic()  # a rank that never beats counts as still from here on
        self._seen = {r: (-1, now) for r in range(self.world_size)}
        threading.Thread(target=self._beat_loop, name="pipegraph-heartbeat", daemon=True).start()
        if threading.current_thread() is threading.main_thread():
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._pipe = (read, write)
            self._old_handler = signal.signal(signal.SIGTERM, lambda *_: None)
            signal.set_wakeup_fd(write)
            threading.Thread(target=self._signal_loop, args=(read,), name="pipegraph-sigterm", daemon=True).start()
        return self

    def stop(self) -> None:
        """Finished normally: stop beating, and tell the others this rank's silence is not a failure."""
        self._mark_done()
        self._stop.set()
        if self._pipe is not None:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, self._old_handler)
            os.close(self._pipe[1])  # the listening thread sees end-of-file and ends

    def name_failure(self, peer: int | None, exc: BaseException) -> str:
        """The line naming who is gone after a failed wait on ``peer``; from here on this thread reports."""
        guess = Verdict(peer if peer is not None else -1, Fault.HUNG if timed_out(exc) else Fault.LOST,
                        f"{self.timeout:g}")
        verdict = self._decide(guess, hung=timed_out(exc))
        self._exit.acquire()  # the watchdog threads stay quiet: this thread's caller prints the line
        self._mark_done()
        return verdict.describe()

    def announce(self, exc: BaseException) -> None:
        """This rank fails with its own error: make it the verdict so that every other rank names this one."""
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self._claim(Verdict(self.rank, Fault.FAILED, first.replace("|", "/")))
        self._exit.acquire(blocking=False)
        self._mark_done()

    # -- deciding -------------------------------------------------------------------------------------------

    def _decide(self, guess: Verdict, hung: bool) -> Verdict:
        """The shared verdict: another rank's, or the rank whose heartbeat stopped first (claimed here)."""
        deadline = time.monotonic() + self.stale + 5.0
        while time.monotonic() < deadline:
            found = self._read_verdict()
            if found is not None:
                return found
            culprit = self._stalest()
            if culprit is None and self.store_host is not None and time.monotonic() - self._store_ok >= self.stale:
                culprit = self.store_host  # the store is gone with the process that served it
            if culprit is not None:
                return self._claim(Verdict(culprit, Fault.HUNG if hung else Fault.LOST, f"{self.timeout:g}"))
            time.sleep(self.beat)
        return guess if guess.rank >= 0 else Verdict(-1, Fault.LOST)

    def _stalest(self) -> int | None:
        """The rank (not this one, not finished) whose heartbeat has been still longest, if over ``stale``.

        Stillness counts up to the store's last answer only: a store that stopped answering says nothing
        about the ranks.
        """
        now = self._store_ok
        quiet = [(seen, r) for r, (_, seen) in list(self._seen.items())
                 if r != self.rank and r not in self._done and now - seen >= self.stale]
        return min(quiet)[1] if quiet else None

    def _claim(self, verdict: Verdict) -> Verdict:
        """Write ``verdict`` unless another rank's came first; returns the one that stands."""
        try:
            with self._io:
                if self.store.add(self._key("claims"), 1) == 1:
                    self.store.set(self._key("verdict"), verdict.encode())
                    return verdict
            for _ in range(int(5.0 / self.beat)):
                found = self._read_verdict()
                if found is not None:
                    return found
                time.sleep(self.beat)
        except Exception:  # noqa: BLE001 - the store itself is gone: keep this rank's own view
            pass
        return verdict

    def _read_verdict(self) -> Verdict | None:
        try:
            with self._io:
                if not self.store.check([self._key("verdict")]):
                    return None
                return Verdict.decode(self.store.get(self._key("verdict")).decode())
        except Exception:  # noqa: BLE001 - an unreachable store has no verdict
            return None

    # -- the threads ----------------------------------------------------------------------------------------

    def _bump(self) -> None:
        with self._io:
            self.store.add(self._key("beat", self.rank), 1)

    def _mark_done(self) -> None:
        try:
            with self._io:
                self.store.add(self._key("done", self.rank), 1)
        except Exception:  # noqa: BLE001 - nobody is left to tell
            pass

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat):
            try:
                self._bump()
                with self._io:
                    counts = {r: self.store.add(self._key("beat", r), 0) for r in range(self.world_size)}
                    self._done = {r for r in range(self.world_size) if self.store.add(self._key("done", r), 0)}
            except Exception:  # noqa: BLE001 - a store hiccup: try again next beat
                continue
            now = self._store_ok = time.monotonic()
            for r, count in counts.items():
                if r not in self._seen or self._seen[r][0] != count:
                    self._seen[r] = (count, now)
            verdict = self._read_verdict()
            if verdict is not None and verdict.rank != self.rank:
                self._leave(verdict.describe())

    def _signal_loop(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                verdict = self._decide(Verdict(-1, Fault.LOST), hung=False)
                line = verdict.describe() if verdict.rank >= 0 else "terminated by the launcher (SIGTERM)"
                self._leave(line)

    def _leave(self, line: str) -> None:
        """Print the one line and end the process, unless another thread of it is already reporting."""
        if not self._exit.acquire(blocking=False):
            return
        self._mark_done()
        error_line(f"{self.label}: failed: {line}")
        sys.stdout.flush()
        os._exit(1)
