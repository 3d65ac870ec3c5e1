"""Statistics of reward differences between responses to the same prompt (the paper's shift
signal, Figures 1 and 5): the jitted form PPO logs every iteration and the host form the RM
evaluation and the report use. Pure; jax and numpy only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarm_jax.core.policy_losses import as_mask, masked_count, masked_mean
from metarm_jax.core.tree import upcast

Metrics = dict[str, jax.Array]


def abs_differences(rewards: np.ndarray, sample_mask: np.ndarray | None) -> np.ndarray:
    """|r_i - r_j| for every pair i < j of real responses to the same prompt; rewards: [m, k]."""
    m, k = rewards.shape
    mask = np.ones((m, k), bool) if sample_mask is None else np.asarray(sample_mask).astype(bool)
    i, j = np.triu_indices(k, 1)
    keep = mask[:, i] & mask[:, j]
    return np.abs(rewards[:, i] - rewards[:, j])[keep]


def reward_difference_stats(
    scores: jax.Array, bin_edges: jax.Array, sample_mask: jax.Array | None = None
) -> Metrics:
    """Statistics of |r_i - r_j|, i < j, over roll-outs of the SAME prompt.

    Args:
      scores: [P, K] RM scores of K roll-outs for each of P prompts.
      bin_edges: [NB + 1] increasing histogram edges (fixed, so the output shape is static).
        NumPy semantics: bins are [e_i, e_{i+1}), the last one closed; differences outside
        [e_0, e_NB] are not counted (pass jnp.inf as the last edge to catch everything).
      sample_mask: optional [P, K], 1 for a real roll-out (padding is left out of every pair).
    Returns (f32): `mean` and `var` (population, ddof=0) of the differences, every pair weighted
      equally across prompts; `hist` [NB] pair counts; `num_pairs`. With no pair, mean = var = 0.
    O(P·K²) elementwise work: cheap next to one forward pass.
    """
    s = upcast(scores)
    if s.ndim != 2:
        raise ValueError(f"reward_difference_stats: scores must be [P, K], got {s.shape}.")
    m = as_mask(sample_mask, s)
    k = s.shape[1]
    s = jnp.where(m, s, 0.0)
    diff = jnp.abs(s[:, :, None] - s[:, None, :])  # [P, K, K]
    pairs = jnp.triu(jnp.ones((k, k), bool), 1)[None] & m[:, :, None] & m[:, None, :]
    n = masked_count(pairs)
    mean = masked_mean(diff, pairs)
    var = masked_mean(jnp.square(diff - mean), pairs)
    edges = upcast(jnp.asarray(bin_edges))
    hist, _ = jnp.histogram(diff.ravel(), bins=edges, weights=pairs.ravel().astype(edges.dtype))
    f32 = lambda v: v.astype(jnp.float32)
    return {"mean": f32(mean), "var": f32(var), "hist": f32(hist), "num_pairs": f32(n)}
