"""Losses against hand-computed values and a brute-force NumPy double loop."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax.core import losses

LN3 = math.log(3.0)  # σ(ln 3) = 3/4, σ(-ln 3) = 1/4


def j_bruteforce(rewards, mask):
    """J = mean over prompts with k_p >= 2 real samples of 2/k_p² Σ_{i<j} σ(|r_i - r_j|)."""
    per_prompt = []
    for r_row, m_row in zip(np.asarray(rewards, np.float64), np.asarray(mask)):
        real = [r for r, keep in zip(r_row, m_row) if keep]
        k_p = len(real)
        if k_p < 2:
            continue
        total = 0.0
        for i in range(k_p):
            for j in range(i + 1, k_p):
                total += 1.0 / (1.0 + math.exp(-abs(real[i] - real[j])))
        per_prompt.append(2.0 / k_p**2 * total)
    return float(np.mean(per_prompt)) if per_prompt else 0.0


# ------------------------------------------------------------------------------ Bradley-Terry


def test_bt_loss_hand_values():
    r_w, r_l = jnp.array([LN3, 0.0]), jnp.array([0.0, LN3])
    expected = -(math.log(0.75) + math.log(0.25)) / 2
    np.testing.assert_allclose(losses.bt_loss(r_w, r_l), expected, rtol=1e-6)


def test_bt_loss_margin_is_subtracted():
    # r_w - r_l - margin = ln3 - ln3 = 0 for pair 0 and 2ln3 - ln3 = ln3 for pair 1.
    r_w, r_l = jnp.array([LN3, 2 * LN3]), jnp.array([0.0, 0.0])
    margin = jnp.array([LN3, LN3])
    expected = -(math.log(0.5) + math.log(0.75)) / 2
    np.testing.assert_allclose(losses.bt_loss(r_w, r_l, margin), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.bt_loss(r_w, r_l, LN3), expected, rtol=1e-6)


def test_bt_loss_is_finite_for_huge_differences():
    loss = losses.bt_loss(jnp.array([-1000.0, 1000.0]), jnp.array([0.0, 0.0]))
    np.testing.assert_allclose(loss, 500.0, rtol=1e-6)
    g = jax.grad(lambda r: losses.bt_loss(r, jnp.zeros(2)))(jnp.array([-1000.0, 1000.0]))
    assert np.all(np.isfinite(g))


def test_accuracy_counts_ties_as_wrong():
    r_w = jnp.array([2.0, 1.0, 1.0, 3.0])
    r_l = jnp.array([1.0, 2.0, 1.0, -1.0])  # right, wrong, tie, right
    assert float(losses.preference_accuracy(r_w, r_l)) == 0.5


def test_reward_stats_hand_values():
    stats = losses.reward_stats(jnp.array([1.0, 3.0]), jnp.array([0.0, -2.0]))
    np.testing.assert_allclose(stats["reward_chosen"], 2.0)
    np.testing.assert_allclose(stats["reward_rejected"], -1.0)
    np.testing.assert_allclose(stats["reward_margin"], 3.0)
    np.testing.assert_allclose(stats["reward_std"], np.std([1.0, 3.0, 0.0, -2.0]), rtol=1e-6)
    assert all(v.dtype == jnp.float32 for v in stats.values())


def test_losses_upcast_bf16_to_f32():
    r = jnp.array([1.0, 2.0], jnp.bfloat16)
    assert losses.bt_loss(r, r[::-1]).dtype == jnp.float32
    assert losses.difference_loss(r[None]).dtype == jnp.float32


# ------------------------------------------------------------------------------ difference loss J


def test_j_hand_values():
    # k = 2: one pair, σ(ln 3) = 3/4, J = 2/4 · 3/4.
    np.testing.assert_allclose(losses.difference_loss(jnp.array([[0.0, LN3]])), 0.375, rtol=1e-6)
    # k = 3: pairs 3/4 + 3/4 + σ(0) = 2, J = 2/9 · 2.
    np.testing.assert_allclose(
        losses.difference_loss(jnp.array([[0.0, LN3, LN3]])), 4 / 9, rtol=1e-6
    )
    # The mean over prompts: (0.375 + 4/9) / 2 with the k = 2 prompt padded to k = 3.
    rewards = jnp.array([[0.0, 123.0, LN3], [0.0, LN3, LN3]])
    mask = jnp.array([[1, 0, 1], [1, 1, 1]])
    np.testing.assert_allclose(
        losses.difference_loss(rewards, mask), (0.375 + 4 / 9) / 2, rtol=1e-6
    )


@pytest.mark.parametrize("k", [2, 3, 5, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_j_matches_bruteforce(k, masked):
    rng = np.random.default_rng(100 * k + masked)
    m = 7
    rewards = rng.normal(scale=2.0, size=(m, k)).astype(np.float32)
    mask = rng.random((m, k)) < 0.6 if masked else np.ones((m, k), bool)
    if masked:
        mask[0] = True  # at least one full prompt
        mask[1] = False  # an empty prompt
        mask[2] = False
        mask[2, k - 1] = True  # a prompt with one real sample, not in position 0
    got = losses.difference_loss(jnp.asarray(rewards), jnp.asarray(mask))
    np.testing.assert_allclose(got, j_bruteforce(rewards, mask), rtol=1e-6)
    if not masked:
        np.testing.assert_allclose(losses.difference_loss(jnp.asarray(rewards)), got, rtol=0)


def test_j_padding_is_removed_not_scored():
    """A prompt with k_p real samples scores as if sampled with k = k_p; padding values (even
    NaN/inf) change nothing and get zero gradient."""
    rng = np.random.default_rng(0)
    real = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    padded = jnp.concatenate([real, jnp.array([[jnp.nan, jnp.inf]] * 4)], axis=1)  # [4, 5]
    mask = jnp.array([[1, 1, 1, 0, 0]] * 4)
    np.testing.assert_allclose(
        losses.difference_loss(padded, mask), losses.difference_loss(real), rtol=1e-6
    )
    g = jax.grad(losses.difference_loss)(padded, mask)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[:, 3:], 0.0)
    assert np.all(np.abs(g[:, :3]) > 0)


def test_j_prompts_with_fewer_than_two_samples_are_left_out_of_the_mean():
    rewards = jnp.array([[0.0, LN3], [7.0, -7.0]])
    mask = jnp.array([[1, 1], [1, 0]])
    np.testing.assert_allclose(losses.difference_loss(rewards, mask), 0.375, rtol=1e-6)


def test_j_is_zero_without_any_pair():
    # k = 1 arrays, all-padding prompts, and single-sample prompts: no pair anywhere -> J = 0.
    assert float(losses.difference_loss(jnp.array([[1.0], [2.0]]))) == 0.0
    assert float(losses.difference_loss(jnp.ones((3, 4)), jnp.zeros((3, 4)))) == 0.0
    rewards = jnp.array([[1.0, 5.0], [2.0, -3.0]])
    mask = jnp.array([[1, 0], [0, 1]])
    assert float(losses.difference_loss(rewards, mask)) == 0.0
    np.testing.assert_array_equal(jax.grad(losses.difference_loss)(rewards, mask), 0.0)


def test_j_shape_errors():
    with pytest.raises(ValueError, match=r"\[m, k\]"):
        losses.difference_loss(jnp.ones(5))
    with pytest.raises(ValueError, match="sample_mask shape"):
        losses.difference_loss(jnp.ones((2, 3)), jnp.ones((2, 4)))
