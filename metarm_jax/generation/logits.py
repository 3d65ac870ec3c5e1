"""Logits processing, pure: HF transformers' ``generate`` order (repetition penalty,
min-new-tokens, temperature, top-k, top-p) and one draw per row; the sampler
(``generation/sampling.py``) and its tests share it."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """HF RepetitionPenaltyLogitsProcessor. logits [N, V]; seen [N, V] bool (token occurred)."""
    penalised = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, penalised, logits)


def _cutoff(x: jax.Array, weight: jax.Array, limit, iters: int = 32) -> jax.Array:
    """Keep mask [N, V] of the tokens j with  sum_{i: x_i > x_j} weight_i < limit.

    The kept set is a top segment of x, so its boundary is found by bisection on the value
    (``iters`` halvings: exact to float32 resolution) instead of a sort over the vocabulary,
    which XLA:CPU runs ~20x slower than these masked sums.
    """
    finite = jnp.isfinite(x)
    lo = jnp.min(jnp.where(finite, x, jnp.inf), -1, keepdims=True) - 1.0  # mass(lo) = total
    hi = jnp.max(x, -1, keepdims=True)  # mass(hi) = 0

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        ok = jnp.sum(jnp.where(x > mid, weight, 0), -1, keepdims=True) < limit
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo, _ = jax.lax.fori_loop(0, iters, halve, (lo, hi))
    return x > lo


def filter_top_k_top_p(logits: jax.Array, top_k, top_p) -> jax.Array:
    """HF TopKLogitsWarper then TopPLogitsWarper (min_tokens_to_keep=1); removed logits -> -inf.

    top_k <= 0 and top_p >= 1 switch the filters off. Top-k keeps the tokens with fewer than k
    logits above them (ties with the k-th are kept, as HF); top-p keeps, among the top-k survivors
    renormalised, the tokens whose higher-probability mass is < top_p (HF's "cumulative ascending
    mass > 1 - top_p"), so the most likely token always stays.
    """
    neg = jnp.asarray(-jnp.inf, logits.dtype)

    def top_k_fn(x):
        return jnp.where(_cutoff(x, jnp.ones_like(x), top_k.astype(x.dtype)), x, neg)

    def top_p_fn(x):
        return jnp.where(_cutoff(x, jax.nn.softmax(x, axis=-1), top_p), x, neg)

    x = jax.lax.cond(top_k > 0, top_k_fn, lambda z: z, logits)
    return jax.lax.cond(top_p < 1.0, top_p_fn, lambda z: z, x)


def sample_rows(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One token per row from softmax(logits) [N, V], by inverse CDF with one uniform per row key.

    (Cheaper than Gumbel-max on CPU: one random number per row instead of one per vocab entry.)
    """
    probs = jax.nn.softmax(logits, axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    u = 1.0 - jax.vmap(lambda k: jax.random.uniform(k, (), jnp.float32))(keys)  # (0, 1]
    target = u[:, None] * cdf[:, -1:]
    return jnp.minimum(jnp.sum(cdf < target, axis=-1), logits.shape[-1] - 1).astype(jnp.int32)


def process_logits(
    logits: jax.Array, seen: jax.Array, knobs: dict[str, jax.Array], stop_vocab: jax.Array, step
) -> jax.Array:
    """Raw logits [N, V] -> the logits sampled from (HF order; see the module docstring)."""
    x = apply_repetition_penalty(logits, seen, knobs["repetition_penalty"])
    early = step < knobs["min_new_tokens"]
    x = jnp.where(early & stop_vocab[None, :], -jnp.inf, x)
    x = x / knobs["temperature"]
    return filter_top_k_top_p(x, knobs["top_k"], knobs["top_p"])
