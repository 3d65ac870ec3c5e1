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

The code is split by job: ``llama_config`` (``LlamaConfig``, the presets and the tables of
choices), ``layers`` (the layers as pure functions), ``decode`` (the KV cache and the decode step)
and this module (the ``Llama`` module, ``create``, ``param_axes``, ``count_params``), which
re-exports the public names of the other three, so ``llama.X`` reaches all of them.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from metarm_jax.core.packed import Packing
from metarm_jax.models.decode import (
    CACHE_AXES,
    KVCache,
    block_decode,
    decode_forward,
    decode_logits,
    init_cache,
)
from metarm_jax.models.layers import (
    attention,
    attention_impl,
    block_apply,
    cache_attention,
    positions_from_mask,
    rms_norm,
    rope,
    rope_inv_freq,
)
from metarm_jax.models.llama_config import (
    ATTENTIONS,
    DTYPES,
    FAMILIES,
    HEADS,
    PRESETS,
    REMAT_POLICIES,
    ROPE_TYPES,
    LlamaConfig,
    preset,
)
from metarm_jax.sharding import constrain, named_sharding, state_shardings

# The names of llama_config, layers and decode stay reachable as ``llama.X``.
__all__ = [
    "ATTENTIONS",
    "CACHE_AXES",
    "DTYPES",
    "FAMILIES",
    "HEADS",
    "PRESETS",
    "REMAT_POLICIES",
    "ROPE_TYPES",
    "Block",
    "KVCache",
    "Llama",
    "LlamaConfig",
    "attention",
    "attention_impl",
    "block_apply",
    "block_decode",
    "cache_attention",
    "count_params",
    "create",
    "decode_forward",
    "decode_logits",
    "init_cache",
    "param_axes",
    "positions_from_mask",
    "preset",
    "rms_norm",
    "rope",
    "rope_inv_freq",
]


def _param(rngs: nnx.Rngs | None, init, shape, axes, dtype) -> nnx.Param:
    value = init(rngs.params(), shape, dtype) if rngs is not None else init(None, shape, dtype)
    return nnx.Param(value, axes=tuple(axes))


def _ones(_, shape, dtype):
    return jnp.ones(shape, dtype)


def _zeros(_, shape, dtype):
    return jnp.zeros(shape, dtype)


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
