"""A dependency-free text progress bar for long runs (written to stderr, redrawn in place)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#####.....] 50% 5/10 epoch 3 loss 0.41 12.3s`` on one line; silent when disabled."""

    def __init__(self, total: int, label: str = "", enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1, note: str = "") -> None:
        """Advance by ``n`` and redraw (at most ten times a second, always at the end)."""
        self.done = min(self.done + n, self.total)
        now = time.perf_counter()
        if not self.enabled or (now - self._last < 0.1 and self.done < self.total):
            return
        self._last = now
        width = 24
        filled = int(width * self.done / self.total)
        bar = "#" * filled + "." * (width - filled)
        pct = 100 * self.done / self.total
        self.stream.write(f"\r{self.label} [{bar}] {pct:3.0f}% {self.done}/{self.total} {note} {now - self.start:.1f}s ")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
