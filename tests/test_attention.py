"""Attention through ``jax.nn.dot_product_attention`` against the model's own einsum attention
(the code before issue 24, kept as ``attention="einsum"``): the same logits and the same
gradients for padded batches (left, right, none) and for packed rows (two segments in a row, a
prompt with branches, padding), with grouped-query, multi-query and multi-head attention. The
einsum path itself is checked against HF transformers in test_models_hf.py.

In fp32 both compute the same scores, softmax and weighted sum; they differ only in how the
1/sqrt(D) is applied (a product with its fp32 value vs a division), which for D = 16 or 64 is
exact and for D = 8 is one rounding in each score. In bf16 the dot-product path keeps the scores
in fp32 (the einsum path rounds them to bf16 first); both stay within bf16's resolution of the
fp32 model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarm_jax.core.packed import Packing
from metarm_jax.models import llama
from tests.tolerances import assert_close_to_scale

# (name, kv heads, head_dim): tiny's 4 heads of 16 over 2 KV heads; MQA with head_dim 8 (the
# scale 1/sqrt(8) is not a power of two); MHA.
SHAPES = [("gqa", 2, 0), ("mqa_d8", 1, 8), ("mha", 4, 0)]
V = 97


def _cfg(kv, head_dim, **kw):
    return llama.preset("tiny", vocab_size=V, num_kv_heads=kv, head_dim=head_dim, **kw)


def _padded():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, V, (4, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, :5] = 0  # left padded
    mask[2, 7:] = 0  # right padded
    mask[3, :2] = mask[3, 10:] = 0  # both
    return jnp.asarray(np.where(mask > 0, ids, 0)), jnp.asarray(mask)


def _packed() -> Packing:
    """Row 0: a prompt (4 tokens) and two branches of 3, then 2 pad slots. Row 1: two segments
    (5 and 4 tokens), 3 pad slots. Row 2: padding only (a row no token sees)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(3, V, (3, 12)).astype(np.int32)
    seg = np.array([[1] * 10 + [0] * 2, [1] * 5 + [2] * 4 + [0] * 3, [0] * 12])
    branch = np.array([[0] * 4 + [1] * 3 + [2] * 3 + [0] * 2, [0] * 12, [0] * 12])
    pos = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 0, 0],
            [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 0, 0],
            [0] * 12,
        ]
    )
    ids = np.where(seg > 0, ids, 0)
    return Packing(
        ids=jnp.asarray(ids),
        segment_ids=jnp.asarray(seg, jnp.int32),
        positions=jnp.asarray(pos, jnp.int32),
        branch_ids=jnp.asarray(branch, jnp.int32),
    )


def _loss_and_grads(cfg, batch):
    """Mean square of the LM logits at the real tokens, and its gradient."""
    graphdef, params = nnx.split(llama.create(cfg.replace(attention="einsum"), "lm", seed=5))
    graphdef = nnx.graphdef(llama.create(cfg, "lm", seed=5))  # same weights, cfg's attention
    if isinstance(batch, Packing):
        real = batch.segment_ids > 0
        call = lambda m: m(batch.ids, None, packing=batch)
    else:
        ids, mask = batch
        real = mask > 0
        call = lambda m: m(ids, mask)

    def loss(p):
        logits = call(nnx.merge(graphdef, p))
        return jnp.sum(jnp.where(real[..., None], logits**2, 0.0)) / jnp.sum(real), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, np.asarray(logits)[np.asarray(real)], grads


@pytest.mark.parametrize("batch", ["padded", "packed"])
@pytest.mark.parametrize("name,kv,head_dim", SHAPES)
def test_dot_product_attention_equals_the_einsum_attention(batch, name, kv, head_dim):
    data = _padded() if batch == "padded" else _packed()
    ref_loss, ref_logits, ref_grads = _loss_and_grads(_cfg(kv, head_dim, attention="einsum"), data)
    loss, logits, grads = _loss_and_grads(_cfg(kv, head_dim, attention="xla"), data)
    # the logits at every real token, the loss and every weight's gradient
    assert_close_to_scale(logits, ref_logits, 1e-6, err_msg=f"{name} {batch} logits")
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
    for (path, g), (_, r) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
        assert_close_to_scale(g.get_value(), r.get_value(), 1e-5, err_msg=f"{name} {batch} {path}")


def test_auto_is_xla_off_a_gpu_and_cudnn_needs_its_shapes():
    cfg = _cfg(2, 0, dtype="bfloat16")
    expect = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert llama.attention_impl(cfg, 64, 64) == expect
    assert llama.attention_impl(cfg.replace(dtype="float32"), 64, 64) == "xla"  # fp32: no cuDNN
    assert llama.attention_impl(cfg, 63, 63) == "xla"  # odd lengths with a mask: no cuDNN
    assert llama.attention_impl(cfg.replace(attention="einsum"), 64, 64) == "einsum"
    with pytest.raises(ValueError, match="attention='flash'"):
        cfg.replace(attention="flash")


def test_bf16_compute_agrees_to_bf16_precision():
    ids, mask = _padded()
    real = np.asarray(mask) > 0

    def logits(cfg):
        model = llama.create(cfg, "lm", seed=5)  # fp32 weights; cfg's compute dtype
        return np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask), np.float64)[real]

    exact = logits(_cfg(2, 0, attention="einsum"))
    got = {a: logits(_cfg(2, 0, attention=a, dtype="bfloat16")) for a in ("einsum", "xla")}
    # each within a few bf16 roundings (2^-8 each) of the fp32 model, and of each other
    assert_close_to_scale(got["xla"], exact, 2**-6)
    assert_close_to_scale(got["einsum"], exact, 2**-6)
    assert_close_to_scale(got["xla"], got["einsum"], 2**-6)
