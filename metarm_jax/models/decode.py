"""Incremental decoding with a KV cache on the decoding weights (``Llama.decode_weights``, a plain
dict, so nothing here needs the module): the cache (``KVCache``, ``init_cache``, ``CACHE_AXES``),
one decoder layer over its cache buffers (``block_decode``), the step's hidden states
(``decode_forward``) and LM logits (``decode_logits``). ``metarm_jax.models.llama`` re-exports
every public name."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from metarm_jax.models.layers import _qkv, _rest, cache_attention, positions_from_mask, rms_norm
from metarm_jax.models.llama_config import LlamaConfig
from metarm_jax.sharding import constrain


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
