"""Float comparisons that hold on any CPU.

XLA:CPU generates code for the host's instruction set (AVX-512, AVX2, SSE4.2), so fusion and
reduction order, and with them the last bits of a result, differ between machines. Two results
of the same program on the same machine (resume vs uninterrupted, eta = 0 vs vanilla) stay
bit-exact; a result compared with a constant or with another program's (torch, NumPy, another
partitioning, another accumulation order) gets one of these tolerances.
"""

from __future__ import annotations

import numpy as np


def ulp_distance(a, b, dtype=np.float32) -> np.ndarray:
    """How many representable ``dtype`` values lie between a and b (0 = the same number)."""
    info = {np.float32: (np.int32, np.uint32), np.float64: (np.int64, np.uint64)}[dtype]
    signed, _ = info

    def ordered(x):
        i = np.asarray(x, dtype).view(signed).astype(np.int64)
        return np.where(i < 0, np.iinfo(signed).min - i, i)  # monotone in the float's value

    return np.abs(ordered(a) - ordered(b))


def assert_within_ulps(actual, expected, max_ulps: int, dtype=np.float32) -> None:
    """|actual - expected| is at most ``max_ulps`` units in the last place of ``dtype``."""
    d = ulp_distance(actual, expected, dtype)
    assert np.all(d <= max_ulps), (
        f"{actual!r} vs {expected!r}: {int(np.max(d))} ulps apart (at most {max_ulps} allowed)"
    )


def assert_close_to_scale(actual, desired, rtol: float, err_msg: str = "") -> None:
    """Elementwise |actual - desired| <= rtol * max|desired|: the error bound of a float sum
    whose terms were added in another order scales with the sum's magnitude, not with each
    element's (an element near zero after cancellation has a large error relative to itself)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    scale = float(np.max(np.abs(desired))) if desired.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)
