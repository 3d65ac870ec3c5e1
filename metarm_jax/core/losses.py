"""Reward-model losses: Bradley-Terry preference loss (and reward centring's term) and MetaRM's
difference loss J.

Pure functions of reward arrays; no model, no I/O. Losses are computed in at least float32
(bf16 rewards are upcast; float64 stays float64), so metrics are never reduced in low precision.

Notation (the paper's): `r_w`, `r_l` are the rewards of the chosen / rejected response of a pair;
a meta example is one prompt with k sampled responses, `rewards: [m, k]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarm_jax.core.tree import upcast

# --------------------------------------------------------------------------------------------
# Preference pairs.
# --------------------------------------------------------------------------------------------


def bt_loss(r_w: jax.Array, r_l: jax.Array, margin: jax.Array | None = None) -> jax.Array:
    """Bradley-Terry loss  L = -mean_i log σ(r_w[i] - r_l[i] - margin[i]).

    Args:
      r_w: [n] rewards of the chosen responses.
      r_l: [n] rewards of the rejected responses.
      margin: optional [n] (or scalar) per-pair margin (Llama-2 style); None means 0.
    Returns:
      scalar loss. `log_sigmoid` keeps it finite for large negative differences.
    """
    diff = upcast(r_w) - upcast(r_l)
    if margin is not None:
        diff = diff - upcast(margin)
    return -jnp.mean(jax.nn.log_sigmoid(diff))


def centering_penalty(r_w: jax.Array, r_l: jax.Array) -> jax.Array:
    """Reward centring's auxiliary term  mean_i (r_w[i] + r_l[i])²  (Eisenstein et al., "Helping
    or Herding?"; TRL's ``center_rewards_coefficient``): η times it, added to the Bradley-Terry
    loss, pulls each pair's rewards towards a zero sum, so the RM's scores are centred near 0
    instead of drifting by an arbitrary offset (which BT alone leaves free).

    Args:
      r_w, r_l: [n] rewards of the chosen / rejected responses.
    Returns:
      scalar (at least float32).
    """
    return jnp.mean(jnp.square(upcast(r_w) + upcast(r_l)))


def preference_accuracy(r_w: jax.Array, r_l: jax.Array) -> jax.Array:
    """Fraction of pairs with r_w > r_l (strictly). A tie counts as wrong (0), so an untrained
    model that scores everything equally gets accuracy 0, not 1 or 0.5."""
    return jnp.mean((upcast(r_w) > upcast(r_l)).astype(jnp.float32))


def reward_stats(r_w: jax.Array, r_l: jax.Array) -> dict[str, jax.Array]:
    """Scalar float32 summaries of a batch of pair rewards, for logging."""
    r_w, r_l = upcast(r_w), upcast(r_l)
    both = jnp.concatenate([r_w, r_l])
    stats = {
        "reward_chosen": jnp.mean(r_w),
        "reward_rejected": jnp.mean(r_l),
        "reward_margin": jnp.mean(r_w - r_l),
        "reward_std": jnp.std(both),
    }
    return {k: v.astype(jnp.float32) for k, v in stats.items()}


# --------------------------------------------------------------------------------------------
# Meta examples: the difference loss J.
# --------------------------------------------------------------------------------------------


def difference_loss(rewards: jax.Array, sample_mask: jax.Array | None = None) -> jax.Array:
    """The MetaRM difference loss  J = mean_p 2/k_p² · Σ_{i<j} σ(|r_p,i - r_p,j|).

    Args:
      rewards: [m, k] rewards of k sampled responses for each of m meta prompts.
      sample_mask: [m, k] 1 for a real response, 0 for padding (a prompt with fewer than k
        samples). None means all real. Real samples need not be contiguous.
    Returns:
      scalar J (at least float32).

    Masking: padding samples are removed, not scored: a prompt with k_p real samples is scored
    exactly as if it had been sampled with k = k_p (sum over its real pairs, times 2/k_p²).
    Prompts with k_p < 2 have no pair; they contribute nothing and are left out of the mean over
    prompts. If no prompt in the batch has >= 2 real samples, J = 0 (and ∇J = 0, so a MetaRM
    step becomes a vanilla step). Rewards at padded positions may be anything, even NaN/inf:
    they are selected away with `where`, never multiplied by 0.
    Note σ(|Δ|) >= 0.5, so J >= (k_p-1)/k_p per prompt; that offset is the paper's definition.
    """
    rewards = upcast(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"difference_loss: rewards must be [m, k], got shape {rewards.shape}.")
    if sample_mask is None:
        sample_mask = jnp.ones(rewards.shape, bool)
    sample_mask = jnp.asarray(sample_mask).astype(bool)
    if sample_mask.shape != rewards.shape:
        raise ValueError(
            f"difference_loss: sample_mask shape {sample_mask.shape} != rewards "
            f"shape {rewards.shape}; both must be [m, k]."
        )
    k = rewards.shape[1]
    r = jnp.where(sample_mask, rewards, 0.0)  # padding can't leak NaN/inf
    diff = jnp.abs(r[:, :, None] - r[:, None, :])  # [m, k, k] |r_i - r_j|
    upper = jnp.triu(jnp.ones((k, k), bool), k=1)  # i < j
    pairs = upper[None] & sample_mask[:, :, None] & sample_mask[:, None, :]
    pair_sum = jnp.sum(jnp.where(pairs, jax.nn.sigmoid(diff), 0.0), axis=(1, 2))  # [m]
    k_p = jnp.sum(sample_mask, axis=1).astype(r.dtype)  # [m] real samples
    scored = k_p >= 2
    j_p = jnp.where(scored, 2.0 * pair_sum / jnp.maximum(k_p, 1.0) ** 2, 0.0)
    return jnp.sum(j_p) / jnp.maximum(jnp.sum(scored).astype(r.dtype), 1.0)
