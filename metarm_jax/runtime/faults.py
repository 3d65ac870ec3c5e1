"""Fault points for the reliability campaign (bench/soak.py, tests/test_reliability.py).

The code calls ``point(name)`` at the moments a crash is most dangerous (a checkpoint being
written, a build_meta chunk between its file and the manifest, a DONE.json marker, the report).
Nothing happens unless the environment variable ``METARM_FAULT`` names that point:

    METARM_FAULT=checkpoint_saving:2     SIGKILL this process at the 2nd time it reaches the point
    METARM_FAULT=enospc:checkpoint_saving:1   raise OSError(ENOSPC) there instead (a full disk)
    METARM_FAULT=nan:reward:2             ``poison("reward", x)`` returns x with a NaN, 2nd call
    METARM_FAULT=term:train_step:3        send this process SIGTERM (a preemption notice) there

Points: ``stage_start:<stage>``, ``train_step`` (a train step done, before the loop decides to
save), ``checkpoint_saving`` (an async checkpoint write in flight),
``build_meta_chunk`` (a chunk written, its manifest not yet), ``done_marker`` (a rlhf step's
DONE.json about to be written), ``report`` (the report being written). The check is one dict
lookup, so the points cost nothing in a normal run.
"""

from __future__ import annotations

import errno
import os
import signal

_counts: dict[str, int] = {}


def _spec() -> tuple[str, str, int] | None:
    raw = os.environ.get("METARM_FAULT", "")
    if not raw:
        return None
    parts = raw.split(":")
    kind = parts[0] if parts[0] in ("enospc", "nan", "term") else "kill"
    if kind != "kill":
        parts = parts[1:]
    *name, nth = parts
    return kind, ":".join(name), int(nth)


def point(name: str) -> None:
    """Crash here if METARM_FAULT asks for this point's n-th occurrence (see the module doc)."""
    spec = _spec()
    if spec is None:
        return
    kind, target, nth = spec
    if name != target or kind == "nan":
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != nth:
        return
    if kind == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    if kind == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def poison(name: str, x):
    """``x`` (a host or device array), with its first element NaN if METARM_FAULT is
    ``nan:<name>:<n>`` and this is the n-th call for ``name``; else ``x`` itself."""
    spec = _spec()
    if spec is None or spec[0] != "nan" or spec[1] != name:
        return x
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] != spec[2]:
        return x
    import numpy as np

    flat = np.array(x, dtype=np.float32).reshape(-1)
    flat[0] = np.nan
    return flat.reshape(np.shape(x))
