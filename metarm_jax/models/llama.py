"""Llama decoder in Flax NNX with three heads: LM logits, scalar reward, token values.

Numerics follow HF transformers' ``LlamaModel`` (RMSNorm in fp32, rotate-half rotary embeddings,
grouped-query attention, SwiGLU) so that HF checkpoints load without any weight permutation.
Two config switches cover the other supported checkpoint families: ``rope_type="llama3"``
(Llama-3.1/3.2's rotary frequency scaling) and ``qkv_bias`` (Qwen2/2.5's q/k/v projection
biases); ``family`` only names the HF architecture an export is written as.

Layout choices:
- Every weight names its logical axes (``nnx.Param(..., axes=...)``); ``metarm_jax.sharding``
  maps them to the mesh.
- Decoder layers are always stored stacked along a leading ``layers`` axis. ``scan_layers=True``
  runs them with ``lax.scan`` (compile time independent of depth); ``False`` unrolls a Python
  loop over the same weights (sometimes faster to run, slower to compile).
- Decoding with a KV cache runs on ``decode_weights()``: each layer's weights split into arrays
  of their own and cast to the compute dtype, made once per generation (``sampling.generate``),
  with the layers as a Python loop, so a decode step's matmuls read the weights in place. The
  cache holds one [B, KVH, S, D] buffer per layer, the layout the attention's matmuls read
  without a transpose (``tests/test_decode_hlo.py`` checks the compiled step for copies).
- Attention (``cfg.attention``) is ``jax.nn.dot_product_attention`` (cuDNN's flash attention on
  a GPU, XLA's elsewhere) with the boolean mask of the padding, causality and packing; the
  module's own einsum form stays as the reference.
- ``cfg.remat`` picks what the backward keeps of each layer (``REMAT_POLICIES``).
- Positions come from the attention mask (``cumsum(mask) - 1``), so left- and right-padded
  batches give the same per-token results.
- Packed rows (``Packing``): several sequences share one row. A token sees the earlier tokens of
  its own segment that are in the shared prefix (branch 0) or in its own branch, with explicit
  positions; rewards are read at given indices. One prompt followed by its j responses
  (``metarm_jax.data.packing``) computes the prompt once for the j of them, with the same
  per-token results as the unpacked rows. Segments let independent examples share a row (packed
  SFT, ``packing.pack_examples``: one segment per example, branch 0).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.ad_checkpoint import checkpoint_name

from metarm_jax.core.packed import Packing
from metarm_jax.sharding import constrain, named_sharding, state_shardings

HEADS = ("lm", "reward", "value")
_CP = jax.checkpoint_policies
# What the backward pass keeps of each layer's forward (the rest is recomputed). The names are
# the layer's ``checkpoint_name``s: "qkv" (q, k, v after the rotary embedding) and "attn_out"
# (the attention output, the o projection's input).
REMAT_POLICIES = {
    "none": None,  # keep everything
    "full": _CP.nothing_saveable,  # keep each layer's input only
    "dots": _CP.checkpoint_dots,  # every matmul output, the attention's too
    "dots_no_batch": _CP.dots_with_no_batch_dims_saveable,  # the weight matmuls' outputs
    # the weight matmuls and the attention output: the backward recomputes the scores only
    "dots_no_batch_attn": _CP.save_from_both_policies(
        _CP.dots_with_no_batch_dims_saveable, _CP.save_only_these_names("attn_out")
    ),
    # q, k, v and the attention output: the MLP (two thirds of a layer's weight FLOPs at
    # Llama-2-7B's shapes) and the scores are recomputed; [B, T, 4E] kept per layer (MHA)
    # against dots_no_batch's [B, T, 5E + 2F]
    "qkv_attn": _CP.save_only_these_names("qkv", "attn_out"),
}
# Attention of the cacheless forward: "xla" and "cudnn" are ``jax.nn.dot_product_attention``'s
# implementations (cuDNN's fused flash attention needs a GPU, bf16/fp16, head_dim <= 128 and a
# multiple of 8, even lengths); "auto" takes cudnn where it applies and xla elsewhere;
# "einsum" is this module's own (scores in the compute dtype), kept as the reference.
ATTENTIONS = ("auto", "xla", "cudnn", "einsum")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
FAMILIES = ("llama", "qwen2")  # HF model_type an export is written as
ROPE_TYPES = ("default", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    family: str = "llama"  # one of FAMILIES
    qkv_bias: bool = False  # biases on the q/k/v projections (Qwen2)
    # Rotary frequencies: "default" (theta only) or "llama3" (Llama-3.1's scaling: wavelengths
    # above original_max_position_embeddings / low_freq_factor are divided by factor, those below
    # original_max_position_embeddings / high_freq_factor kept, the band between interpolated).
    rope_type: str = "default"  # one of ROPE_TYPES
    rope_factor: float = 8.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int = 8192
    # Execution policy (not part of the checkpoint).
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the weights
    remat: str = "none"  # one of REMAT_POLICIES
    attention: str = "auto"  # one of ATTENTIONS
    scan_layers: bool = True
    scan_unroll: int = 1  # layers per scan iteration (lax.scan's unroll); 1: no unrolling

    def __post_init__(self):
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of "
                f"num_kv_heads={self.num_kv_heads} (grouped-query attention)."
            )
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}; expected one of {FAMILIES}.")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r}; expected one of {ROPE_TYPES}.")
        if (
            self.rope_type == "llama3"
            and not self.rope_high_freq_factor > self.rope_low_freq_factor
        ):
            raise ValueError(
                f"rope_high_freq_factor={self.rope_high_freq_factor} must be above "
                f"rope_low_freq_factor={self.rope_low_freq_factor} (llama3 rotary scaling)."
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat={self.remat!r}; expected one of {sorted(REMAT_POLICIES)}.")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention={self.attention!r}; expected one of {ATTENTIONS}.")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise ValueError(f"{key}={getattr(self, key)!r}; expected one of {sorted(DTYPES)}.")

    def replace(self, **kw) -> LlamaConfig:
        return dataclasses.replace(self, **kw)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def num_params(self, head: str = "lm") -> int:
        e, f, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = e * d * (self.num_heads * 2 + self.num_kv_heads * 2)
        if self.qkv_bias:
            attn += d * (self.num_heads + 2 * self.num_kv_heads)
        layer = attn + 3 * e * f + 2 * e
        total = self.vocab_size * e + self.num_layers * layer + e
        if head == "lm" and not self.tie_word_embeddings:
            total += self.vocab_size * e
        elif head in ("reward", "value"):
            total += e + (1 if head == "value" else 0)
        return total


PRESETS: dict[str, LlamaConfig] = {
    "llama2_7b": LlamaConfig(32000, 4096, 11008, 32, 32, 32, rms_norm_eps=1e-5),
    "llama2_13b": LlamaConfig(32000, 5120, 13824, 40, 40, 40, rms_norm_eps=1e-5),
    "llama2_70b": LlamaConfig(32000, 8192, 28672, 80, 64, 8, rms_norm_eps=1e-5),
    # ~1.1B (TinyLlama shape), for GPU benchmarks.
    "llama_1b": LlamaConfig(32000, 2048, 5632, 22, 32, 4),
    # ~105M, for CPU benchmarks.
    "llama_100m": LlamaConfig(32000, 768, 2048, 8, 12, 12),
    # Tiny configs for tests and the quickstart.
    "tiny": LlamaConfig(256, 64, 128, 2, 4, 2, max_position_embeddings=512),
    "tiny_mha": LlamaConfig(256, 64, 128, 2, 4, 4, max_position_embeddings=512),
}


def preset(name: str, **overrides) -> LlamaConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}.")
    return PRESETS[name].replace(**overrides)


# --------------------------------------------------------------------------------------------
# KV cache


@struct.dataclass
class KVCache:
    """Per-layer keys/values for incremental decoding.

    k, v:      one array per layer, each [batch, kv_heads, max_len, head_dim]: the layout the
               attention's matmuls read as they are (batch and heads leading, then the slots),
               and one buffer per layer, so a step neither transposes nor slices a layer's cache
    key_mask:  [batch, max_len]  1 where a slot holds a real (non-pad) token
    next_pos:  [batch]           rotary position of each sequence's next real token
    index:     []                next slot to write (shared by the batch; prompts are left-padded)
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    key_mask: jax.Array
    next_pos: jax.Array
    index: jax.Array

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> KVCache:
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(
        k=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        key_mask=jnp.zeros((batch, max_len), jnp.int32),
        next_pos=jnp.zeros((batch,), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


CACHE_AXES = ("cache_batch", "cache_kv_heads", "cache_length", None)  # each layer's k and v


# --------------------------------------------------------------------------------------------
# Layers


def _param(rngs: nnx.Rngs | None, init, shape, axes, dtype) -> nnx.Param:
    value = init(rngs.params(), shape, dtype) if rngs is not None else init(None, shape, dtype)
    return nnx.Param(value, axes=tuple(axes))


def _ones(_, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(_, shape, dtype):
    return jnp.zeros(shape, dtype)


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


class Block(nnx.Module):
    """One decoder layer; created with a leading ``layers`` axis of size ``stack``."""

    def __init__(self, cfg: LlamaConfig, stack: int, rngs: nnx.Rngs | None):
        e, f, h, kvh, d = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
        )
        L, dt = (stack,), cfg.weight_dtype
        w = nnx.initializers.normal(cfg.initializer_range)
        self.attn_norm = _param(rngs, _ones, L + (e,), ("layers", "norm"), dt)
        self.q = _param(rngs, w, L + (e, h, d), ("layers", "embed", "heads", "head_dim"), dt)
        self.k = _param(rngs, w, L + (e, kvh, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.v = _param(rngs, w, L + (e, kvh, d), ("layers", "embed", "kv_heads", "head_dim"), dt)
        self.o = _param(rngs, w, L + (h, d, e), ("layers", "heads", "head_dim", "embed"), dt)
        if cfg.qkv_bias:  # zeros, as HF initialises these Linear biases
            self.q_bias = _param(rngs, _zeros, L + (h, d), ("layers", "heads", "head_dim"), dt)
            self.k_bias = _param(rngs, _zeros, L + (kvh, d), ("layers", "kv_heads", "head_dim"), dt)
            self.v_bias = _param(rngs, _zeros, L + (kvh, d), ("layers", "kv_heads", "head_dim"), dt)
        self.mlp_norm = _param(rngs, _ones, L + (e,), ("layers", "norm"), dt)
        self.gate = _param(rngs, w, L + (e, f), ("layers", "embed", "mlp"), dt)
        self.up = _param(rngs, w, L + (e, f), ("layers", "embed", "mlp"), dt)
        self.down = _param(rngs, w, L + (f, e), ("layers", "mlp", "embed"), dt)


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


def block_decode(
    cfg: LlamaConfig,
    p: dict[str, jax.Array],
    x: jax.Array,
    positions: jax.Array,
    allowed: jax.Array,
    cache_k: jax.Array,
    cache_v: jax.Array,
    index,
):
    """One decoder layer with its own cache buffers cache_k, cache_v [B, KVH, S, D]: the T new
    keys and values are written at slot ``index`` (in place under jit), then the queries attend
    over the S slots (allowed [B, T, S]). Returns (x, cache_k, cache_v)."""
    q, k, v = _qkv(cfg, p, x, positions)
    at = (0, 0, index, 0)
    cache_k = jax.lax.dynamic_update_slice(
        cache_k, k.transpose(0, 2, 1, 3).astype(cache_k.dtype), at
    )
    cache_v = jax.lax.dynamic_update_slice(
        cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), at
    )
    cache_k, cache_v = constrain(cache_k, CACHE_AXES), constrain(cache_v, CACHE_AXES)
    attn = cache_attention(cfg, q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), allowed)
    return _rest(cfg, p, x, attn), cache_k, cache_v


# --------------------------------------------------------------------------------------------
# Decoding


def decode_forward(
    cfg: LlamaConfig,
    w: dict[str, Any],
    input_ids: jax.Array,
    attention_mask: jax.Array,
    cache: KVCache,
) -> tuple[jax.Array, KVCache]:
    """Final-norm hidden states [B, T, E] of T new tokens per row and the updated cache, on the
    decoding weights ``w`` (``Llama.decode_weights``). The layers run as a Python loop over
    their own weight and cache buffers (no layer scan: a scan's per-layer slice of stacked
    weights or caches is a copy every step)."""
    t = input_ids.shape[1]
    mask = attention_mask.astype(jnp.int32)
    positions = positions_from_mask(mask, cache.next_pos)
    index = cache.index
    key_mask = jax.lax.dynamic_update_slice_in_dim(cache.key_mask, mask, index, axis=1)
    causal = jnp.arange(key_mask.shape[1])[None, :] <= (index + jnp.arange(t))[:, None]  # [T, S]
    allowed = causal[None] & (key_mask[:, None, :] > 0)  # [B, T, S]
    x = jnp.take(w["embed"], input_ids, axis=0).astype(cfg.compute_dtype)
    x = constrain(x, ("batch", "length", "act_embed"))
    ks, vs = list(cache.k), list(cache.v)
    for i, p in enumerate(w["layers"]):
        x, ks[i], vs[i] = block_decode(cfg, p, x, positions, allowed, ks[i], vs[i], index)
    x = rms_norm(x, w["final_norm"], cfg.rms_norm_eps)
    new_cache = KVCache(
        k=tuple(ks),
        v=tuple(vs),
        key_mask=key_mask,
        next_pos=cache.next_pos + mask.sum(-1),
        index=index + t,
    )
    return x, new_cache


def decode_logits(cfg: LlamaConfig, w: dict[str, Any], x: jax.Array) -> jax.Array:
    """LM logits [B, T, V] (fp32) of hidden states x [B, T, E] on the decoding weights."""
    if cfg.tie_word_embeddings:
        logits = jnp.einsum("bte,ve->btv", x, w["head"])
    else:
        logits = jnp.einsum("bte,ev->btv", x, w["head"])
    return constrain(logits, ("batch", "length", "act_vocab")).astype(jnp.float32)


class _Part(NamedTuple):
    """An array of ``Llama.decode_weights`` and its logical axes."""

    array: Any
    axes: tuple


class Llama(nnx.Module):
    """Llama decoder + one head: ``lm`` ([B,T,V] logits), ``reward`` ([B]), ``value`` ([B,T])."""

    def __init__(self, cfg: LlamaConfig, head: str = "lm", *, rngs: nnx.Rngs | None):
        if head not in HEADS:
            raise ValueError(f"head={head!r}; expected one of {HEADS}.")
        self.cfg = cfg
        self.head = head
        e, dt = cfg.hidden_size, cfg.weight_dtype
        w = nnx.initializers.normal(cfg.initializer_range)
        self.embed = _param(rngs, w, (cfg.vocab_size, e), ("vocab", "embed"), dt)
        self.layers = Block(cfg, cfg.num_layers, rngs)
        self.final_norm = _param(rngs, _ones, (e,), ("norm",), dt)
        if head == "lm" and not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, w, (e, cfg.vocab_size), ("embed", "vocab"), dt)
        elif head in ("reward", "value"):
            # Bias-free score, as LlamaForSequenceClassification's ``score``.
            self.score = _param(rngs, w, (e, 1), ("embed", "head_out"), dt)
            if head == "value":
                self.score_bias = _param(rngs, _zeros, (1,), ("head_out",), dt)

    # ---------------------------------------------------------------- backbone

    def hidden_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        packing: Packing | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states [B, T, E] and the updated cache (None without a cache).
        ``packing``: packed rows (no cache; the attention mask is then ignored). With a cache
        this is ``decode_forward`` on ``decode_weights()`` (the sampler prepares those once per
        generation instead)."""
        cfg = self.cfg
        b, t = input_ids.shape
        mask = (
            jnp.ones((b, t), jnp.int32)
            if attention_mask is None
            else attention_mask.astype(jnp.int32)
        )
        if cache is not None:
            if packing is not None:
                raise ValueError("packed rows are not decoded with a KV cache.")
            return decode_forward(cfg, self.decode_weights(), input_ids, mask, cache)
        if packing is not None:
            positions, allowed = packing.positions, packing.allowed()
        else:
            positions = positions_from_mask(mask)
            causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]  # [T, S]
            allowed = causal[None] & (mask[:, None, :] > 0)  # [B, T, S]
        # The lookup first, then the cast: only the B x T rows are converted.
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(cfg.compute_dtype)
        x = constrain(x, ("batch", "length", "act_embed"))

        layer_params = {k: v[...] for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)}

        def layer(x, p):
            return block_apply(cfg, p, x, positions, allowed)

        policy = REMAT_POLICIES[cfg.remat]
        if cfg.remat != "none":
            layer = jax.checkpoint(layer, policy=policy)

        if cfg.scan_layers:
            x, _ = jax.lax.scan(
                lambda x, p: (layer(x, p), None),
                x,
                layer_params,
                unroll=max(1, int(cfg.scan_unroll)),
            )
        else:
            for i in range(cfg.num_layers):
                x = layer(x, {k: v[i] for k, v in layer_params.items()})
        x = rms_norm(x, self.final_norm[...], cfg.rms_norm_eps)
        return x, None

    def decode_weights(self) -> dict[str, Any]:
        """The weights a decode step reads (``decode_forward``, ``decode_logits``), made once per
        generation: every layer's weights as arrays of their own (the stacked ``layers`` axis
        split) in the compute dtype, so that the step's matmuls read them in place; from the
        stacked weights each layer's slice is copied (and, stored in fp32 under a bf16 compute
        dtype, cast) at every step. Costs one copy of the layers' weights in the compute dtype
        while it lives.

        {"embed": [V, E] as stored (a step looks up B rows, then casts them), "layers": one
        {name: array} per layer, "final_norm": [E], "head": the LM head in the compute dtype
        ([E, V]; tied: the embedding, [V, E]; None for a reward or value head)}; each array is
        constrained to its logical axes (``decode_weight_axes``)."""
        return jax.tree.map(
            lambda part: constrain(part.array, part.axes),
            self._decode_parts(),
            is_leaf=lambda x: isinstance(x, _Part),
        )

    def decode_weight_shardings(self, mesh) -> dict[str, Any]:
        """The shardings of ``decode_weights()`` on ``mesh`` (the same tree; each array by its
        logical axes), e.g. for a jitted decode step that takes the decoding weights as inputs."""
        return jax.tree.map(
            lambda part: named_sharding(mesh, part.axes),
            self._decode_parts(arrays=False),
            is_leaf=lambda x: isinstance(x, _Part),
        )

    def _decode_parts(self, arrays: bool = True) -> dict[str, Any]:
        """The tree of ``decode_weights`` with each leaf an (array, axes) ``_Part``; without
        ``arrays`` the arrays are None (the axes of an abstract model)."""
        cfg, dt = self.cfg, self.cfg.compute_dtype

        def part(var, index=None, cast=True):
            axes = var.get_metadata()["axes"]
            if index is not None:
                axes = axes[1:]
            if not arrays:
                return _Part(None, axes)
            a = var[...] if index is None else var[...][index]
            return _Part(a.astype(dt) if cast else a, axes)

        stacked = [(k, v) for k, v in vars(self.layers).items() if isinstance(v, nnx.Param)]
        layers = tuple({k: part(v, i) for k, v in stacked} for i in range(cfg.num_layers))
        head = None
        if self.head == "lm":
            head = part(self.embed if cfg.tie_word_embeddings else self.lm_head)
        return {
            "embed": part(self.embed, cast=False),
            "layers": layers,
            "final_norm": part(self.final_norm),
            "head": head,
        }

    # ---------------------------------------------------------------- heads

    def head_output(
        self, x: jax.Array, attention_mask: jax.Array | None, read_at: jax.Array | None = None
    ) -> jax.Array:
        """The head on hidden states x [B, T, E]. ``read_at`` [B, j] (reward head, packed rows):
        rewards [B, j] read at those indices instead of one at each row's last real token."""
        dt = self.cfg.compute_dtype
        if self.head == "reward" and read_at is not None:
            pooled = jnp.take_along_axis(x, read_at[:, :, None], axis=1)  # [B, j, E]
            return (pooled @ self.score[...].astype(dt))[..., 0].astype(jnp.float32)
        if self.head == "lm":
            if self.cfg.tie_word_embeddings:
                logits = jnp.einsum("bte,ve->btv", x, self.embed[...].astype(dt))
            else:
                logits = jnp.einsum("bte,ev->btv", x, self.lm_head[...].astype(dt))
            return constrain(logits, ("batch", "length", "act_vocab")).astype(jnp.float32)
        if self.head == "reward":
            b, t, _ = x.shape
            if attention_mask is None:
                last = jnp.full((b,), t - 1)
            else:  # last non-pad token, for any padding side (as HF's sequence classifier).
                last = jnp.argmax(jnp.arange(t)[None, :] * (attention_mask > 0), axis=-1)
            pooled = jnp.take_along_axis(x, last[:, None, None], axis=1)[:, 0]
            return (pooled @ self.score[...].astype(dt))[:, 0].astype(jnp.float32)
        values = (x @ self.score[...].astype(dt))[..., 0] + self.score_bias[...].astype(dt)[0]
        return values.astype(jnp.float32)

    def forward(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        cache: KVCache | None = None,
        packing: Packing | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Head output and the updated KV cache (cache in, cache out)."""
        x, cache = self.hidden_states(input_ids, attention_mask, cache, packing)
        read_at = None if packing is None else packing.read_at
        return self.head_output(x, attention_mask, read_at), cache

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        packing: Packing | None = None,
    ) -> jax.Array:
        return self.forward(input_ids, attention_mask, packing=packing)[0]


def param_axes(model: nnx.Module) -> dict[str, tuple]:
    """{'layers.q': ('layers','embed','heads','head_dim'), ...} for every Param."""
    _, state = nnx.split(model, nnx.Param)
    out = {}
    for path, var in nnx.to_flat_state(state):
        out[".".join(map(str, path))] = var.get_metadata()["axes"]
    return out


def count_params(model: nnx.Module) -> int:
    _, state = nnx.split(model, nnx.Param)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


def create(cfg: LlamaConfig, head: str = "lm", *, seed: int = 0, mesh=None) -> Llama:
    """A randomly initialised model; with a mesh, each weight is created directly in its sharding."""
    if mesh is None:
        return Llama(cfg, head, rngs=nnx.Rngs(seed))
    abstract = nnx.eval_shape(lambda: Llama(cfg, head, rngs=nnx.Rngs(seed)))
    graphdef, abs_state = nnx.split(abstract)
    shardings = state_shardings(mesh, abs_state)

    def init():
        return nnx.split(Llama(cfg, head, rngs=nnx.Rngs(seed)))[1]

    return nnx.merge(graphdef, jax.jit(init, out_shardings=shardings)())
