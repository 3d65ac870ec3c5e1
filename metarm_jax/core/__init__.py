"""Pure math, no I/O: reward-model losses and the MetaRM step. Imports only jax/numpy."""

from metarm_jax.core import losses, metarm

__all__ = ["losses", "metarm"]
