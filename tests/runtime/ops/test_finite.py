"""The dot-product finite check against torch.isfinite(x).all(): every position, inf, -inf and NaN, no overflow."""

import pytest
import torch

from runtime.ops.finite import FiniteCheck


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_finite_check_agrees_with_isfinite_all(dtype):
    check = FiniteCheck()
    x = torch.randn(16, 24).to(dtype)
    assert bool(check(x)) and bool(check(x * 1e30)) == bool(torch.isfinite(x * 1e30).all())
    for bad in (float("inf"), float("-inf"), float("nan")):
        for where in ((0, 0), (7, 13), (15, 23)):
            y = x.clone()
            y[where] = bad
            assert not bool(check(y)), (bad, where)
    big = torch.full((3, 5), torch.finfo(dtype).max, dtype=dtype)  # finite values whose sum would overflow
    assert bool(check(big)) and bool(check(torch.tensor(2.5, dtype=dtype)))  # a 0-dim loss too
