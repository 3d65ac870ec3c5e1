"""The Llama model's configuration: ``LlamaConfig`` (the checkpoint's shape and the execution
policy), the named presets (``PRESETS``, ``preset``) and the tables of choices a config is checked
against (``HEADS``, ``REMAT_POLICIES``, ``ATTENTIONS``, ``DTYPES``, ``FAMILIES``, ``ROPE_TYPES``).
Imports nothing of the model; ``metarm_jax.models.llama`` re-exports every name."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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
