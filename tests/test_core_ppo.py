"""PPO math against NumPy reference loops and hand-computed values (core/ppo.py)."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax.core import ppo, stats

# ------------------------------------------------------------------------------ references


def gae_reference_trl(rewards, values, mask, gamma, lam):
    """TRL's loop (right-padded masks): reversed over t, V after the end = 0."""
    r, v, m = (np.asarray(a, np.float64) for a in (rewards, values, mask))
    r, v = r * m, v * m
    b, t_len = r.shape
    adv = np.zeros_like(r)
    for b_i in range(b):
        last = 0.0
        for t in reversed(range(t_len)):
            next_v = v[b_i, t + 1] if t + 1 < t_len else 0.0
            delta = r[b_i, t] + gamma * next_v - v[b_i, t]
            last = delta + gamma * lam * last
            adv[b_i, t] = last * m[b_i, t]
    return adv, (adv + v) * m


def gae_reference_compressed(rewards, values, mask, gamma, lam):
    """Any mask: run the textbook recursion over each row's real tokens only, scatter back."""
    r, v, m = np.asarray(rewards, np.float64), np.asarray(values, np.float64), np.asarray(mask)
    adv, ret = np.zeros(r.shape), np.zeros(r.shape)
    for b_i in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if m[b_i, t]]
        next_v, next_a = 0.0, 0.0
        for t in reversed(idx):
            a = r[b_i, t] + gamma * next_v - v[b_i, t] + gamma * lam * next_a
            adv[b_i, t], ret[b_i, t] = a, a + v[b_i, t]
            next_v, next_a = v[b_i, t], a
    return adv, ret


def right_padded_mask(lengths, t_len):
    return (np.arange(t_len)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


# ------------------------------------------------------------------------------ GAE


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)])
def test_gae_matches_trl_numpy_loop_right_padded(gamma, lam):
    rng = np.random.default_rng(0)
    lengths = [7, 1, 4, 0, 5]
    mask = right_padded_mask(lengths, 7)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    adv, ret = ppo.gae(rewards, values, mask, gamma=gamma, lam=lam)
    adv_ref, ret_ref = gae_reference_trl(rewards, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-5, atol=1e-5)


def test_hyperparameters_have_no_default_in_core():
    # One home per default: config/defaults.py (ppo block); core/ppo.py takes them as required
    # keyword-only arguments, so a caller that forgets one fails instead of silently using a
    # second copy of the default.
    required = {
        ppo.kl_per_token: ("estimator", "clip"),
        ppo.token_rewards: ("beta",),
        ppo.normalize_scores: ("subtract_mean",),
        ppo.gae: ("gamma", "lam"),
        ppo.policy_loss: ("clip_eps",),
        ppo.value_loss: ("clip_eps",),
    }
    for fn, names in required.items():
        params = inspect.signature(fn).parameters
        for name in names:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (fn.__name__, name)
            assert params[name].default is inspect.Parameter.empty, (fn.__name__, name)
    mask = right_padded_mask([3, 5], 5)
    with pytest.raises(TypeError, match="gamma"):
        ppo.gae(np.zeros((2, 5)), np.zeros((2, 5)), mask, lam=0.95)


def test_gae_skips_holes_and_left_padding_and_ignores_garbage_at_pads():
    rng = np.random.default_rng(2)
    mask = np.array(
        [
            [0, 0, 1, 1, 1, 1],  # left-padded
            [1, 1, 0, 1, 0, 1],  # holes
            [1, 1, 1, 0, 0, 0],  # right-padded
            [0, 0, 0, 0, 0, 0],
        ],
        np.float32,
    )
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    adv_ref, ret_ref = gae_reference_compressed(rewards, values, mask, 0.9, 0.95)
    rewards[mask == 0] = np.nan  # pads must be selected away, not multiplied
    values[mask == 0] = np.inf
    adv, ret = ppo.gae(rewards, values, mask, gamma=0.9, lam=0.95)
    np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ret_ref, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(adv)[mask == 0] == 0) and np.all(np.asarray(ret)[mask == 0] == 0)


def test_gae_hand_values():
    # One row, 2 real tokens, γ=1, λ=0.5: A_1 = r_1 - V_1 = 1 - 0.5 = 0.5;
    # A_0 = r_0 + V_1 - V_0 + 0.5·A_1 = 0 + 0.5 - 2 + 0.25 = -1.25.
    adv, ret = ppo.gae(
        jnp.array([[0.0, 1.0, 9.0]]),
        jnp.array([[2.0, 0.5, 9.0]]),
        jnp.array([[1, 1, 0]]),
        gamma=1.0,
        lam=0.5,
    )
    np.testing.assert_allclose(adv, [[-1.25, 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[0.75, 1.0, 0.0]], rtol=1e-6)


# ------------------------------------------------------------------------------ whitening


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_numpy(shift_mean):
    rng = np.random.default_rng(3)
    x = (3.0 + 2.0 * rng.normal(size=(4, 6))).astype(np.float32)
    mask = right_padded_mask([6, 2, 5, 3], 6)
    real = x[mask == 1].astype(np.float64)
    mean, var = real.mean(), real.var(ddof=1)  # TRL: unbiased variance
    expected = (x - mean) / np.sqrt(var + 1e-8) + (0.0 if shift_mean else mean)
    expected = np.where(mask == 1, expected, 0.0)
    out = ppo.whiten(x, mask, shift_mean=shift_mean)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    out_real = np.asarray(out)[mask == 1]
    np.testing.assert_allclose(out_real.std(ddof=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(out_real.mean(), 0.0 if shift_mean else mean, atol=1e-5)


# ------------------------------------------------------------------------------ KL


LOGP = np.array([[-1.0, -2.0, -0.5]], np.float32)
REF = np.array([[-1.5, -2.0, 0.5]], np.float32)  # d = logp - ref = [0.5, 0, -1]


@pytest.mark.parametrize(
    "estimator,expected",
    [
        ("k1", [0.5, 0.0, -1.0]),
        ("k2", [0.125, 0.0, 0.5]),  # d²/2
        ("k3", [math.exp(-0.5) - 0.5, 0.0, math.e - 2.0]),  # exp(-d) + d - 1
    ],
)
def test_kl_estimators_hand_values(estimator, expected):
    kl = ppo.kl_per_token(LOGP, REF, estimator=estimator, clip=None)
    np.testing.assert_allclose(kl, [expected], rtol=1e-6, atol=1e-7)


def test_kl_clip_and_mask():
    np.testing.assert_allclose(
        ppo.kl_per_token(LOGP, REF, estimator="k1", clip=0.6), [[0.5, 0.0, -0.6]]
    )
    np.testing.assert_allclose(
        ppo.kl_per_token(LOGP, REF, estimator="k3", clip=0.6),
        [[math.exp(-0.5) - 0.5, 0.0, 0.6]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        ppo.kl_per_token(LOGP, REF, jnp.array([[1, 1, 0]]), estimator="k1", clip=None),
        [[0.5, 0.0, 0.0]],
    )


@pytest.mark.parametrize("estimator", ppo.KL_ESTIMATORS)
def test_kl_is_exactly_zero_when_policy_equals_reference(estimator):
    logp = jax.random.normal(jax.random.key(0), (3, 5)) * 4.0 - 3.0
    kl = ppo.kl_per_token(logp, logp, estimator=estimator, clip=None)
    assert np.all(np.asarray(kl) == 0.0)


def test_kl_unknown_estimator_fails_loudly():
    with pytest.raises(ValueError, match="k1"):
        ppo.kl_per_token(LOGP, REF, estimator="k4", clip=None)


# ------------------------------------------------------------------------------ PPO losses

# ratio = exp(logp - old) with old = 0: [[1.5, 0.5, 1.0], [1.1, 0.7, 1.3]], last token masked.
RATIO = np.array([[1.5, 0.5, 1.0], [1.1, 0.7, 1.3]])
ADV = np.array([[1.0, 1.0, -2.0], [-1.0, -2.0, 0.5]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)


def test_policy_loss_hand_values():
    # per token max(-A·r, -A·clip(r, 0.8, 1.2)):
    #   (1.5, A=1)  -> max(-1.5, -1.2) = -1.2  clipped
    #   (0.5, A=1)  -> max(-0.5, -0.8) = -0.5
    #   (1.0, A=-2) -> 2.0
    #   (1.1, A=-1) -> 1.1
    #   (0.7, A=-2) -> max(1.4, 1.6)  = 1.6    clipped
    # loss = (-1.2 - 0.5 + 2.0 + 1.1 + 1.6) / 5 = 0.6, clipfrac = 2/5
    logp = np.log(RATIO).astype(np.float32)
    loss, m = ppo.policy_loss(logp, np.zeros_like(logp), ADV, MASK, clip_eps=0.2)
    np.testing.assert_allclose(loss, 0.6, rtol=1e-6)
    np.testing.assert_allclose(m["ppo/policy_loss"], 0.6, rtol=1e-6)
    np.testing.assert_allclose(m["ppo/clipfrac"], 0.4, rtol=1e-6)
    logs = [math.log(r) for r in (1.5, 0.5, 1.0, 1.1, 0.7)]
    np.testing.assert_allclose(m["ppo/approx_kl_k1"], -sum(logs) / 5, rtol=1e-5)  # ≈ 0.109809
    np.testing.assert_allclose(
        m["ppo/approx_kl_k2"], 0.5 * sum(l * l for l in logs) / 5, rtol=1e-5
    )  # ≈ 0.075452
    np.testing.assert_allclose(m["ppo/ratio_mean"], (1.5 + 0.5 + 1.0 + 1.1 + 0.7) / 5, rtol=1e-6)


def test_policy_loss_gradient_is_zero_on_clipped_and_masked_tokens():
    # d/dlogp of -A·ratio = -A·ratio; divided by 5 real tokens; 0 where the clip is active.
    logp = jnp.asarray(np.log(RATIO), jnp.float32)
    g = jax.grad(lambda lp: ppo.policy_loss(lp, jnp.zeros_like(lp), ADV, MASK, clip_eps=0.2)[0])(
        logp
    )
    np.testing.assert_allclose(
        g, [[0.0, -0.5 / 5, 2.0 / 5], [1.1 / 5, 0.0, 0.0]], rtol=1e-5, atol=1e-7
    )


def test_policy_loss_clip_eps_is_configurable():
    logp = np.log(RATIO).astype(np.float32)
    _, m = ppo.policy_loss(logp, np.zeros_like(logp), ADV, MASK, clip_eps=0.6)
    assert float(m["ppo/clipfrac"]) == 0.0


V_OLD = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 50.0]], np.float32)
V_NEW = np.array([[0.5, 1.1, -0.5], [1.0, 0.0, 100.0]], np.float32)
RET = np.array([[1.0, 0.0, -1.0], [1.5, 3.0, -7.0]], np.float32)


def test_value_loss_hand_values():
    # v_clip = clip(v, v_old ± 0.2) = [[0.2, 1.1, -0.2], [1.8, 0.0, *]]
    # max((v-R)², (v_clip-R)²) = [[max(.25,.64), 1.21, max(.25,.64)], [max(.25,.09), 9, *]]
    # loss = 0.5 · (0.64 + 1.21 + 0.64 + 0.25 + 9) / 5 = 1.174; clipped branch active on 2 of 5.
    loss, m = ppo.value_loss(V_NEW, V_OLD, RET, MASK, clip_eps=0.2)
    np.testing.assert_allclose(loss, 1.174, rtol=1e-5)
    np.testing.assert_allclose(m["ppo/value_loss"], 1.174, rtol=1e-5)
    np.testing.assert_allclose(m["ppo/value_clipfrac"], 0.4, rtol=1e-6)
    g = jax.grad(lambda v: ppo.value_loss(v, V_OLD, RET, MASK, clip_eps=0.2)[0])(jnp.asarray(V_NEW))
    np.testing.assert_allclose(
        g, [[0.0, 1.1 / 5, 0.0], [-0.5 / 5, -3.0 / 5, 0.0]], rtol=1e-5, atol=1e-7
    )


def test_explained_variance_matches_numpy():
    real = MASK == 1
    ret, v = RET[real].astype(np.float64), V_NEW[real].astype(np.float64)
    expected = 1.0 - np.var(ret - v) / np.var(ret)
    np.testing.assert_allclose(ppo.explained_variance(V_NEW, RET, MASK), expected, rtol=1e-5)
    np.testing.assert_allclose(ppo.explained_variance(RET, RET, MASK), 1.0, rtol=1e-6)
    assert float(ppo.explained_variance(V_NEW, np.ones_like(RET), MASK)) == 0.0  # Var[R]=0


# ------------------------------------------------------------------------------ rewards


def test_token_rewards_score_on_last_real_token_right_padded():
    lengths = [3, 1, 4, 0]
    mask = right_padded_mask(lengths, 4)
    scores = np.array([2.0, -1.0, 3.0, 7.0], np.float32)
    kl = np.ones((4, 4), np.float32)  # -β·KL = -0.05 on every real token
    r = ppo.token_rewards(scores, kl, mask, beta=0.05)
    expected = np.array(
        [
            [-0.05, -0.05, 1.95, 0.0],
            [-1.05, 0.0, 0.0, 0.0],
            [-0.05, -0.05, -0.05, 2.95],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )  # empty row: no score anywhere
    np.testing.assert_allclose(r, expected, rtol=1e-6, atol=1e-7)


def test_token_rewards_uses_kl_estimate_and_beta():
    logp, ref = jnp.array([[-1.0, -2.0, -3.0]]), jnp.array([[-1.5, -1.0, -3.0]])
    kl = ppo.kl_per_token(logp, ref, estimator="k1", clip=None)  # [0.5, -1, 0]
    r = ppo.token_rewards(jnp.array([1.0]), kl, jnp.array([[1, 1, 0]]), beta=0.1)
    np.testing.assert_allclose(r, [[-0.05, 0.1 + 1.0, 0.0]], rtol=1e-6)


def test_running_moments_match_numpy_over_concatenated_batches():
    rng = np.random.default_rng(4)
    batches = [100.0 + 3.0 * rng.normal(size=n) for n in (7, 1, 16, 5)]
    masks = [None, None, rng.random(16) < 0.5, np.zeros(5, bool)]  # last batch: all masked out
    state = ppo.RunningMoments.init()
    seen = []
    update = jax.jit(ppo.update_moments)
    for x, m in zip(batches, masks):
        state = update(state, jnp.asarray(x, jnp.float32), None if m is None else jnp.asarray(m))
        seen.append(x if m is None else x[m])
    data = np.concatenate(seen).astype(np.float32).astype(np.float64)
    assert float(state.count) == len(data)
    np.testing.assert_allclose(state.mean, data.mean(), rtol=1e-6)
    np.testing.assert_allclose(state.std(), data.std(), rtol=1e-4)
    np.testing.assert_allclose(state.std(ddof=1), data.std(ddof=1), rtol=1e-4)
    # It is a pytree (checkpointable): flattens to 3 leaves and round-trips.
    leaves, treedef = jax.tree.flatten(state)
    assert len(leaves) == 3 and jax.tree.unflatten(treedef, leaves) == state


def test_normalize_and_clip_scores():
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32)
    state = ppo.update_moments(ppo.RunningMoments.init(), x)
    std, mean = x.std(), x.mean()
    np.testing.assert_allclose(
        ppo.normalize_scores(x, state, subtract_mean=False), x / std, rtol=1e-5
    )
    np.testing.assert_allclose(
        ppo.normalize_scores(x, state, subtract_mean=True), (x - mean) / std, rtol=1e-5, atol=1e-6
    )
    # Fewer than two scores seen: pass-through.
    one = ppo.update_moments(ppo.RunningMoments.init(), jnp.array([5.0]))
    np.testing.assert_allclose(ppo.normalize_scores(x, one, subtract_mean=False), x, rtol=1e-6)
    np.testing.assert_allclose(ppo.clip_rewards(x, 2.5), [1.0, 2.0, 2.5, 2.5])
    np.testing.assert_allclose(ppo.clip_rewards(-x, 2.5), [-1.0, -2.0, -2.5, -2.5])
    np.testing.assert_allclose(ppo.clip_rewards(x, None), x)


# ------------------------------------------------------------------------------ shift signal


def shift_bruteforce(scores, mask, edges):
    diffs = []
    for p in range(scores.shape[0]):
        for i in range(scores.shape[1]):
            for j in range(i + 1, scores.shape[1]):
                if mask[p, i] and mask[p, j]:
                    diffs.append(abs(float(scores[p, i]) - float(scores[p, j])))
    hist = [0] * (len(edges) - 1)
    for d in diffs:
        for b in range(len(edges) - 1):
            last = b == len(edges) - 2
            if edges[b] <= d < edges[b + 1] or (last and d == edges[b + 1]):
                hist[b] += 1
                break
    return diffs, hist


def test_reward_difference_stats_match_bruteforce_double_loop():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(6, 5)).astype(np.float32)
    mask = np.ones((6, 5), bool)
    mask[1, 3:] = False  # a prompt with 3 roll-outs
    mask[4, 1:] = False  # a prompt with 1 roll-out: no pairs
    scores[~mask] = np.nan  # padding must not leak
    edges = np.linspace(0.0, 2.5, 6).astype(np.float32)  # some |Δ| > 2.5 fall outside
    diffs, hist = shift_bruteforce(scores, mask, edges)
    out = jax.jit(stats.reward_difference_stats)(scores, edges, mask)
    assert float(out["num_pairs"]) == len(diffs) == 4 * 10 + 3
    np.testing.assert_allclose(out["mean"], np.mean(diffs), rtol=1e-5)
    np.testing.assert_allclose(out["var"], np.var(diffs), rtol=1e-4)
    np.testing.assert_array_equal(out["hist"], hist)
    assert sum(hist) < len(diffs)  # the test really exercises out-of-range differences


def test_reward_difference_stats_hand_values():
    # prompt 0: |0-1|, |0-3|, |1-3| = 1, 3, 2; prompt 1: 0, 3, 3.  mean 2, var 4/3.
    out = stats.reward_difference_stats(
        jnp.array([[0.0, 1.0, 3.0], [2.0, 2.0, 5.0]]), jnp.array([0.0, 1.0, 2.0, jnp.inf])
    )
    np.testing.assert_allclose(out["mean"], 2.0)
    np.testing.assert_allclose(out["var"], 4.0 / 3.0, rtol=1e-6)
    np.testing.assert_array_equal(out["hist"], [1, 1, 4])


# ------------------------------------------------------------------------------ jit


def test_every_function_jits():
    k = jax.random.split(jax.random.key(0), 6)
    b, t = 3, 5
    mask = jnp.asarray(right_padded_mask([5, 2, 3], t))
    logp, ref = -jnp.abs(jax.random.normal(k[0], (b, t))), -jnp.abs(jax.random.normal(k[1], (b, t)))
    vals, adv = jax.random.normal(k[2], (b, t)), jax.random.normal(k[3], (b, t))
    scores = jax.random.normal(k[4], (b,))
    for est in ppo.KL_ESTIMATORS:
        f = jax.jit(functools.partial(ppo.kl_per_token, estimator=est, clip=0.8))
        np.testing.assert_allclose(
            f(logp, ref, mask),
            ppo.kl_per_token(logp, ref, mask, estimator=est, clip=0.8),
            rtol=1e-6,
        )
    jitted = {
        "token_rewards": (ppo.token_rewards, (scores, logp - ref, mask), {"beta": 0.05}),
        "clip_rewards": (ppo.clip_rewards, (scores, 0.5), {}),
        "gae": (ppo.gae, (logp, vals, mask), {"gamma": 1.0, "lam": 0.95}),
        "whiten": (ppo.whiten, (adv, mask), {}),
        "policy_loss": (ppo.policy_loss, (logp, ref, adv, mask), {"clip_eps": 0.2}),
        "value_loss": (ppo.value_loss, (vals, adv, logp, mask), {"clip_eps": 0.2}),
        "explained_variance": (ppo.explained_variance, (vals, logp, mask), {}),
        "update_moments": (ppo.update_moments, (ppo.RunningMoments.init(), scores), {}),
        "normalize_scores": (
            ppo.normalize_scores,
            (scores, ppo.update_moments(ppo.RunningMoments.init(), scores)),
            {"subtract_mean": False},
        ),
        "reward_difference_stats": (
            stats.reward_difference_stats,
            (vals, jnp.linspace(0.0, 3.0, 7)),
            {},
        ),
    }
    for name, (fn, args, kwargs) in jitted.items():
        eager = fn(*args, **kwargs)
        compiled = jax.jit(functools.partial(fn, **kwargs))(*args)
        for e, c in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
            np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6, err_msg=name)
