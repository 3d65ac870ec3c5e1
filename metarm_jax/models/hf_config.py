"""The config half of HF checkpoints in and out (``metarm_jax/models/hf.py`` is the weights
half): an HF ``config.json`` -> ``llama_config.LlamaConfig`` (``config_from_hf``: the Llama family
and Qwen2; anything else refused in one line, ``SUPPORTED``) and back (``config_to_hf``, through
``transformers``' own config classes of the family)."""

from __future__ import annotations

from metarm_jax.models import llama_config
from metarm_jax.runtime.errors import UserError

# The checkpoint families this module reads and writes: HF model_type -> class per head.
ARCHITECTURES = {
    "llama": {
        "lm": "LlamaForCausalLM",
        "reward": "LlamaForSequenceClassification",
        "value": "LlamaForTokenClassification",
    },
    "qwen2": {
        "lm": "Qwen2ForCausalLM",
        "reward": "Qwen2ForSequenceClassification",
        "value": "Qwen2ForTokenClassification",
    },
}
SUPPORTED = (
    "supported: model_type 'llama' (Llama-2, Llama-3/3.1/3.2 and Llama-architecture models such "
    "as TinyLlama or SmolLM2; rope_type 'default' or 'llama3') and 'qwen2' (Qwen2, Qwen2.5; "
    "without sliding-window attention)"
)
SCORING_KEY = "metarm_scoring"  # config.json key of an RM export's scoring convention
_HEAD_PARAMS = ("score", "score_bias")  # may be freshly initialised when absent


class CheckpointError(UserError):
    """A checkpoint that does not match what the model expects."""


# ---------------------------------------------------------------------------------------------
# Config


def config_from_hf(
    hf_cfg: dict, *, source: str = "config.json", **policy
) -> llama_config.LlamaConfig:
    """LlamaConfig from an HF ``config.json`` dict; ``policy`` sets dtype, param_dtype, remat,
    attention, scan_layers.

    Reads the families of ``ARCHITECTURES``; anything the model would compute differently from
    the checkpoint (another model_type, rotary scaling, bias, activation or attention window) is
    a CheckpointError naming the key, never a silent approximation."""
    family = hf_cfg.get("model_type", "llama")
    if family not in ARCHITECTURES:
        raise CheckpointError(f"{source}: model_type={family!r} is not supported; {SUPPORTED}.")
    act = hf_cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(
            f"{source}: hidden_act={act!r} is not supported (the {family} MLP here is SwiGLU, "
            "'silu')."
        )
    if family == "llama":
        for flag in ("attention_bias", "mlp_bias"):
            if hf_cfg.get(flag):
                raise CheckpointError(
                    f"{source}: {flag}=true is not supported for model_type 'llama' (only "
                    "Qwen2's q/k/v biases are); " + SUPPORTED + "."
                )
    else:  # qwen2: q/k/v biases; sliding-window attention (off by default) is refused
        layer_types = hf_cfg.get("layer_types") or []
        if hf_cfg.get("use_sliding_window") or "sliding_attention" in layer_types:
            raise CheckpointError(
                f"{source}: use_sliding_window=true (sliding-window attention in layers from "
                f"max_window_layers={hf_cfg.get('max_window_layers')}) is not supported; every "
                "layer here attends to the whole sequence. Set use_sliding_window=false only "
                "if the model was trained that way (Qwen2/2.5 ship with it off)."
            )
    rope = _rope_config(hf_cfg, source)
    try:
        cfg = llama_config.LlamaConfig(
            vocab_size=hf_cfg["vocab_size"],
            hidden_size=hf_cfg["hidden_size"],
            intermediate_size=hf_cfg["intermediate_size"],
            num_layers=hf_cfg["num_hidden_layers"],
            num_heads=hf_cfg["num_attention_heads"],
            num_kv_heads=hf_cfg.get("num_key_value_heads") or hf_cfg["num_attention_heads"],
            head_dim=hf_cfg.get("head_dim") or 0,
            rms_norm_eps=hf_cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(hf_cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=hf_cfg.get("max_position_embeddings", 4096),
            initializer_range=hf_cfg.get("initializer_range", 0.02),
            pad_token_id=hf_cfg.get("pad_token_id"),
            # `x or 1` would turn a real id 0 into 1: only a missing or null id takes the default.
            bos_token_id=_default(_first(hf_cfg.get("bos_token_id")), 1),
            eos_token_id=_default(_first(hf_cfg.get("eos_token_id")), 2),
            family=family,
            qkv_bias=family == "qwen2",
            **rope,
        )
    except KeyError as e:
        raise CheckpointError(
            f"{source}: missing key {e.args[0]!r}, needed to build a {family} config."
        ) from None
    return cfg.replace(**{k: v for k, v in policy.items() if v is not None})


_LLAMA3_KEYS = {
    "factor": "rope_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}


def _rope_config(hf_cfg: dict, source: str) -> dict:
    """LlamaConfig's rope fields from ``rope_parameters`` (transformers 5) or the older
    ``rope_scaling`` + top-level ``rope_theta``."""
    rope = dict(hf_cfg.get("rope_scaling") or {})
    rope.update(hf_cfg.get("rope_parameters") or {})
    rope_type = rope.get("rope_type", rope.get("type")) or "default"
    theta = float(rope.get("rope_theta", hf_cfg.get("rope_theta", 10000.0)))
    partial = rope.get("partial_rotary_factor", hf_cfg.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
        raise CheckpointError(
            f"{source}: partial_rotary_factor={partial} is not supported (rotary on the whole "
            "head only)."
        )
    if rope_type == "default":
        return {"rope_theta": theta}
    if rope_type != "llama3":
        raise CheckpointError(
            f"{source}: rope_type={rope_type!r} is not supported (only 'default' and 'llama3', "
            "the scaling of Llama-3.1/3.2); " + SUPPORTED + "."
        )
    missing = [k for k in _LLAMA3_KEYS if rope.get(k) is None]
    if missing:
        raise CheckpointError(
            f"{source}: rope_type 'llama3' needs {missing[0]!r} in rope_scaling/rope_parameters."
        )
    out = {ours: float(rope[k]) for k, ours in _LLAMA3_KEYS.items()}
    out["rope_original_max_position_embeddings"] = int(rope["original_max_position_embeddings"])
    return {"rope_theta": theta, "rope_type": "llama3", **out}


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x


def _default(x, default):
    return default if x is None else x


def config_to_hf(cfg: llama_config.LlamaConfig, head: str = "lm"):
    """The ``transformers`` config of this model's family (``LlamaConfig`` or ``Qwen2Config``,
    built by transformers itself), with the architecture of ``head``."""
    import transformers

    rope = {"rope_type": cfg.rope_type, "rope_theta": cfg.rope_theta}
    if cfg.rope_type == "llama3":
        rope.update({k: getattr(cfg, ours) for k, ours in _LLAMA3_KEYS.items()})
    kw = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        rope_parameters=rope,
        architectures=[ARCHITECTURES[cfg.family][head]],
        dtype=cfg.param_dtype,
    )
    if head != "lm":
        kw["num_labels"] = 1
    if cfg.family == "qwen2":
        if not cfg.qkv_bias:
            raise CheckpointError("a qwen2 export needs qkv_bias=True (Qwen2 has q/k/v biases).")
        kw["use_sliding_window"] = False
        return transformers.Qwen2Config(**kw)
    if cfg.qkv_bias:
        raise CheckpointError(
            "a Llama export cannot hold q/k/v biases without an o_proj bias; export the model "
            "with family='qwen2'."
        )
    return transformers.LlamaConfig(**kw)
