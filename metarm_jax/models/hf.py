"""HF transformers checkpoints in and out: safetensors ``*ForCausalLM``,
``*ForSequenceClassification`` (num_labels=1, the RM) and ``*ForTokenClassification`` (critic) of
the Llama family (Llama-2, Llama-3/3.1/3.2) and the Qwen2 family (Qwen2, Qwen2.5); any other
model_type, rotary scaling or attention variant is refused with one line naming the key
(``SUPPORTED``). An export is written in the family it was loaded from.

Loading never materialises the whole model on one host or device: every weight is built with
``jax.make_array_from_callback`` in its target ``NamedSharding``, and each device shard is read
from the (memory-mapped) safetensors file with a slice, so a host holds at most its own shards.

    from metarm_jax.models import hf
    lm = hf.load_hf(path, head="lm")          # LlamaForCausalLM weights
    logits = lm(input_ids, attention_mask=m)  # [B, T, vocab]
    rm = hf.load_hf(path, head="reward")      # *ForSequenceClassification weights
    rewards = rm(input_ids, attention_mask=m) # [B], at the last non-pad token
    hf.save_hf(model, out_dir)                # loadable by transformers.from_pretrained
    hf.save_hf(rm, out_dir, tokenizer=tok, scoring=convention)  # an RM for other trainers
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, SingleDeviceSharding

from metarm_jax.models import llama, llama_config
from metarm_jax.models.hf_config import (  # the config half (re-exported: hf.config_from_hf, ...)
    _HEAD_PARAMS,
    ARCHITECTURES,
    SCORING_KEY,
    CheckpointError,
    config_from_hf,
    config_to_hf,
)
from metarm_jax.runtime import hosts
from metarm_jax.sharding import state_shardings, to_host

# ---------------------------------------------------------------------------------------------
# Weight mapping: our parameter  <->  HF tensor


@dataclass(frozen=True)
class _Map:
    hf_name: str  # may contain {i} (layer index) and {prefix}
    kind: str  # how our layout relates to HF's, see _read_region / _to_hf
    stacked: bool = False


def weight_map(cfg: llama_config.LlamaConfig, head: str) -> dict[str, _Map]:
    m = {
        "embed": _Map("{prefix}embed_tokens.weight", "same"),
        "final_norm": _Map("{prefix}norm.weight", "same"),
        "layers.attn_norm": _Map("{prefix}layers.{i}.input_layernorm.weight", "same", True),
        "layers.mlp_norm": _Map("{prefix}layers.{i}.post_attention_layernorm.weight", "same", True),
        "layers.q": _Map("{prefix}layers.{i}.self_attn.q_proj.weight", "split_out", True),
        "layers.k": _Map("{prefix}layers.{i}.self_attn.k_proj.weight", "split_out", True),
        "layers.v": _Map("{prefix}layers.{i}.self_attn.v_proj.weight", "split_out", True),
        "layers.o": _Map("{prefix}layers.{i}.self_attn.o_proj.weight", "split_in", True),
        "layers.gate": _Map("{prefix}layers.{i}.mlp.gate_proj.weight", "T", True),
        "layers.up": _Map("{prefix}layers.{i}.mlp.up_proj.weight", "T", True),
        "layers.down": _Map("{prefix}layers.{i}.mlp.down_proj.weight", "T", True),
    }
    if cfg.qkv_bias:
        for n in "qkv":
            m[f"layers.{n}_bias"] = _Map(
                f"{{prefix}}layers.{{i}}.self_attn.{n}_proj.bias", "heads", True
            )
    if head == "lm" and not cfg.tie_word_embeddings:
        m["lm_head"] = _Map("lm_head.weight", "T")
    elif head in ("reward", "value"):
        m["score"] = _Map("score.weight", "T")
        if head == "value":
            m["score_bias"] = _Map("score.bias", "same")
    return m


def _norm_slices(index: tuple, shape: tuple) -> list[slice]:
    out = [slice(*s.indices(n)) for s, n in zip(index, shape)]
    return out + [slice(0, n) for n in shape[len(out) :]]


def _hf_shape(kind: str, our_shape: tuple) -> tuple:
    if kind == "same":
        return our_shape
    if kind == "T":
        return our_shape[::-1]
    if kind == "split_out":  # ours [E, H, D]  <-  HF [H*D, E]
        e, h, d = our_shape
        return (h * d, e)
    if kind == "split_in":  # ours [H, D, E]  <-  HF [E, H*D]
        h, d, e = our_shape
        return (e, h * d)
    if kind == "heads":  # ours [H, D]  <-  HF [H*D] (a q/k/v bias)
        h, d = our_shape
        return (h * d,)
    raise AssertionError(kind)


def _read_region(sl, kind: str, our_shape: tuple, region: list[slice]) -> np.ndarray:
    """Read our-layout ``region`` of one (per-layer) tensor from a safetensors slice object."""
    if kind == "same":
        return np.asarray(sl[tuple(region)])
    if kind == "T":
        return np.asarray(sl[region[1], region[0]]).T
    if kind == "split_out":
        se, sh, sd = region
        d = our_shape[2]
        rows = np.asarray(sl[sh.start * d : sh.stop * d, se])  # [h*D, e]
        return rows.reshape(sh.stop - sh.start, d, -1)[:, sd].transpose(2, 0, 1)
    if kind == "split_in":
        sh, sd, se = region
        d = our_shape[1]
        cols = np.asarray(sl[se, sh.start * d : sh.stop * d])  # [e, h*D]
        return cols.reshape(cols.shape[0], sh.stop - sh.start, d)[:, :, sd].transpose(1, 2, 0)
    if kind == "heads":
        sh, sd = region
        d = our_shape[1]
        return np.asarray(sl[sh.start * d : sh.stop * d]).reshape(-1, d)[:, sd]
    raise AssertionError(kind)


def _to_hf(kind: str, ours: np.ndarray) -> np.ndarray:
    if kind == "same":
        return ours
    if kind == "T":
        return ours.T
    if kind == "split_out":
        e, h, d = ours.shape
        return ours.reshape(e, h * d).T
    if kind == "split_in":
        h, d, e = ours.shape
        return ours.reshape(h * d, e).T
    if kind == "heads":
        return ours.reshape(-1)
    raise AssertionError(kind)


# ---------------------------------------------------------------------------------------------
# Reading


class _SafetensorsDir:
    """Tensor name -> lazily opened safetensors file (single file or sharded index)."""

    def __init__(self, path: str):
        from safetensors import safe_open

        self._open = safe_open
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                wm = json.load(f).get("weight_map")
            if not isinstance(wm, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object.")
            self.files = {k: os.path.join(path, v) for k, v in wm.items()}
        elif os.path.exists(single):
            with safe_open(single, "numpy") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            bins = [n for n in os.listdir(path) if n.endswith((".bin", ".pt", ".pth"))]
            hint = (
                (
                    f" Found {bins}: pickle checkpoints are not loaded (unsafe); convert them with "
                    "transformers' save_pretrained(safe_serialization=True)."
                )
                if bins
                else ""
            )
            raise CheckpointError(
                f"{path}: no model.safetensors or model.safetensors.index.json." + hint
            )
        self._handles: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def slice(self, name: str):
        fn = self.files[name]
        if fn not in self._handles:
            if not os.path.exists(fn):
                raise CheckpointError(f"{fn}: listed in the index for {name!r} but missing.")
            self._handles[fn] = self._open(fn, "numpy")
        return self._handles[fn].get_slice(name)


def _prefix(st: _SafetensorsDir) -> str:
    for p in ("model.", ""):
        if f"{p}embed_tokens.weight" in st:
            return p
    raise CheckpointError(
        "checkpoint has no 'model.embed_tokens.weight' (nor 'embed_tokens.weight'):"
        " is this a Llama checkpoint?"
    )


def read_config(path: str) -> dict:
    if not os.path.isdir(path):
        raise CheckpointError(
            f"checkpoint directory {path!r} does not exist; pass a local HF model "
            "directory (config.json + *.safetensors)."
        )
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(
            f"{cfg_path}: not found; an HF checkpoint directory needs config.json."
        )
    with open(cfg_path) as f:
        return json.load(f)


def load_hf(
    path: str,
    head: str = "lm",
    *,
    mesh=None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    remat: str | None = None,
    attention: str | None = None,
    scan_layers: bool | None = None,
    init_missing_head: bool = True,
    seed: int = 0,
) -> llama.Llama:
    """Load an HF Llama checkpoint directory into a (sharded) NNX model with the given head.

    A ``reward``/``value`` head missing from the checkpoint (e.g. starting an RM from an SFT
    ``LlamaForCausalLM``) is initialised like HF does (normal, std=initializer_range) when
    ``init_missing_head``; any other missing or misshapen tensor is an error naming it.
    """
    hf_cfg = read_config(path)
    cfg = config_from_hf(
        hf_cfg,
        source=os.path.join(path, "config.json"),
        dtype=dtype,
        param_dtype=param_dtype,
        remat=remat,
        attention=attention,
        scan_layers=scan_layers,
    )
    st = _SafetensorsDir(path)
    prefix = _prefix(st)

    abstract = nnx.eval_shape(lambda: llama.Llama(cfg, head, rngs=nnx.Rngs(seed)))
    graphdef, abs_state = nnx.split(abstract)
    if mesh is None:
        dev = SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(
            lambda _: dev, abs_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )
    else:
        shardings = state_shardings(mesh, abs_state)
    wmap = weight_map(cfg, head)
    flat_shard = dict(nnx.to_flat_state(shardings))
    missing_head = []
    out = {}
    for path_t, var in nnx.to_flat_state(abs_state):
        name = ".".join(map(str, path_t))
        shape, want = var.get_value().shape, cfg.weight_dtype
        sharding: NamedSharding = flat_shard[path_t]
        m = wmap[name]
        layer_names = (
            [m.hf_name.format(prefix=prefix, i=i) for i in range(cfg.num_layers)]
            if m.stacked
            else [m.hf_name.format(prefix=prefix)]
        )
        per_layer_shape = shape[1:] if m.stacked else shape
        absent = [n for n in layer_names if n not in st]
        if absent:
            if name in _HEAD_PARAMS and init_missing_head and len(absent) == len(layer_names):
                missing_head.append(layer_names[0])
                value = (
                    np.zeros(shape)
                    if name == "score_bias"
                    else cfg.initializer_range * np.random.default_rng(seed).standard_normal(shape)
                )
                out[path_t] = jax.device_put(value.astype(want), sharding)
                continue
            raise CheckpointError(
                f"{path}: tensor {absent[0]!r} is missing (needed for "
                f"parameter {name!r} of a {ARCHITECTURES[cfg.family][head]})."
            )
        expected = _hf_shape(m.kind, per_layer_shape)
        for n in layer_names:
            got = tuple(st.slice(n).get_shape())
            if got != expected:
                raise CheckpointError(
                    f"{path}: tensor {n!r} has shape {got}, expected {expected} from config.json."
                )

        def callback(index, m=m, names=layer_names, pls=per_layer_shape, shape=shape, want=want):
            region = _norm_slices(index, shape)
            if not m.stacked:
                return _read_region(st.slice(names[0]), m.kind, pls, region).astype(want)
            parts = [
                _read_region(st.slice(names[i]), m.kind, pls, region[1:])
                for i in range(region[0].start, region[0].stop)
            ]
            return np.stack(parts).astype(want)

        out[path_t] = jax.make_array_from_callback(shape, sharding, callback)
    if missing_head:
        how = {
            "score.weight": f"normal(std={cfg.initializer_range}), seed {seed}",
            "score.bias": "zeros",
        }
        print(
            f"[metarm_jax] {path}: not in the checkpoint, initialised: "
            + "; ".join(f"{n} with {how.get(n, 'defaults')}" for n in missing_head)
        )
    state = abs_state
    for path_t, var in nnx.to_flat_state(state):
        var.set_value(out[path_t])
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# Writing


def _host_value(x: jax.Array) -> np.ndarray:
    """The full value on every process (gathers shards across hosts when needed)."""
    return to_host(x)


def save_hf(
    model: llama.Llama,
    out_dir: str,
    *,
    dtype: str | None = None,
    tokenizer=None,
    scoring: dict | None = None,
    max_shard_bytes: int = 5 * 2**30,
) -> None:
    """Write ``model`` as an HF checkpoint directory (config.json + safetensors, sharded with an
    index when larger than ``max_shard_bytes``). Only process 0 writes; all must call it, and all
    return once the directory is complete (a barrier), so any process may load it next.

    tokenizer: saved alongside; its pad id becomes config.json's ``pad_token_id`` (HF's sequence
      classifier finds the last token by it). scoring: an RM's scoring convention (how a text
      must be formatted and tokenized, where the reward is read), written into config.json under
      ``SCORING_KEY`` and, with the usage, into a README.md model card."""
    _save_hf(
        model,
        out_dir,
        dtype=dtype,
        tokenizer=tokenizer,
        scoring=scoring,
        max_shard_bytes=max_shard_bytes,
    )
    hosts.barrier(f"save_hf:{os.path.abspath(out_dir)}")


def _save_hf(model, out_dir, *, dtype, tokenizer, scoring, max_shard_bytes) -> None:
    from safetensors.numpy import save_file

    cfg, head = model.cfg, model.head
    wmap = weight_map(cfg, head)
    np_dtype = np.dtype(llama_config.DTYPES[dtype or cfg.param_dtype])
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(out_dir, exist_ok=True)
    _, state = nnx.split(model, nnx.Param)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    prefix = "model."
    for path_t, var in nnx.to_flat_state(state):
        name = ".".join(map(str, path_t))
        m = wmap[name]
        value = _host_value(var.get_value())
        if not writer:
            continue
        items = (
            [(m.hf_name.format(prefix=prefix, i=i), value[i]) for i in range(cfg.num_layers)]
            if m.stacked
            else [(m.hf_name.format(prefix=prefix), value)]
        )
        for hf_name, v in items:
            t = np.ascontiguousarray(_to_hf(m.kind, v).astype(np_dtype))
            if size and size + t.nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][hf_name] = t
            size += t.nbytes
    if not writer:
        return
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out_dir, "model.safetensors"), metadata=meta)
    else:
        weight_map_json, total = {}, 0
        for i, shard in enumerate(shards):
            fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(out_dir, fn), metadata=meta)
            for k, v in shard.items():
                weight_map_json[k] = fn
                total += v.nbytes
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump(
                {"metadata": {"total_size": total}, "weight_map": weight_map_json}, f, indent=2
            )
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        cfg = cfg.replace(pad_token_id=int(tokenizer.pad_token_id))
    hf_cfg = config_to_hf(
        cfg.replace(
            param_dtype=np_dtype.name if np_dtype.name in llama_config.DTYPES else cfg.param_dtype
        ),
        head,
    )
    if scoring is not None:
        setattr(hf_cfg, SCORING_KEY, scoring)
        # OpenRLHF's reward normalisation (its --reward.normalize_enable) reads these two keys.
        for key in ("mean", "std"):
            if scoring.get(f"validation_reward_{key}") is not None:
                setattr(hf_cfg, key, float(scoring[f"validation_reward_{key}"]))
    hf_cfg.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if scoring is not None:
        with open(os.path.join(out_dir, "README.md"), "w") as f:
            f.write(reward_model_card(scoring, ARCHITECTURES[cfg.family][head]))


def reward_model_card(scoring: dict, architecture: str) -> str:
    """A short README.md for an RM export: what it is, the scoring convention, how to call it."""
    bos, eos = scoring.get("bos_token"), scoring["eos_token"]
    text = ("BOS + " if bos else "") + "prompt + response + EOS"
    fmt = scoring.get("prompt_format_doc", scoring.get("prompt_format", ""))
    stats = ""
    if scoring.get("validation_reward_mean") is not None:
        stats = (
            f"\nOn its validation pairs the rewards had mean {scoring['validation_reward_mean']:.4g}"
            f" and std {scoring['validation_reward_std']:.4g} (also config.json's `mean`/`std`, "
            "which OpenRLHF uses when reward normalisation is on).\n"
        )
    warn = f"\n**Warning:** {scoring['warning']}\n" if scoring.get("warning") else ""
    return f"""---
library_name: transformers
tags: [reward-model, metarm-jax]
---
# Reward model (metarm-jax export)

A scalar reward model (`{architecture}`, `num_labels=1`) trained by metarm-jax's
`{scoring.get("stage", "rm")}` stage.
Higher is better; the score is a raw logit (apply no sigmoid).

## Scoring convention (also in config.json under `{SCORING_KEY}`)

- Score the text **{text}**, where BOS is `{bos}` and EOS is `{eos}`
  (no BOS is added when the prompt text already starts with it{"" if bos else "; this tokenizer has none"}).
- Tokenize it with `add_special_tokens=False`: the tokenizer must add nothing else.
- The reward is read at the last non-pad token, i.e. at the EOS. Without the EOS the score is
  read at another token and is not the trained reward.
- Prompt and response format: {fmt}
{warn}{stats}
## Use

```python
from transformers import pipeline

rm = pipeline("text-classification", model="path/to/this/directory")
text = {"rm.tokenizer.bos_token + " if bos else ""}prompt + response + rm.tokenizer.eos_token
score = rm(text, function_to_apply="none", add_special_tokens=False)[0]["score"]
```

With TRL or OpenRLHF: see the section "Using the reward model in transformers, TRL and
OpenRLHF" of the metarm-jax README (TRL's `reward_funcs` tokenize prompt + completion without
the EOS: pass the README's reward function, which formats the text as above).
"""
