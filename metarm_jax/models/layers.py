"""The decoder's layers as pure functions of their weights (no module state): RMSNorm, rotary
embeddings, positions from the attention mask, the attention (without a cache: ``attention``;
over one layer's cache: ``cache_attention``), and the pieces of one decoder layer (``_qkv``,
``_rest``) with the cacheless layer they make (``block_apply``, what ``Llama`` scans);
``metarm_jax.models.decode`` makes the cached layer from the same pieces. Numerics follow HF's
``LlamaModel``; ``metarm_jax.models.llama`` re-exports every public name."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from metarm_jax.models.llama_config import LlamaConfig
from metarm_jax.sharding import constrain


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """HF LlamaRMSNorm: normalise in fp32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * xf.astype(x.dtype)


def rope_inv_freq(cfg: LlamaConfig) -> jax.Array:
    """Rotary inverse frequencies [D/2] in fp32, as HF's ``ROPE_INIT_FUNCTIONS[cfg.rope_type]``."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if cfg.rope_type == "default":
        return inv_freq
    # llama3 (Llama-3.1 and later): HF's _compute_llama3_parameters, step by step.
    factor, low, high = cfg.rope_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_len = cfg.rope_original_max_position_embeddings
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return jnp.where(medium, smoothed, scaled)


def rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding (HF convention). x: [B, T, H, D], positions: [B, T],
    inv_freq: [D/2] (``rope_inv_freq``)."""
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


def positions_from_mask(mask: jax.Array, start: jax.Array | None = None) -> jax.Array:
    """Rotary positions [B, T]: count of real tokens before each token (pads repeat a position)."""
    pos = jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    if start is not None:
        pos = pos + start[:, None]
    return jnp.maximum(pos, 0)


def attention_impl(cfg: LlamaConfig, t: int, s: int) -> str:
    """The implementation ``cfg.attention`` means for T queries over S keys: "auto" is cudnn on
    a GPU where cuDNN's flash attention takes the shapes (bf16/fp16, head_dim <= 128 and a
    multiple of 8, even T and S with a mask), xla elsewhere."""
    if cfg.attention != "auto":
        return cfg.attention
    fits = (
        cfg.compute_dtype in (jnp.bfloat16, jnp.float16)
        and cfg.head_dim <= 128
        and cfg.head_dim % 8 == 0
        and t % 2 == 0
        and s % 2 == 0
    )
    return "cudnn" if fits and jax.default_backend() == "gpu" else "xla"


def attention(cfg: LlamaConfig, q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array):
    """Grouped-query attention without a cache: q [B, T, H, D], k and v [B, S, KVH, D],
    allowed [B, T, S] (which keys each query may see) -> [B, T, H, D] in the compute dtype.

    ``jax.nn.dot_product_attention`` (scores in fp32, scaled by 1/sqrt(D), the boolean mask, a
    softmax in fp32) with ``cfg.attention``'s implementation, or this module's einsum form
    (``attention="einsum"``; the scores computed in the compute dtype, then fp32)."""
    impl = attention_impl(cfg, q.shape[1], k.shape[1])
    if impl != "einsum":
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None], implementation=impl)
    b, t, h, d = q.shape
    kvh = k.shape[2]
    qg = q.reshape(b, t, kvh, h // kvh, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k).astype(jnp.float32)
    scores = scores / math.sqrt(d)
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("bkgts,bskd->btkgd", probs, v).reshape(b, t, h, d)


def cache_attention(
    cfg: LlamaConfig, q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array
) -> jax.Array:
    """Attention over one layer's cache: q [B, T, H, D], k and v [B, KVH, S, D] (``KVCache``'s
    layout: both matmuls read it as it is), allowed [B, T, S] -> [B, T, H, D]. The numbers of
    ``attention`` with the same ``cfg.attention`` (scores in fp32, scaled by 1/sqrt(D) as
    ``jax.nn.dot_product_attention`` does; "einsum": its own form)."""
    b, t, h, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, t, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)  # [B, KVH, G, T, D]: small
    if cfg.attention == "einsum":
        scores = jnp.einsum("bkgtd,bksd->bkgts", qg, k).astype(jnp.float32) / math.sqrt(d)
    else:
        scores = jnp.einsum("bkgtd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32)
        scores = scores * jnp.float32(1.0 / np.sqrt(d))
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _qkv(cfg: LlamaConfig, p: dict[str, jax.Array], x: jax.Array, positions: jax.Array):
    """The attention's q [B, T, H, D], k and v [B, T, KVH, D] (rotary embedding applied)."""
    dt = cfg.compute_dtype
    h = rms_norm(x, p["attn_norm"], cfg.rms_norm_eps)
    q = jnp.einsum("bte,ehd->bthd", h, p["q"].astype(dt))
    k = jnp.einsum("bte,ehd->bthd", h, p["k"].astype(dt))
    v = jnp.einsum("bte,ehd->bthd", h, p["v"].astype(dt))
    if cfg.qkv_bias:
        q, k, v = (a + p[f"{n}_bias"].astype(dt) for a, n in ((q, "q"), (k, "k"), (v, "v")))
    inv_freq = rope_inv_freq(cfg)
    q = constrain(rope(q, positions, inv_freq), ("batch", "length", "act_heads", None))
    k = constrain(rope(k, positions, inv_freq), ("batch", "length", "act_kv_heads", None))
    v = constrain(v, ("batch", "length", "act_kv_heads", None))
    return tuple(checkpoint_name(a, "qkv") for a in (q, k, v))


def _rest(cfg: LlamaConfig, p: dict[str, jax.Array], x: jax.Array, attn: jax.Array) -> jax.Array:
    """The layer after its attention: the o projection, the residual, the MLP."""
    dt = cfg.compute_dtype
    attn = checkpoint_name(attn, "attn_out")
    # As one [B, T, H*D] x [H*D, E] matmul: the weight's reshape is free (row-major), and XLA
    # does not move the [H, D] contraction onto a transposed copy of the weight.
    b, t, h, d = attn.shape
    o = p["o"].astype(dt).reshape(h * d, -1)
    x = x + jnp.einsum("btf,fe->bte", attn.reshape(b, t, h * d), o)
    x = constrain(x, ("batch", "length", "act_embed"))
    h = rms_norm(x, p["mlp_norm"], cfg.rms_norm_eps)
    gate = jnp.einsum("bte,ef->btf", h, p["gate"].astype(dt))
    up = jnp.einsum("bte,ef->btf", h, p["up"].astype(dt))
    act = constrain(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    x = x + jnp.einsum("btf,fe->bte", act, p["down"].astype(dt))
    return constrain(x, ("batch", "length", "act_embed"))


def block_apply(
    cfg: LlamaConfig,
    p: dict[str, jax.Array],
    x: jax.Array,
    positions: jax.Array,
    allowed: jax.Array,
) -> jax.Array:
    """One decoder layer without a cache on per-layer weights ``p``: x [B, T, E], positions
    [B, T], allowed [B, T, T] -> the new x."""
    q, k, v = _qkv(cfg, p, x, positions)
    return _rest(cfg, p, x, attention(cfg, q, k, v, allowed))
