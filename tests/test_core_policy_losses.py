"""Token log-probs, entropy, SFT and DPO losses against NumPy, torch and hand-computed values."""

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from metarm_jax.config import defaults
from metarm_jax.core import policy_losses as pl


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    b, t, v = 3, 6, 11
    logits = (3.0 * rng.normal(size=(b, t, v))).astype(np.float32)
    tokens = rng.integers(0, v, size=(b, t)).astype(np.int32)
    # prompt positions 0..1, response 2..(2+len), right-padded
    mask = np.zeros((b, t), np.float32)
    for row, length in enumerate([4, 1, 2]):
        mask[row, 2 : 2 + length] = 1
    return logits, tokens, mask


# ------------------------------------------------------------------------------ log-probs


def test_logprobs_of_matches_numpy_gather(batch):
    logits, tokens, _ = batch
    expected = np.take_along_axis(np_log_softmax(logits), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(pl.logprobs_of(logits, tokens), expected, rtol=1e-5, atol=1e-5)
    logp, _ = pl.logprobs_and_entropy(logits, tokens)
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-5)


def test_logprobs_upcast_bf16_to_f32(batch):
    logits, tokens, _ = batch
    out = pl.logprobs_of(jnp.asarray(logits, jnp.bfloat16), tokens)
    assert out.dtype == jnp.float32


def test_entropy_matches_numpy_and_uniform_is_log_v(batch):
    logits, tokens, mask = batch
    lp = np_log_softmax(logits)
    h = -(np.exp(lp) * lp).sum(-1)
    np.testing.assert_allclose(pl.token_entropy(logits), h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pl.entropy(logits, mask), h[mask == 1].mean(), rtol=1e-5)
    np.testing.assert_allclose(pl.logprobs_and_entropy(logits, tokens)[1], h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pl.entropy(jnp.zeros((2, 3, 11))), math.log(11), rtol=1e-6)


def test_sequence_logprobs_sums_over_mask():
    tok = jnp.array([[-1.0, -2.0, -4.0], [-0.5, -8.0, jnp.nan]])
    np.testing.assert_allclose(
        pl.sequence_logprobs(tok, jnp.array([[1, 0, 1], [1, 1, 0]])), [-5.0, -8.5]
    )


def test_next_token_targets_alignment():
    logits = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    ids = jnp.array([[5, 6, 7, 8], [1, 2, 3, 4]])
    mask = jnp.array([[0, 0, 1, 1], [0, 1, 1, 0]])
    lg, tg, tm = pl.next_token_targets(logits, ids, mask)
    np.testing.assert_array_equal(lg, logits[:, :3])  # logits at t predict ids at t+1
    np.testing.assert_array_equal(tg, [[6, 7, 8], [2, 3, 4]])
    np.testing.assert_array_equal(tm, [[0, 1, 1], [1, 1, 0]])


# ------------------------------------------------------------------------------ SFT


def test_sft_loss_matches_torch_cross_entropy_with_ignore_index(batch):
    logits, tokens, mask = batch
    labels = torch.tensor(np.where(mask == 1, tokens, -100), dtype=torch.long)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits).reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    ).item()
    loss, m = pl.sft_loss(logits, tokens, mask)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert float(m["sft/num_tokens"]) == mask.sum() == 7
    acc = (logits.argmax(-1) == tokens)[mask == 1].mean()
    np.testing.assert_allclose(m["sft/token_accuracy"], acc, rtol=1e-6)


def test_sft_loss_ignores_prompt_labels_and_uses_response_labels(batch):
    logits, tokens, mask = batch
    base, _ = pl.sft_loss(logits, tokens, mask)
    prompt_changed = tokens.copy()
    prompt_changed[0, 0] = (tokens[0, 0] + 1) % logits.shape[-1]  # a prompt position
    prompt_changed[1, 5] = -100  # a padding position
    assert float(pl.sft_loss(logits, prompt_changed, mask)[0]) == float(base)
    response_changed = tokens.copy()
    response_changed[0, 3] = (tokens[0, 3] + 1) % logits.shape[-1]  # a response position
    assert abs(float(pl.sft_loss(logits, response_changed, mask)[0]) - float(base)) > 1e-4


def test_sft_loss_empty_mask_is_zero_not_nan(batch):
    logits, tokens, mask = batch
    assert float(pl.sft_loss(logits, tokens, np.zeros_like(mask))[0]) == 0.0


# ------------------------------------------------------------------------------ DPO

# Fixed summed log-probs of 3 pairs.
PW = np.array([-10.0, -20.0, -5.0], np.float32)  # log π_θ(y_w|x)
PL = np.array([-12.0, -18.0, -5.0], np.float32)  # log π_θ(y_l|x)
RW = np.array([-11.0, -19.0, -6.0], np.float32)  # log π_ref(y_w|x)
RL = np.array([-11.0, -19.0, -6.0], np.float32)  # log π_ref(y_l|x)
# h = (π_w - ref_w) - (π_l - ref_l) = [1 - (-1), -1 - 1, 1 - 1] = [2, -2, 0]


def log_sigmoid(z):
    return -math.log1p(math.exp(-z))


def test_dpo_loss_equals_published_formula():
    beta = 0.5
    hs = [2.0, -2.0, 0.0]
    expected = -sum(log_sigmoid(beta * h) for h in hs) / 3
    # = -(log σ(1) + log σ(-1) + log σ(0)) / 3 = (0.313262 + 1.313262 + 0.693147) / 3
    np.testing.assert_allclose(expected, (0.3132617 + 1.3132617 + 0.6931472) / 3, rtol=1e-6)
    loss, m = pl.dpo_loss(PW, PL, RW, RL, beta=beta, label_smoothing=0.0)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(m["dpo/reward_chosen"], beta * (1.0 - 1.0 + 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(m["dpo/reward_rejected"], beta * (-1.0 + 1.0 + 1.0) / 3, rtol=1e-6)
    np.testing.assert_allclose(m["dpo/reward_margin"], beta * 0.0, atol=1e-7)
    np.testing.assert_allclose(m["dpo/accuracy"], 1.0 / 3)  # h = 0 (tie) counts as wrong


def test_dpo_beta_is_required_and_the_paper_value_comes_from_the_config():
    # One home per default: β's default (0.1) lives in config/defaults.py, not in core.
    beta = inspect.signature(pl.dpo_loss).parameters["beta"]
    assert beta.kind is inspect.Parameter.KEYWORD_ONLY
    assert beta.default is inspect.Parameter.empty
    assert defaults.dpo().beta == 0.1
    expected = -sum(log_sigmoid(0.1 * h) for h in (2.0, -2.0, 0.0)) / 3
    np.testing.assert_allclose(
        pl.dpo_loss(PW, PL, RW, RL, beta=0.1, label_smoothing=0.0)[0], expected, rtol=1e-6
    )


def test_dpo_label_smoothing_is_cdpo():
    beta, eps = 0.5, 0.2
    expected = (
        sum(
            -(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h)
            for h in (2.0, -2.0, 0.0)
        )
        / 3
    )
    loss, _ = pl.dpo_loss(PW, PL, RW, RL, beta=beta, label_smoothing=eps)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    g_w, g_l = jax.grad(
        lambda w, l: pl.dpo_loss(w, l, RW, RL, beta=0.1, label_smoothing=0.0)[0], argnums=(0, 1)
    )(jnp.asarray(PW), jnp.asarray(PL))
    # d/dπ_w = -β σ(-βh) / n, d/dπ_l = +β σ(-βh) / n
    sig = np.array([1 / (1 + math.exp(0.1 * h)) for h in (2.0, -2.0, 0.0)])
    np.testing.assert_allclose(g_w, -0.1 * sig / 3, rtol=1e-5)
    np.testing.assert_allclose(g_l, 0.1 * sig / 3, rtol=1e-5)


# ------------------------------------------------------------------------------ jit


def test_every_function_jits(batch):
    logits, tokens, mask = batch
    cases = {
        "logprobs_of": (pl.logprobs_of, (logits, tokens)),
        "token_entropy": (pl.token_entropy, (logits,)),
        "entropy": (pl.entropy, (logits, mask)),
        "logprobs_and_entropy": (pl.logprobs_and_entropy, (logits, tokens)),
        "sequence_logprobs": (pl.sequence_logprobs, (logits[..., 0], mask)),
        "next_token_targets": (pl.next_token_targets, (logits, tokens, mask)),
        "sft_loss": (pl.sft_loss, (logits, tokens, mask)),
        "dpo_loss": (
            functools.partial(pl.dpo_loss, beta=0.1, label_smoothing=0.1),
            (PW, PL, RW, RL),
        ),
        "masked_var": (pl.masked_var, (logits[..., 0], mask)),
    }
    for name, (fn, args) in cases.items():
        eager, compiled = fn(*args), jax.jit(fn)(*args)
        for e, c in zip(jax.tree.leaves(eager), jax.tree.leaves(compiled)):
            np.testing.assert_allclose(c, e, rtol=1e-5, atol=1e-6, err_msg=name)
