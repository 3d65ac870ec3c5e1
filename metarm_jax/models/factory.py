"""Model construction: the one place every stage, the sampler's stage, the report and the judges
get a model from, and the one way to split a model into what the pure core needs.

    from metarm_jax import models
    rm = models.from_config(config.model, "reward", mesh, path=rm_dir, seed=config.seed)
    apply, params, graphdef, rest = models.split(rm)
    rewards = apply(params, ids, mask)        # the head's output, a pure function of params

``from_config`` reads ``path`` (an HF directory) when given, else ``model.hf_path``, else builds a
random ``model.preset``; in every case with the block's compute dtype, param dtype (or
``param_dtype=``), remat policy, attention and layer scan, placed on ``mesh`` by the sharding
table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from flax import nnx

from metarm_jax.models import hf, llama, llama_config
from metarm_jax.runtime.errors import ConfigError


def model_config(model_cfg, *, param_dtype: str | None = None) -> llama_config.LlamaConfig:
    """The LlamaConfig of ``config.model``: the HF checkpoint's config.json or the preset."""
    policy = dict(
        dtype=model_cfg.dtype,
        param_dtype=param_dtype or model_cfg.param_dtype,
        remat=model_cfg.remat,
        attention=model_cfg.attention,
        scan_layers=model_cfg.scan_layers,
    )
    if model_cfg.hf_path:
        return hf.config_from_hf(
            hf.read_config(model_cfg.hf_path),
            source=os.path.join(model_cfg.hf_path, "config.json"),
            **policy,
        )
    if model_cfg.vocab_size:
        policy["vocab_size"] = model_cfg.vocab_size
    return llama_config.preset(model_cfg.preset, **policy)


def from_config(
    model_cfg,
    head: str,
    mesh=None,
    *,
    path: str | None = None,
    param_dtype: str | None = None,
    seed: int = 0,
) -> llama.Llama:
    """A model with ``head`` ("lm", "reward" or "value") from ``config.model``.

    path: an HF checkpoint directory to load instead of ``model_cfg.hf_path`` (a stage's own
      input: the SFT export, the previous round's RM, ...); empty or None: ``model_cfg.hf_path``,
      and when that is empty too, a random ``model_cfg.preset`` initialised from ``seed``.
    param_dtype: storage dtype instead of ``model_cfg.param_dtype`` (frozen models in bf16).
    seed: initialises the random preset, and a reward/value head missing from a checkpoint.
    """
    path = path or model_cfg.hf_path
    pd = param_dtype or model_cfg.param_dtype
    if path:
        return hf.load_hf(
            path,
            head,
            mesh=mesh,
            dtype=model_cfg.dtype,
            param_dtype=pd,
            remat=model_cfg.remat,
            attention=model_cfg.attention,
            scan_layers=model_cfg.scan_layers,
            seed=seed,
        )
    return llama.create(model_config(model_cfg, param_dtype=pd), head, seed=seed, mesh=mesh)


class Split(NamedTuple):
    """A model as the pure core uses it: ``apply(params, ids [B, T], mask [B, T])`` is the head's
    output (logits [B, T, V], rewards [B] or values [B, T]); ``apply(params, rows.ids, None,
    packing=rows)`` the same on packed rows (``rows``: a ``core.packed.Packing``; rewards
    [B, j]); ``params`` the trainable weights; ``graphdef`` and ``rest`` (non-parameter state)
    rebuild the module with ``nnx.merge``."""

    apply: Callable[[Any, Any, Any], Any]
    params: nnx.State
    graphdef: nnx.GraphDef
    rest: nnx.State


def split(model: llama.Llama, head: str | None = None) -> Split:
    """Split ``model`` into a pure apply function and its params (``head``: check it first)."""
    if head is not None and model.head != head:
        raise ConfigError(f"this stage needs a model with the {head!r} head, got {model.head!r}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(p, input_ids, attention_mask, packing=None):
        return nnx.merge(graphdef, p, rest)(input_ids, attention_mask, packing)

    return Split(apply, params, graphdef, rest)


def check_vocab(model: llama.Llama, tokenizer, stage: str) -> None:
    """A token id past the embedding table would be clamped silently by the gather: refuse."""
    if len(tokenizer) > model.cfg.vocab_size:
        raise ConfigError(
            f"{stage}: the tokenizer has {len(tokenizer)} ids but the model's vocab_size is "
            f"{model.cfg.vocab_size}; use a model (config.model) whose embedding covers the "
            "tokenizer."
        )
