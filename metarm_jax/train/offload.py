"""Frozen models (the PPO stage's reference and reward model): params that never train, kept
in host memory between uses with ``config.ppo.offload_frozen`` (``Frozen``).
"""

from __future__ import annotations

import jax


def host_memory_kind() -> str | None:
    """'pinned_host' when the device has it (GPU, TPU, and jax's CPU client), else None."""
    kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
    return "pinned_host" if "pinned_host" in kinds else None


class Frozen:
    """Params of a frozen model; with ``offload``, kept in host memory between uses.

    ``get()`` returns them on their device shardings (the one table's); ``release()`` moves them
    back to host memory (a host memory kind when the backend has one, else numpy arrays).
    """

    def __init__(self, params, offload: bool):
        self.shardings = jax.tree.map(lambda x: x.sharding, params)
        self.offload = offload
        self.kind = host_memory_kind() if offload else None
        self.params = params
        self.release()

    def get(self):
        if self.offload:
            return jax.device_put(self.params, self.shardings)
        return self.params

    def release(self) -> None:
        if not self.offload:
            return
        if self.kind is not None:
            self.params = jax.device_put(
                self.params, jax.tree.map(lambda s: s.with_memory_kind(self.kind), self.shardings)
            )
        else:
            self.params = jax.device_get(self.params)
