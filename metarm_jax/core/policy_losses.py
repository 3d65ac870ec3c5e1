"""Policy-side token math and the SFT / DPO losses. Pure functions of arrays; imports only jax.

Shapes: `logits: [B, T, V]`, `tokens`/`labels: [B, T]`, masks `[B, T]` (1 on the tokens that
count, e.g. response tokens; bool or float). Position t of `logits` is the prediction FOR
`tokens[:, t]`: a causal LM's outputs must be shifted first (`next_token_targets`).

Precision: everything is computed in at least float32 (bf16 logits are upcast; f64 stays f64).
Reductions over masks divide by max(count, 1), so an all-padding batch gives 0, never NaN.

The PPO math (`core/ppo.py`) builds on the token helpers here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from metarm_jax.core.tree import upcast

Metrics = dict[str, jax.Array]


# --------------------------------------------------------------------------------------------
# Masked reductions.
# --------------------------------------------------------------------------------------------


def as_mask(mask: jax.Array | None, like: jax.Array) -> jax.Array:
    """A [.., T] bool mask; None means all ones with `like`'s shape. Shapes must match."""
    if mask is None:
        return jnp.ones(jnp.shape(like), bool)
    mask = jnp.asarray(mask)
    if mask.shape != jnp.shape(like):
        raise ValueError(
            f"mask shape {mask.shape} != values shape {jnp.shape(like)}; masks are "
            f"[B, T] with 1 on the tokens that count (e.g. response tokens)."
        )
    return mask.astype(bool)


def masked_sum(x: jax.Array, mask: jax.Array | None, axis=None) -> jax.Array:
    """Σ x over mask (x at masked-out positions may be anything, even NaN: selected away)."""
    x = upcast(x)
    return jnp.sum(jnp.where(as_mask(mask, x), x, 0.0), axis=axis)


def masked_count(mask: jax.Array, axis=None, dtype=jnp.float32) -> jax.Array:
    return jnp.sum(jnp.asarray(mask).astype(bool), axis=axis).astype(dtype)


def masked_mean(x: jax.Array, mask: jax.Array | None, axis=None) -> jax.Array:
    """Mean of x over mask (over all real tokens of the batch if axis=None); 0 if mask is empty."""
    x = upcast(x)
    m = as_mask(mask, x)
    return masked_sum(x, m, axis) / jnp.maximum(masked_count(m, axis, x.dtype), 1.0)


def masked_var(x: jax.Array, mask: jax.Array | None, unbiased: bool = True) -> jax.Array:
    """Variance of x over mask (all axes). `unbiased=True` (TRL's `masked_var` default) scales by
    n/(n-1); n <= 1 gives 0."""
    x = upcast(x)
    m = as_mask(mask, x)
    n = masked_count(m, None, x.dtype)
    mean = masked_mean(x, m)
    var = masked_mean(jnp.square(x - mean), m)
    if unbiased:
        var = jnp.where(n > 1, var * n / jnp.maximum(n - 1.0, 1.0), 0.0)
    return var


# --------------------------------------------------------------------------------------------
# Token log-probs and entropy.
# --------------------------------------------------------------------------------------------


def next_token_targets(
    logits: jax.Array, input_ids: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Align a causal LM's outputs with its targets: logits[:, t] predicts input_ids[:, t+1].

    Args: logits [B, T, V], input_ids [B, T], mask [B, T] (1 on the tokens to score as targets,
    e.g. the response tokens of input_ids). Returns (logits [B, T-1, V], targets [B, T-1],
    target_mask [B, T-1]).
    """
    return logits[:, :-1], input_ids[:, 1:], jnp.asarray(mask)[:, 1:]


def logprobs_of(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log π(tokens[b, t] | ·) from logits [B, T, V] and tokens [B, T] -> [B, T] (≥ float32).

    Memory: computes logsumexp over V and gathers one logit per position, so no second [B, T, V]
    array (the normalised log-softmax) is kept alive: log p = logit[token] - logsumexp(logits).
    """
    logits = upcast(logits)
    if tokens.shape != logits.shape[:-1]:
        raise ValueError(
            f"logprobs_of: tokens {tokens.shape} must be logits {logits.shape} "
            f"without the vocab axis."
        )
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits: jax.Array) -> jax.Array:
    """Entropy H(π(· | context)) per position: logits [B, T, V] -> [B, T], one log-softmax."""
    logp = jax.nn.log_softmax(upcast(logits), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def entropy(logits: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean per-token entropy over mask (all real tokens of the batch): logits [B, T, V] -> []."""
    h = token_entropy(logits)
    return masked_mean(h, mask)


def logprobs_and_entropy(logits: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log π(tokens) [B, T], entropy [B, T]) from ONE log-softmax of logits [B, T, V] (for the
    PPO step, which needs both)."""
    logp_all = jax.nn.log_softmax(upcast(logits), axis=-1)
    logp = jnp.take_along_axis(logp_all, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    ent = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
    return logp, ent


def sequence_logprobs(token_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ_t log π(y_t | x, y_<t) over the response mask: token_logp [B, T] -> [B] (DPO's log π(y|x))."""
    return masked_sum(token_logp, mask, axis=-1)


# --------------------------------------------------------------------------------------------
# SFT.
# --------------------------------------------------------------------------------------------


def sft_loss(
    logits: jax.Array, labels: jax.Array, loss_mask: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Masked token cross-entropy: mean of -log π(labels) over the real response tokens.

    Args:
      logits: [B, T, V], aligned with labels (see `next_token_targets`).
      labels: [B, T] target token ids; values at masked-out positions are ignored.
      loss_mask: [B, T] 1 on response tokens (the loss is on the response only; prompt and
        padding positions contribute nothing).
    Returns:
      (loss, metrics). The loss is the mean over ALL real tokens in the batch (token-weighted,
      so a long response weighs more than a short one), 0 if there are none. Metrics (f32):
      `sft/loss`, `sft/num_tokens`, `sft/token_accuracy` (argmax == label, over the mask).
    """
    mask = as_mask(loss_mask, labels)
    safe_labels = jnp.where(mask, labels, 0)  # out-of-range pad ids can't break the gather
    nll = -logprobs_of(logits, safe_labels)
    loss = masked_mean(nll, mask)
    correct = (jnp.argmax(logits, axis=-1) == safe_labels).astype(jnp.float32)
    metrics = {
        "sft/loss": loss.astype(jnp.float32),
        "sft/num_tokens": masked_count(mask),
        "sft/token_accuracy": masked_mean(correct, mask).astype(jnp.float32),
    }
    return loss, metrics


# --------------------------------------------------------------------------------------------
# DPO.
# --------------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    *,
    beta: float | jax.Array,
    label_smoothing: float | jax.Array,
) -> tuple[jax.Array, Metrics]:
    """DPO (Rafailov et al. 2023, Eq. 7):  L = -mean log σ(β[(π_w - ref_w) - (π_l - ref_l)]).

    Args:
      policy_chosen, policy_rejected: [n] summed response log-probs log π_θ(y_w|x), log π_θ(y_l|x)
        (`sequence_logprobs`).
      ref_chosen, ref_rejected: [n] the same under the frozen reference (SFT) policy.
      beta: β, the strength of the implicit KL constraint (config.dpo.beta, whose default lives
        in config/defaults.py). Deliberately separate from the PPO KL coefficient.
      label_smoothing: ε of conservative DPO (cDPO, Mitchell 2023): the preference label is
        assumed flipped with probability ε, so
        L = -(1-ε)·log σ(βh) - ε·log σ(-βh),  h = (π_w - ref_w) - (π_l - ref_l).
        Default 0 (plain DPO). Must be in [0, 0.5).
    Returns:
      (loss, metrics), metrics f32 scalars:
        dpo/loss, dpo/reward_chosen = mean β(π_w - ref_w), dpo/reward_rejected = mean β(π_l - ref_l)
        (the implicit rewards), dpo/reward_margin = mean of their difference, dpo/accuracy =
        fraction of pairs with implicit reward_chosen > reward_rejected (a tie counts as wrong).
    """
    pw, pl, rw, rl = (upcast(a) for a in (policy_chosen, policy_rejected, ref_chosen, ref_rejected))
    beta = jnp.asarray(beta, pw.dtype)
    chosen_reward = beta * (pw - rw)  # implicit reward of y_w
    rejected_reward = beta * (pl - rl)
    logits = chosen_reward - rejected_reward  # β·h
    eps = jnp.asarray(label_smoothing, pw.dtype)
    per_pair = -(1.0 - eps) * jax.nn.log_sigmoid(logits) - eps * jax.nn.log_sigmoid(-logits)
    loss = jnp.mean(per_pair)
    f32 = lambda v: v.astype(jnp.float32)
    metrics = {
        "dpo/loss": f32(loss),
        "dpo/reward_chosen": f32(jnp.mean(chosen_reward)),
        "dpo/reward_rejected": f32(jnp.mean(rejected_reward)),
        "dpo/reward_margin": f32(jnp.mean(logits)),
        "dpo/accuracy": jnp.mean((chosen_reward > rejected_reward).astype(jnp.float32)),
    }
    return loss, metrics
