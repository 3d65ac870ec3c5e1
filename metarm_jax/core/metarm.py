"""The MetaRM step (Dou et al., Algorithm 1) as a pure function of (params, batches).

    for each step t:
      X_s ~ meta dataset (m prompts × k responses from the shifted policy)
      X_t ~ preference dataset (n pairs)
      θ' = θ + η ∇_θ J_θ(X_s)          meta-process: one plain gradient *ascent* step on J
      g  = ∇_θ' L_θ'(X_t)              MetaRM-optimisation: preference-loss gradient at θ'
      θ  ← optimizer_update(θ, g)      done by the caller (optax), not here

`order="first"` is exactly the above (the default); `order="second"` differentiates through the
ascent, g = ∇_θ L(θ + η ∇_θ J_θ) = ∇L(θ') + η·H_J(θ)·∇L(θ'); the Hessian-vector product
makes it about 2.4× the FLOPs of the first-order step.

The ascent's size. ``eta_mode="absolute"`` (the default) is the paper's θ' = θ + η∇J: η is a raw
gradient step, so ‖θ' − θ‖ = η‖∇J‖ depends on the model's size and J's scale.
``eta_mode="param_fraction"`` (beyond the paper, opt-in) sets the step by its size instead:
θ' = θ + η‖θ‖/‖∇J‖ · ∇J, so ‖θ' − θ‖ = η‖θ‖ whatever the model (the step size is held constant,
not differentiated, in the second-order gradient). A Python ``eta == 0`` returns the vanilla
gradient without computing ∇J (exactly what the formula gives at η = 0: θ' = θ).

`reward_fn(params, input_ids [B, T], attention_mask [B, T]) -> rewards [B]` is the model at the
edge (e.g. `nnx.merge(graphdef, params, rest)(...)`); `params` is any pytree of float arrays
(e.g. an `nnx.State` of `nnx.Param`s). Every function here is jit-able; `eta` may be traced,
`order` and `measure_j_prime` are static.

A shared-prompt batch holds its sequences as one ``packed.Packing`` (a prompt and its responses
in one row) instead of ids and masks; it is scored with ONE call ``reward_fn(params, rows.ids
[R, L], None, packing=rows)`` returning rewards [R, j]; the losses and their gradients are those
of the unpacked batch (tests/test_shared_prompt.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from metarm_jax.core import losses, packed
from metarm_jax.core.tree import cosine, global_norm

PyTree = Any
RewardFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

ORDERS = ("first", "second")
ETA_MODES = ("absolute", "param_fraction", "update")
# How order="second" forms g = ∇_θ L_θ'(X_t) = (I + s∇²J(θ)) ∇_θ' L_θ'(X_t) (s: the ascent step;
# ∇²J symmetric): 'reverse' differentiates through the ascent (reverse over reverse: the
# residuals of ∇J's backward are kept for a second backward); 'hvp' takes ∇_θ' L first, then the
# Hessian-vector product ∇²J(θ)v forward over reverse, recomputing ∇J's forward so that nothing
# of it is held across the preference pass; 'linearize' the same product from jax.linearize of
# ∇J (its residuals kept from the ascent instead of recomputed).
SECOND_ORDER = ("reverse", "hvp", "linearize")
# The direction of the step θ' − θ (``meta.direction``): 'ascent' is MetaRM (+∇J). The others are
# its negative controls (issue 31), identical but for the direction: 'random', an isotropic
# Gaussian direction drawn afresh each step from the step's key and scaled to the norm the ascent
# would have had (‖θ' − θ‖ unchanged; first order only: it has no Hessian to differentiate); and
# 'descent', the sign-flipped step (−∇J: descent on J).
DIRECTIONS = ("ascent", "random", "descent")


# --------------------------------------------------------------------------------------------
# Rewards: one reward_fn call per batch.
# --------------------------------------------------------------------------------------------


def _call_reward_fn(
    reward_fn: RewardFn, params: PyTree, ids: jax.Array, mask: jax.Array, what: str
) -> jax.Array:
    rewards = reward_fn(params, ids, mask)
    if rewards.shape != ids.shape[:1]:
        raise ValueError(
            f"reward_fn must return one scalar per sequence, shape [{ids.shape[0]}], "
            f"for the {what} batch of input_ids {ids.shape}; got {rewards.shape}."
        )
    return rewards


def _read_out_rewards(
    reward_fn: RewardFn, params: PyTree, rows: packed.Packing, j: int, what: str
) -> jax.Array:
    """Rewards [R, j] of packed rows, read at ``rows.read_at``, from ONE reward_fn call."""
    ids, read_at = rows.ids, rows.read_at
    if ids.ndim != 2 or read_at is None or read_at.shape != (ids.shape[0], j):
        raise ValueError(
            f"packed {what} batch: ids {ids.shape} must be [R, L] and read_at "
            f"{None if read_at is None else read_at.shape} [R, {j}]."
        )
    rewards = reward_fn(params, ids, None, packing=rows)
    if rewards.shape != read_at.shape:
        raise ValueError(
            f"reward_fn on a packed {what} batch must return one reward per response, shape "
            f"{read_at.shape}; got {rewards.shape}."
        )
    return rewards


def pair_rewards(
    reward_fn: RewardFn, params: PyTree, pref_batch: Batch
) -> tuple[jax.Array, jax.Array]:
    """Rewards (r_w [n], r_l [n]) of a preference batch, from ONE reward_fn call on [2n, T]
    (or on the n packed rows [prompt | chosen | rejected] of a shared-prompt batch)."""
    rows = packed.rows(pref_batch)
    if rows is not None:
        rewards = _read_out_rewards(reward_fn, params, rows, 2, "preference")
        return rewards[:, 0], rewards[:, 1]
    cw, rj = pref_batch["chosen_ids"], pref_batch["rejected_ids"]
    if cw.ndim != 2 or cw.shape != rj.shape:
        raise ValueError(
            f"pref_batch: chosen_ids {cw.shape} and rejected_ids {rj.shape} must both "
            f"be [n, T] with the same T; pad both sides of a pair to one length."
        )
    n = cw.shape[0]
    ids = jnp.concatenate([cw, rj], axis=0)  # [2n, T]
    mask = jnp.concatenate([pref_batch["chosen_mask"], pref_batch["rejected_mask"]], axis=0)
    rewards = _call_reward_fn(reward_fn, params, ids, mask, "preference")
    return rewards[:n], rewards[n:]


def meta_rewards(reward_fn: RewardFn, params: PyTree, meta_batch: Batch) -> jax.Array:
    """Rewards [m, k] of a meta batch (`input_ids`, `attention_mask`: [m, k, T]), from ONE
    reward_fn call on [m·k, T]. Padding samples are scored too (static shapes) and must give a
    finite reward; `difference_loss` then drops them. A shared-prompt batch (m packed rows
    [prompt | sample_1 | ... | sample_k]) is scored from one call on its rows."""
    rows = packed.rows(meta_batch)
    if rows is not None:
        k = 0 if rows.read_at is None else rows.read_at.shape[1]
        return _read_out_rewards(reward_fn, params, rows, k, "meta")
    ids, mask = meta_batch["input_ids"], meta_batch["attention_mask"]
    if ids.ndim != 3 or mask.shape != ids.shape:
        raise ValueError(
            f"meta_batch: input_ids {ids.shape} and attention_mask {mask.shape} must "
            f"both be [m, k, T]."
        )
    m, k, t = ids.shape
    rewards = _call_reward_fn(
        reward_fn, params, ids.reshape(m * k, t), mask.reshape(m * k, t), "meta"
    )
    return rewards.reshape(m, k)


# --------------------------------------------------------------------------------------------
# The two losses as functions of params.
# --------------------------------------------------------------------------------------------


def preference_loss(
    reward_fn: RewardFn, params: PyTree, pref_batch: Batch, center: float
) -> tuple[jax.Array, Metrics]:
    """L_θ(X_t), the Bradley-Terry loss, with (float32) accuracy and reward stats as aux.
    An optional `margin` [n] in pref_batch is subtracted from r_w - r_l. ``center`` > 0 (reward
    centring, ``train.center_rewards``; its default lives in config/defaults.py) adds center · mean((r_w + r_l)²)
    (``losses.centering_penalty``; its value is logged as ``center_penalty``); a Python 0 adds
    nothing, so the loss is the plain BT loss bit for bit."""
    r_w, r_l = pair_rewards(reward_fn, params, pref_batch)
    loss = losses.bt_loss(r_w, r_l, pref_batch.get("margin"))
    extra = {}
    if not (isinstance(center, int | float) and center == 0):
        penalty = losses.centering_penalty(r_w, r_l)
        loss = loss + jnp.asarray(center, loss.dtype) * penalty
        extra["center_penalty"] = penalty.astype(jnp.float32)
    aux = {
        "loss": loss.astype(jnp.float32),
        "accuracy": losses.preference_accuracy(r_w, r_l),
        **losses.reward_stats(r_w, r_l),
        **extra,
    }
    return loss, aux


def meta_loss(reward_fn: RewardFn, params: PyTree, meta_batch: Batch) -> jax.Array:
    """J_θ(X_s), the difference loss; `sample_mask` [m, k] (absent: all real) drops padding."""
    rewards = meta_rewards(reward_fn, params, meta_batch)
    return losses.difference_loss(rewards, meta_batch.get("sample_mask"))


def random_like(key: jax.Array, tree: PyTree, norm: jax.Array) -> PyTree:
    """An isotropic Gaussian direction with the structure and dtypes of ``tree``, scaled to
    global norm ``norm`` (drawn in float32, one key per leaf from ``key``); no gradient flows."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    u = [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)]
    scale = norm / jnp.maximum(global_norm(u), jnp.finfo(jnp.float32).tiny)
    out = [(x * scale).astype(leaf.dtype) for x, leaf in zip(u, leaves)]
    return jax.lax.stop_gradient(jax.tree.unflatten(treedef, out))


def ascend(params: PyTree, grads: PyTree, eta: float | jax.Array) -> PyTree:
    """θ + η·g, leaf by leaf in each param's own dtype (η = 0 returns θ bit for bit)."""
    return jax.tree.map(
        lambda p, g: p + jnp.asarray(eta, p.dtype) * g.astype(p.dtype), params, grads
    )


# --------------------------------------------------------------------------------------------
# Gradients.
# --------------------------------------------------------------------------------------------


def vanilla_grads(
    reward_fn: RewardFn, params: PyTree, pref_batch: Batch, center: float
) -> tuple[PyTree, Metrics]:
    """The plain RM step's gradient ∇_θ L_θ(X_t), and metrics at θ (``center``: reward
    centring's coefficient, ``preference_loss``)."""
    (_, metrics), g = jax.value_and_grad(
        lambda theta: preference_loss(reward_fn, theta, pref_batch, center), has_aux=True
    )(params)
    metrics["grad_norm"] = global_norm(g)
    return g, metrics


def meta_grads(
    reward_fn: RewardFn,
    params: PyTree,
    pref_batch: Batch,
    meta_batch: Batch,
    eta: float | jax.Array,
    order: str = "first",
    measure_j_prime: bool = False,
    eta_mode: str = "absolute",
    second_order: str = "hvp",
    prev_update_norm: jax.Array | None = None,
    *,
    center: float,
    direction: str = "ascent",
    rng: jax.Array | None = None,
) -> tuple[PyTree, Metrics]:
    """One MetaRM gradient (Algorithm 1); the caller applies it with its optimizer.
    ``center``: reward centring's coefficient in L (``preference_loss``; 0: the paper's L).
    ``second_order``: how order="second" is computed (``SECOND_ORDER``; the same g).
    ``eta_mode``: what η means. 'absolute': θ' = θ + η∇J (the paper). 'param_fraction':
    ‖θ' − θ‖ = η‖θ‖. 'update' (beyond the paper; sizes the ascent on the optimizer's scale):
    ‖θ' − θ‖ = η·‖Δθ_opt‖, ``prev_update_norm`` being the norm of the optimizer's last applied
    update (the train loop passes it; 0 at the first step, which then takes no ascent), so η is
    the ratio ρ of ascent to update that ``meta/ascent_to_update`` logs.
    ``direction`` (``DIRECTIONS``): 'ascent' is MetaRM; 'random' (first order; ``rng`` a typed key,
    one per step) and 'descent' are its negative controls, with the same ‖θ' − θ‖ and the same
    step size; every metric below is measured as for the ascent (∇J, J at θ, cos(∇J, g)).

    Returns `(g, metrics)`, g with the structure and dtypes of params. Metrics (float32 scalars):
      loss, accuracy, reward_*   L_θ'(X_t), accuracy and reward stats at θ' (from the forward
                                 that also gives g, so they cost nothing)
      grad_norm                  ‖g‖
      meta/J                     J_θ(X_s) at θ
      meta/grad_J_norm           ‖∇_θ J_θ(X_s)‖
      meta/ascent_norm           ‖θ' − θ‖, measured in the params' dtype (0 when the step is below
                                 their resolution, as bf16 weights at the paper's η can be)
      meta/eta_effective         the step on ∇J actually taken (η, or η‖θ‖/‖∇J‖)
      meta/J_gain_linear         η_eff‖∇J‖², the first-order predicted J(θ') - J(θ)
      meta/cos_gradJ_grad        cos(∇_θ J_θ(X_s), g): the alignment term of the paper's Eq. 8,
                                 read with ∇L at θ' (the gradient already computed) instead of at
                                 θ, which would cost another backward; the two differ by O(η).
                                 For order="second", g is the full second-order gradient.
      meta/J_prime, meta/J_gain  J_θ'(X_s) and J(θ') − J(θ), only if `measure_j_prime` (one extra
                                 forward on the meta batch, so off by default: the step's FLOPs
                                 stay at (2n + m·k)/2n of a vanilla step).
    With a Python ``eta == 0`` only loss/accuracy/reward_*, grad_norm, meta/J (a forward on the
    meta batch), meta/ascent_norm = 0 and meta/eta_effective = 0 are returned.
    """
    if order not in ORDERS:
        raise ValueError(f"meta order must be one of {ORDERS} (config.meta.order), got {order!r}.")
    if eta_mode not in ETA_MODES:
        raise ValueError(f"meta.eta_mode must be one of {ETA_MODES}, got {eta_mode!r}.")
    if second_order not in SECOND_ORDER:
        raise ValueError(f"meta.second_order must be one of {SECOND_ORDER}, got {second_order!r}.")
    if direction not in DIRECTIONS:
        raise ValueError(f"meta.direction must be one of {DIRECTIONS}, got {direction!r}.")
    if direction == "random" and (order != "first" or rng is None):
        raise ValueError("meta.direction='random' needs order='first' and a key per step (rng).")
    sign = -1.0 if direction == "descent" else 1.0
    J = lambda theta: meta_loss(reward_fn, theta, meta_batch)  # J_θ(X_s)
    L = lambda theta: preference_loss(reward_fn, theta, pref_batch, center)  # L_θ(X_t)

    if isinstance(eta, (int, float)) and eta == 0:  # θ' = θ: the vanilla gradient, exactly
        g, metrics = vanilla_grads(reward_fn, params, pref_batch, center)
        zero = jnp.zeros((), jnp.float32)
        metrics.update(
            {
                "meta/J": J(params).astype(jnp.float32),
                "meta/ascent_norm": zero,
                "meta/eta_effective": zero,
            }
        )
        if measure_j_prime:
            metrics["meta/J_prime"] = metrics["meta/J"]
            metrics["meta/J_gain"] = zero
        return g, metrics

    def step_size(theta, grad_j):
        if eta_mode == "absolute":
            return eta  # as given (a Python float is cast to each param's dtype once)
        # ‖θ' − θ‖ = η‖θ‖ ('param_fraction') or η‖Δθ_opt‖ ('update')
        size = global_norm(theta) if eta_mode == "param_fraction" else prev_update_norm
        if size is None:
            raise ValueError("meta.eta_mode='update' needs the optimizer's last update norm.")
        gj = global_norm(grad_j)
        return jax.lax.stop_gradient(
            jnp.where(gj > 0, eta * size / jnp.where(gj > 0, gj, 1.0), 0.0)
        )

    def meta_process(theta):
        j, grad_j = jax.value_and_grad(J)(theta)  # ∇_θ J_θ(X_s)
        step = sign * step_size(theta, grad_j)  # descent: the same size, the other way
        move = grad_j
        if direction == "random":  # the norm the ascent would have had, a random direction
            move = random_like(rng, grad_j, global_norm(grad_j))
        theta_prime = ascend(theta, move, step)  # θ' = θ + η ∇_θ J_θ(X_s)
        return theta_prime, (j, grad_j, step)

    def plus_hvp(v, hv, step):  # v + s·∇²J v, summed in at least float32, in v's dtype
        def one(a, h):
            acc = jnp.promote_types(a.dtype, jnp.float32)
            return (a.astype(acc) + jnp.asarray(step, acc) * h.astype(acc)).astype(a.dtype)

        return jax.tree.map(one, v, hv)

    if order == "first":  # g = ∇_θ' L_θ'(X_t)
        theta_prime, (j, grad_j, step) = meta_process(params)
        (_, metrics), g = jax.value_and_grad(L, has_aux=True)(theta_prime)
    elif second_order == "hvp":  # g = v + s∇²J(θ)v, v = ∇_θ' L_θ'(X_t)
        theta_prime, (j, grad_j, step) = meta_process(params)
        (_, metrics), v = jax.value_and_grad(L, has_aux=True)(theta_prime)
        _, hv = jax.jvp(jax.grad(J), (params,), (v,))
        g = plus_hvp(v, hv, step)
    elif second_order == "linearize":
        (j, grad_j), lin = jax.linearize(jax.value_and_grad(J), params)
        step = sign * step_size(params, grad_j)
        theta_prime = ascend(params, grad_j, step)
        (_, metrics), v = jax.value_and_grad(L, has_aux=True)(theta_prime)
        g = plus_hvp(v, lin(v)[1], step)
    else:  # g = ∇_θ L_θ'(X_t), through the ascent

        def outer(theta):  # L_{θ + η ∇J(θ)}(X_t)
            theta_prime, meta_aux = meta_process(theta)
            loss, aux = L(theta_prime)
            return loss, (aux, meta_aux, theta_prime)

        (_, (metrics, (j, grad_j, step), theta_prime)), g = jax.value_and_grad(outer, has_aux=True)(
            params
        )

    grad_j_norm, g_norm = global_norm(grad_j), global_norm(g)
    ascent = jax.tree.map(
        lambda a, b: a.astype(jnp.float32) - b.astype(jnp.float32), theta_prime, params
    )
    metrics.update(
        {
            "grad_norm": g_norm,
            "meta/J": j.astype(jnp.float32),
            "meta/grad_J_norm": grad_j_norm,
            "meta/ascent_norm": jax.lax.stop_gradient(global_norm(ascent)),
            "meta/eta_effective": jnp.asarray(step, jnp.float32),
            "meta/J_gain_linear": jnp.asarray(step, jnp.float32) * grad_j_norm**2,
            "meta/cos_gradJ_grad": cosine(grad_j, g, grad_j_norm, g_norm),
        }
    )
    if measure_j_prime:
        metrics["meta/J_prime"] = J(jax.lax.stop_gradient(theta_prime)).astype(jnp.float32)
        metrics["meta/J_gain"] = metrics["meta/J_prime"] - metrics["meta/J"]  # J(θ') − J(θ)
    return g, metrics
