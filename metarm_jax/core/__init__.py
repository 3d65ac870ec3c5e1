"""Pure math, no I/O: reward-model losses, the MetaRM step, and the policy-side losses
(SFT, DPO, PPO/GAE/KL). Imports only jax/numpy."""

from metarm_jax.core import losses, metarm, policy_losses, ppo

__all__ = ["losses", "metarm", "policy_losses", "ppo"]
