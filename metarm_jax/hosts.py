"""Who writes what on a pod, and the barrier after it.

The rule: process 0 (the lead) alone writes the files every process would otherwise write
alike: the synthetic world and a trained tokenizer, build_meta's chunks, manifest and meta file,
HF exports (``save_hf``), ``DONE.json`` markers of the rlhf steps, metrics, reports and the
human-evaluation export. Every such write that another process later reads is followed by
``barrier(name)`` on every process, so no process reads a file before it is complete.
Checkpoints (the train state and the data iterators' state) are written by every process
through orbax, which synchronises them itself.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils


def is_lead() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op on one process). ``name`` must
    be the same on every process, in the same order."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
