"""A one-line warning when steps run far over the predicted step time: the sign of a contended machine.

When another process holds a core that torch's threads wait for, steps slow down many times over (see
runtime.threads); the prediction, made before the timed steps, does not. Three steps in a row over twice the
prediction (the run's first step, which allocates, not counted) print one line, once per run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FACTOR = 2.0
IN_A_ROW = 3


@dataclass
class SlowSteps:
    """Counts consecutive steps over ``FACTOR`` x ``predicted`` seconds; warns through ``warn`` once."""

    predicted: float | None
    warn: Callable[[str], None]
    streak: int = 0
    warned: bool = False
    seen: int = 0  # the first step of a run allocates gradients and optimizer state: it does not count

    def observe(self, seconds: float, step: int) -> bool:
        """Record one step's time; True when this step triggered the warning."""
        self.seen += 1
        if not self.predicted or self.predicted <= 0 or self.seen == 1:
            return False
        self.streak = self.streak + 1 if seconds > FACTOR * self.predicted else 0
        if self.streak < IN_A_ROW or self.warned:
            return False
        self.warned = True
        self.warn(f"warning: steps {step - IN_A_ROW + 2}-{step + 1} took over {FACTOR:g}x the predicted "
                  f"{self.predicted * 1e3:.2f} ms (last {seconds * 1e3:.2f} ms): another process may be using the "
                  f"cores (try --threads 1, or a quieter machine)")
        return True
