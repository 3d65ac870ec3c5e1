"""PPO math for RLHF: KL, per-token rewards, reward normalisation, GAE and the PPO losses (the
reward-difference "shift" signal of the paper's Figure 1 is in ``core/stats.py``). Pure jax.

The order of one PPO roll-out batch (TRL / "Secrets of RLHF" style):

    score     = RM score r_θ(x, y)                           [B]
    moments   = update_moments(moments, score)               running count/mean/M2 (checkpointed)
    score     = clip_rewards(normalize_scores(score, moments), reward_clip)
    kl        = kl_per_token(logp, ref_logp, mask, estimator=..., clip=...)    [B, T]
    rewards   = token_rewards(score, kl, mask, beta=β)       [B, T]   -β·KL_t, + score at the end
    adv, ret  = gae(rewards, values, mask, gamma=γ, lam=λ)
    adv       = whiten(adv, mask)
    ... per minibatch: policy_loss(logp_new, logp, adv, mask, clip_eps=ε),
                       value_loss(v_new, values, ret, mask, clip_eps=ε_v)

Shapes: all `[B, T]` arrays are over RESPONSE positions (the caller slices the prompt off);
`mask: [B, T]` is 1 on real response tokens (bool or float). Masks may be right- or left-padded
or have holes; GAE skips masked positions (see `gae`). Token means are over all real tokens of
the batch (TRL's `masked_mean`). Everything is jit-able; string options (`estimator`) and
`None`-able clips must be static, numeric hyper-parameters may be traced.

No hyper-parameter has a default here: the KL estimator and clip, β, the score normalisation,
γ, λ and the clips ε, ε_v are required keyword arguments, and their defaults live in one place,
the ``ppo`` block of ``config/defaults.py`` (``kl_estimator``, ``kl_clip``, ``kl_beta``,
``reward_norm``, ``gamma``, ``lam``, ``clip_eps``, ``value_clip_eps``), which ``core/`` may not
import; the PPO stage passes them from ``config.ppo``. Only numerical-stability epsilons and
``whiten``'s ``shift_mean`` (no config key) keep defaults.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from metarm_jax.core.policy_losses import (
    as_mask,
    masked_count,
    masked_mean,
    masked_sum,
    masked_var,
    upcast,
)

Metrics = dict[str, jax.Array]

KL_ESTIMATORS = ("k1", "k2", "k3")
# How the PPO stage normalises RM scores (config.ppo.reward_norm): not at all, by the running std
# (`normalize_scores`), or centred and scaled (`subtract_mean=True`).
REWARD_NORMS = ("none", "scale", "standard")
# How the RM's score is shaped before normalisation (config.ppo.reward_shaping): not at all, or
# PAR ("preference as reward", Fu et al. 2025: ``preference_as_reward``).
REWARD_SHAPINGS = ("none", "par")


def preference_as_reward(score: jax.Array, ref_score: jax.Array) -> jax.Array:
    """PAR, "preference as reward" (Fu et al. 2025, "Reward Shaping to Mitigate Reward Hacking in
    RLHF"): the reward of response y to prompt x is the RM's preference for y over reference
    responses of the same prompt from the reference policy (π_SFT),

        r_PAR(x, y) = 1/M Σ_m σ(r(x, y) − r(x, y_ref_m))          in (0, 1)

    bounded, centred on the reference policy, and monotone in r within a prompt (the same
    within-prompt ranking as r). ``score`` [Q, R] (R responses per prompt), ``ref_score`` [Q, M]
    -> [Q, R], computed in float32 at least."""
    dt = jnp.promote_types(score.dtype, jnp.float32)
    d = score.astype(dt)[:, :, None] - ref_score.astype(dt)[:, None, :]
    return jax.nn.sigmoid(d).mean(-1)


# --------------------------------------------------------------------------------------------
# KL between policy and reference.
# --------------------------------------------------------------------------------------------


def kl_per_token(
    logp: jax.Array,
    ref_logp: jax.Array,
    mask: jax.Array | None = None,
    *,
    estimator: str,
    clip: float | None,
) -> jax.Array:
    """Per-token KL(π ‖ π_ref) estimate from sampled-token log-probs: [B, T] -> [B, T].

    With d = logp - ref_logp (tokens sampled from π), Schulman's estimators:
      k1 = d                          unbiased, can be negative per token (TRL's).
      k2 = d² / 2                     biased, ≥ 0, low variance.
      k3 = exp(-d) - (-d) - 1         = exp(ref - logp) - (ref - logp) - 1: unbiased, ≥ 0.
    All three are exactly 0 where logp == ref_logp.
    `estimator`: one of KL_ESTIMATORS (config.ppo.kl_estimator). `clip`: if not None, clip the
    per-token estimate to [-clip, clip] (a KL clip, separate from reward clipping; None = off;
    config.ppo.kl_clip, 0 there = None here). Masked positions are 0.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(
            f"KL estimator must be one of {KL_ESTIMATORS} (config.ppo.kl_estimator), "
            f"got {estimator!r}."
        )
    logp, ref_logp = upcast(logp), upcast(ref_logp)
    d = logp - ref_logp
    if estimator == "k1":
        kl = d
    elif estimator == "k2":
        kl = 0.5 * jnp.square(d)
    else:
        kl = jnp.expm1(-d) + d  # exp(-d) - 1 + d, accurate
    if clip is not None:
        kl = jnp.clip(kl, -clip, clip)
    return jnp.where(as_mask(mask, kl), kl, 0.0)


# --------------------------------------------------------------------------------------------
# Per-token rewards.
# --------------------------------------------------------------------------------------------


def last_token_onehot(mask: jax.Array) -> jax.Array:
    """[B, T] bool, True at the LAST real position of each row (all False for an empty row)."""
    m = jnp.asarray(mask).astype(bool)
    t = m.shape[-1]
    last = t - 1 - jnp.argmax(m[..., ::-1], axis=-1)  # [B]
    onehot = jnp.arange(t)[None, :] == last[:, None]
    return onehot & jnp.any(m, axis=-1, keepdims=True)


def token_rewards(
    scores: jax.Array, kl: jax.Array, mask: jax.Array, *, beta: float | jax.Array
) -> jax.Array:
    """Per-token RLHF rewards (Ziegler et al. 2019; TRL):  r_t = -β·KL_t, plus the RM score on the
    last real response token.

    Args:
      scores: [B] the (normalised, clipped) RM scores r_θ(x, y).
      kl: [B, T] per-token KL estimates (`kl_per_token`).
      mask: [B, T] response mask.
      beta: KL coefficient β (config.ppo.kl_beta).
    Returns:
      [B, T] rewards, 0 at masked positions. A row with no real token gets no score.
    """
    kl = upcast(kl)
    m = as_mask(mask, kl)
    r = -jnp.asarray(beta, kl.dtype) * jnp.where(m, kl, 0.0)
    scores = upcast(scores).astype(kl.dtype)
    return r + jnp.where(last_token_onehot(m), scores[:, None], 0.0)


def clip_rewards(x: jax.Array, clip: float | jax.Array | None) -> jax.Array:
    """Clip rewards/scores to [-clip, clip]; None = off (config.ppo.reward_clip, 0 there = None)."""
    x = upcast(x)
    return x if clip is None else jnp.clip(x, -clip, clip)


# --------------------------------------------------------------------------------------------
# Running moments of the RM score (for reward normalisation).
# --------------------------------------------------------------------------------------------


class RunningMoments(NamedTuple):
    """Running count / mean / M2 (sum of squared deviations) of every score seen so far.

    A pytree of three float32 scalars: checkpoint it with the trainer state. Float32 counts are
    exact up to 2^24 ≈ 16.7M scores.
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @classmethod
    def init(cls) -> RunningMoments:
        z = jnp.zeros((), jnp.float32)
        return cls(count=z, mean=z, m2=z)

    def var(self, ddof: int = 0) -> jax.Array:
        """Variance of all data seen (ddof=0: population, numpy's default); 0 before ddof+1 points."""
        return jnp.where(self.count > ddof, self.m2 / jnp.maximum(self.count - ddof, 1.0), 0.0)

    def std(self, ddof: int = 0) -> jax.Array:
        return jnp.sqrt(self.var(ddof))


def update_moments(
    state: RunningMoments, x: jax.Array, mask: jax.Array | None = None
) -> RunningMoments:
    """Fold a batch x (any shape; `mask` keeps only some entries) into the running moments, with
    Chan et al.'s parallel update (exact merge of two (count, mean, M2) summaries):
        δ = mean_b - mean_a,  n = n_a + n_b,
        mean = mean_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    An empty batch leaves the state unchanged.
    """
    x = upcast(x).astype(jnp.float32)
    m = as_mask(mask, x)
    n_b = masked_count(m)
    mean_b = masked_mean(x, m)
    m2_b = masked_sum(jnp.square(x - mean_b), m)
    n = state.count + n_b
    delta = mean_b - state.mean
    safe_n = jnp.maximum(n, 1.0)
    return RunningMoments(
        count=n,
        mean=state.mean + delta * n_b / safe_n,
        m2=state.m2 + m2_b + jnp.square(delta) * state.count * n_b / safe_n,
    )


def normalize_scores(
    scores: jax.Array, state: RunningMoments, *, subtract_mean: bool, eps: float = 1e-8
) -> jax.Array:
    """Scale RM scores by the running std: s / (std + eps) (`subtract_mean=False`: TRL's
    `use_score_scaling` without `use_score_norm`, keeping the sign meaningful), or centre them
    first: (s - mean) / (std + eps) (`subtract_mean=True`); config.ppo.reward_norm 'scale' and
    'standard'.
    Update the state with this batch first (`update_moments`). Before two scores have been seen
    the std is undefined and scores pass through unscaled (std := 1).
    """
    scores = upcast(scores)
    std = jnp.where(state.count > 1, state.std(), 1.0).astype(scores.dtype)
    if subtract_mean:
        scores = scores - state.mean.astype(scores.dtype)
    return scores / (std + eps)


# --------------------------------------------------------------------------------------------
# GAE and whitening.
# --------------------------------------------------------------------------------------------


def gae(
    rewards: jax.Array,
    values: jax.Array,
    mask: jax.Array,
    *,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016), a reverse `lax.scan` over time.

        δ_t = r_t + γ·V_{t+1} - V_t,      A_t = δ_t + γλ·A_{t+1},      R_t = A_t + V_t

    where t+1 is the next REAL position of the row (masked positions are skipped, so right- or
    left-padding and holes all work) and V, A after the last real token are 0 (the episode ends
    with the response). Masked positions get advantage 0 and return 0, whatever rewards/values
    hold there (even NaN). γ, λ: config.ppo.gamma and .lam.

    Args: rewards [B, T], values [B, T] (the critic's V(s_t) at roll-out time), mask [B, T].
    Returns: (advantages [B, T], returns [B, T]); no gradient flows (stop_gradient inside).
    """
    r, v = upcast(rewards), upcast(values)
    dtype = jnp.promote_types(r.dtype, v.dtype)
    r, v = r.astype(dtype), v.astype(dtype)
    m = as_mask(mask, r)
    r = jax.lax.stop_gradient(jnp.where(m, r, 0.0))
    v = jax.lax.stop_gradient(jnp.where(m, v, 0.0))
    gamma = jnp.asarray(gamma, dtype)
    gl = gamma * jnp.asarray(lam, dtype)

    def step(carry, xs):
        next_v, next_a = carry  # at the next real token
        r_t, v_t, m_t = xs
        a_t = r_t + gamma * next_v - v_t + gl * next_a
        carry = (jnp.where(m_t, v_t, next_v), jnp.where(m_t, a_t, next_a))
        return carry, jnp.where(m_t, a_t, 0.0)

    zeros = jnp.zeros(r.shape[:1], dtype)
    _, adv_tb = jax.lax.scan(step, (zeros, zeros), (r.T, v.T, m.T), reverse=True)
    adv = adv_tb.T
    return adv, jnp.where(m, adv + v, 0.0)


def whiten(
    x: jax.Array, mask: jax.Array | None = None, *, shift_mean: bool = True, eps: float = 1e-8
) -> jax.Array:
    """(x - mean) / sqrt(var + eps) over the real tokens (TRL's `masked_whiten`: unbiased var).
    `shift_mean=False` adds the mean back (unit variance, original mean). Default True.
    Masked positions are 0 in the output."""
    x = upcast(x)
    m = as_mask(mask, x)
    mean, var = masked_mean(x, m), masked_var(x, m, unbiased=True)
    out = (x - mean) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m, out, 0.0)


# --------------------------------------------------------------------------------------------
# PPO losses.
# --------------------------------------------------------------------------------------------


def policy_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float | jax.Array,
) -> tuple[jax.Array, Metrics]:
    """Clipped surrogate (Schulman et al. 2017), as a loss to minimise:

        ratio = exp(logp - old_logp),
        L = mean_t max(-A_t·ratio_t, -A_t·clip(ratio_t, 1-ε, 1+ε))     (mean over real tokens)

    Args: logp [B, T] (current policy, differentiable), old_logp [B, T] (roll-out policy),
    advantages [B, T] (whitened; treated as constants), mask [B, T]. ε: config.ppo.clip_eps.
    Metrics (f32): ppo/policy_loss; ppo/clipfrac = fraction of tokens where the clipped term is
    the active one (strictly larger); ppo/approx_kl_k1 = mean(old - new); ppo/approx_kl_k2 =
    0.5·mean((new - old)²) (TRL's `approxkl`); ppo/ratio_mean.
    """
    logp, old_logp = upcast(logp), jax.lax.stop_gradient(upcast(old_logp))
    adv = jax.lax.stop_gradient(upcast(advantages))
    m = as_mask(mask, logp)
    log_ratio = jnp.where(m, logp - old_logp, 0.0)  # pads can't overflow exp
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(pg1, pg2), m)
    sg = jax.lax.stop_gradient
    metrics = {
        "ppo/policy_loss": loss.astype(jnp.float32),
        "ppo/clipfrac": masked_mean((pg2 > pg1).astype(jnp.float32), m),
        "ppo/approx_kl_k1": sg(masked_mean(-log_ratio, m)).astype(jnp.float32),
        "ppo/approx_kl_k2": sg(0.5 * masked_mean(jnp.square(log_ratio), m)).astype(jnp.float32),
        "ppo/ratio_mean": sg(masked_mean(ratio, m)).astype(jnp.float32),
    }
    return loss, metrics


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    mask: jax.Array,
    *,
    clip_eps: float | jax.Array,
) -> tuple[jax.Array, Metrics]:
    """Clipped value loss (PPO2 / TRL):

        v_clip = clip(v, v_old - ε_v, v_old + ε_v)
        L_V = 0.5 · mean_t max((v_t - R_t)², (v_clip_t - R_t)²)        (mean over real tokens)

    The 0.5 makes ∂L_V/∂v = (v - R) on the unclipped branch (TRL's `0.5 * masked_mean(...)`); the
    caller weights L_V against the policy loss (TRL's vf_coef) or trains a separate critic.
    Args: values [B, T] (current critic), old_values [B, T] (roll-out), returns [B, T] (`gae`),
    mask [B, T]. ε_v: config.ppo.value_clip_eps.
    Metrics (f32): ppo/value_loss; ppo/value_clipfrac = fraction of tokens where the clipped
    error is strictly larger (the clipped branch is active); ppo/explained_variance.
    """
    v = upcast(values)
    v_old = jax.lax.stop_gradient(upcast(old_values))
    ret = jax.lax.stop_gradient(upcast(returns))
    m = as_mask(mask, v)
    v_clip = jnp.clip(v, v_old - clip_eps, v_old + clip_eps)
    l1, l2 = jnp.square(v - ret), jnp.square(v_clip - ret)
    loss = 0.5 * masked_mean(jnp.maximum(l1, l2), m)
    metrics = {
        "ppo/value_loss": loss.astype(jnp.float32),
        "ppo/value_clipfrac": masked_mean((l2 > l1).astype(jnp.float32), m),
        "ppo/explained_variance": jax.lax.stop_gradient(explained_variance(v, ret, m)).astype(
            jnp.float32
        ),
    }
    return loss, metrics


def explained_variance(
    values: jax.Array, returns: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """1 - Var[R - V] / Var[R] over real tokens (population variances). 1 = perfect critic,
    0 = no better than a constant, < 0 = worse. Returns 0 (not NaN, which would trip a NaN
    guard) when Var[R] = 0."""
    v, ret = upcast(values), upcast(returns)
    m = as_mask(mask, v)
    var_r = masked_var(ret, m, unbiased=False)
    var_d = masked_var(ret - v, m, unbiased=False)
    return jnp.where(var_r > 0, 1.0 - var_d / jnp.where(var_r > 0, var_r, 1.0), 0.0)
