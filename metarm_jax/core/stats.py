"""Statistics: reward differences between responses to the same prompt (the paper's shift
signal, Figures 1 and 5: the jitted form PPO logs every iteration and the host form the RM
evaluation and the report use), bootstrap and t intervals, and ranking agreement with a
reference (gold or an independent judge). Pure; jax, numpy and scipy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarm_jax.core.policy_losses import as_mask, masked_count, masked_mean
from metarm_jax.core.tree import upcast

Metrics = dict[str, jax.Array]


def _scipy_stats():
    """scipy.stats, imported on first use: a second of start-up that most stages skip."""
    import scipy.stats

    return scipy.stats


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


# --------------------------------------------------------------------------------------------
# Host statistics for the report: intervals, ranking agreement.
# --------------------------------------------------------------------------------------------


def bootstrap_ci(
    *samples: np.ndarray,
    statistic=None,
    n_resamples: int,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)`` (default: the mean of one
    sample), resampling the rows ``n_resamples`` times (config.rlhf.bootstrap), paired across
    ``samples`` (one row per prompt). NaN rows (e.g. a prompt with no comparable pair) are
    dropped first; with fewer than 2 rows the interval is (nan, nan)."""
    arrays = [np.asarray(s, np.float64) for s in samples]
    keep = np.ones(len(arrays[0]), bool)
    for a in arrays:
        keep &= np.isfinite(a)
    arrays = [a[keep] for a in arrays]
    if len(arrays[0]) < 2:
        return float("nan"), float("nan")
    if statistic is None:

        def statistic(x, axis=-1):
            return np.mean(x, axis=axis)

    if np.all([np.all(a == a[0]) for a in arrays]):  # no spread: the interval is the point
        v = float(statistic(*arrays, axis=-1))
        return v, v
    res = _scipy_stats().bootstrap(
        tuple(arrays),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (e.g. one number per seed)."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return float("nan"), float("nan")
    half = _scipy_stats().t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def ranking_agreement(
    scores: np.ndarray, reference: np.ndarray, sample_mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: (pairwise accuracy, Kendall τ-b) of ``scores`` [m, k] against ``reference``
    [m, k] (gold, or an independent judge) over the prompt's real responses.

    Pairwise accuracy: among pairs i < j whose reference values differ, the fraction that the
    scores order the same way (a tie in the scores counts as wrong). NaN for a prompt with no
    such pair (and τ NaN where it is undefined: constant scores or reference).
    """
    s, ref = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    m, k = s.shape
    mask = np.ones((m, k), bool) if sample_mask is None else np.asarray(sample_mask).astype(bool)
    acc, tau = np.full(m, np.nan), np.full(m, np.nan)
    for p in range(m):
        x, y = s[p, mask[p]], ref[p, mask[p]]
        if len(x) < 2:
            continue
        i, j = np.triu_indices(len(x), 1)
        dref = np.sign(y[i] - y[j])
        valid = dref != 0
        if valid.any():
            acc[p] = float(np.mean(np.sign(x[i] - x[j])[valid] == dref[valid]))
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            tau[p] = float(_scipy_stats().kendalltau(x, y).statistic)
    return acc, tau
