"""Pure math, no I/O: reward-model losses, the MetaRM step, the policy-side losses (SFT, DPO,
PPO/GAE/KL), reward-difference statistics and pytree helpers. Imports only jax and numpy."""

from metarm_jax.core import losses, metarm, policy_losses, ppo, stats, tree

__all__ = ["losses", "metarm", "policy_losses", "ppo", "stats", "tree"]
