"""Pure math, no I/O: reward-model losses, the MetaRM step, the policy-side losses (SFT, DPO,
PPO/GAE/KL), reward-difference statistics, pytree helpers and the packed-rows type
(``packed.Packing``), RM-ensemble aggregation and weight averaging. Imports only jax and numpy."""

from metarm_jax.core import ensemble, losses, metarm, packed, policy_losses, ppo, stats, tree

__all__ = [
    "ensemble",
    "losses",
    "metarm",
    "packed",
    "policy_losses",
    "ppo",
    "stats",
    "tree",
]
