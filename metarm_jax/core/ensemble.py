"""Reward-model ensembles and weight averaging, the rival arms of issue 26 (pure jax, no I/O).

An ensemble of M reward models scores each roll-out M times; PPO's reward is one aggregation of
the M scores (Coste et al., "Reward Model Ensembles Help Mitigate Overoptimization", ICLR 2024):

    mean      (1/M) Σ_i r_i
    min       min_i r_i                                 worst-case optimisation (WCO)
    uwo       mean − λ · (1/M) Σ_i (r_i − mean)²        uncertainty-weighted optimisation (UWO):
                                                        the intra-ensemble variance, population
                                                        form (1/M), as Coste et al.'s Eq. for UWO
    mean_std  mean − λ · sqrt((1/M) Σ_i (r_i − mean)²)  the same penalty on the standard deviation
                                                        (a lower confidence bound; Eisenstein et
                                                        al.'s "mean minus std")

A Bradley-Terry RM's offset and scale are arbitrary, so members are first put on one scale
(``standardize``: each member's score minus its mean over the validation pairs, divided by its
std there) before ``min``/``uwo`` compare them.

WARM (Ramé et al., "WARM: On the Benefits of Weight Averaged Reward Models", ICML 2024) is one RM
whose weights are the element-wise mean of M members fine-tuned from one initialisation
(``average``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from metarm_jax.core.tree import upcast

AGGREGATIONS = ("mean", "min", "uwo", "mean_std")
PyTree = Any


def aggregate(scores: jax.Array, agg: str, lam: float | jax.Array) -> jax.Array:
    """One reward per roll-out from M members' scores.

    Args:
      scores: [M, N] the M members' scores of N roll-outs (at least float32 out).
      agg: one of ``AGGREGATIONS`` (module docstring).
      lam: λ of ``uwo`` and ``mean_std`` (>= 0; config.ppo.ensemble_lambda); unused by ``mean``
        and ``min``.
    Returns:
      [N].
    """
    if agg not in AGGREGATIONS:
        raise ValueError(f"ensemble aggregation must be one of {AGGREGATIONS}, got {agg!r}.")
    s = upcast(scores)
    if s.ndim != 2:
        raise ValueError(f"aggregate: scores must be [members, rollouts], got shape {s.shape}.")
    mean = jnp.mean(s, axis=0)
    if agg == "mean":
        return mean
    if agg == "min":
        return jnp.min(s, axis=0)
    var = jnp.mean(jnp.square(s - mean[None]), axis=0)  # population: 1/M
    if agg == "uwo":
        return mean - lam * var
    return mean - lam * jnp.sqrt(var)


def spread(scores: jax.Array) -> jax.Array:
    """[N] the population standard deviation over the members of each roll-out's score."""
    s = upcast(scores)
    return jnp.sqrt(jnp.mean(jnp.square(s - jnp.mean(s, axis=0)[None]), axis=0))


def standardize(scores: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """[M, N] each member's scores as (r_i − mean_i) / std_i; ``mean``, ``std``: [M]."""
    s = upcast(scores)
    return (s - jnp.asarray(mean, s.dtype)[:, None]) / jnp.asarray(std, s.dtype)[:, None]


def average(trees: Sequence[PyTree]) -> PyTree:
    """The element-wise mean of M pytrees of one structure (WARM), leaf by leaf in at least
    float32 and back in each leaf's dtype, formed as t_0 + (1/M) Σ_i (t_i − t_0): members
    fine-tuned from one initialisation are close, so the differences lose less precision than a
    plain sum would, and M identical members average to t_0 exactly. ``delta_sum``,
    ``add_delta`` and ``finish_average`` are the same computation one member at a time (the
    ``warm`` stage holds one member besides t_0 and the running sum)."""
    if not trees:
        raise ValueError("average: no trees to average.")
    acc = delta_sum(trees[0])
    for t in trees[1:]:
        acc = add_delta(acc, t, trees[0])
    return finish_average(trees[0], acc, len(trees))


def _acc(x) -> Any:
    return jnp.promote_types(x.dtype, jnp.float32)


def delta_sum(base: PyTree) -> PyTree:
    """The running sum Σ (t_i − t_0) before any member: zeros in at least float32."""
    return jax.tree.map(lambda x: jnp.zeros(x.shape, _acc(x)), base)


def add_delta(acc: PyTree, tree: PyTree, base: PyTree) -> PyTree:
    """acc + (tree − base), in acc's dtype."""
    return jax.tree.map(
        lambda a, x, b: a + (x.astype(a.dtype) - b.astype(a.dtype)), acc, tree, base
    )


def finish_average(base: PyTree, acc: PyTree, m: int) -> PyTree:
    """t_0 + acc / M, in each leaf of ``base``'s dtype."""
    return jax.tree.map(lambda b, a: (b.astype(a.dtype) + a / m).astype(b.dtype), base, acc)
