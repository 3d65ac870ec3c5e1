"""The reward-model stages: ``rm`` (vanilla Bradley-Terry) and ``metarm`` (the paper's
Algorithm 1, ``metarm_jax.core.metarm``). Both run the one train loop; they differ only in the
step function and in drawing a meta batch besides the preference batch.

The stage ``warm`` averages the weights of several such RMs (WARM) into one export.

The model starts from ``config.model``: a random preset, or ``model.hf_path`` (an HF Llama base,
an SFT ``LlamaForCausalLM`` export, which gets a fresh score head, or a previous RM's
``*ForSequenceClassification`` export). At the end the RM is written to ``workdir/export/rm`` as
an HF ``*ForSequenceClassification`` (Llama or Qwen2, the family it started from) with its
tokenizer and its scoring convention (``scoring_convention``: in config.json and a README.md), so
that transformers, TRL and OpenRLHF can score texts as this stage did.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.core import ensemble, losses, metarm
from metarm_jax.core.stats import abs_differences
from metarm_jax.data import formats
from metarm_jax.generation.scoring import meta_scores
from metarm_jax.models import hf
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.runtime.layout import StageDir
from metarm_jax.train import common, loop, optim

# --------------------------------------------------------------------------------------------
# The two step functions.
# --------------------------------------------------------------------------------------------


def rm_step(reward_fn, center: float) -> loop.StepFn:
    """Vanilla RM: g = ∇_θ L_θ(X_t) (``center`` > 0: L with reward centring's term,
    ``train.center_rewards``)."""

    def step_fn(params, batch, rng):
        del rng
        return metarm.vanilla_grads(reward_fn, params, batch["pref"], center)

    return step_fn


def metarm_step(reward_fn, meta, center: float) -> loop.StepFn:
    """MetaRM: g = ∇_θ' L_θ'(X_t) at θ' = θ + η∇_θ J_θ(X_s) (``meta.order`` 'first'), or through
    it ('second', formed as ``meta.second_order`` says: ``metarm.SECOND_ORDER``). ``meta``: the
    config's ``meta`` block (eta, order, eta_mode, second_order, measure_j_prime; values checked
    by ``config_lib.validate``); ``center``: reward centring in L, as ``rm_step``."""
    eta, order, eta_mode = float(meta.eta), meta.order, meta.eta_mode
    measure_j_prime, second_order = bool(meta.measure_j_prime), meta.second_order
    direction = meta.direction  # 'ascent', or a negative control's (core.metarm.DIRECTIONS)

    def step_fn(params, batch, rng, prev_update_norm=None):
        return metarm.meta_grads(
            reward_fn,
            params,
            batch["pref"],
            batch["meta"],
            eta,
            order,
            measure_j_prime=measure_j_prime,
            eta_mode=eta_mode,
            second_order=second_order,
            prev_update_norm=prev_update_norm,
            center=center,
            direction=direction,
            rng=rng if direction == "random" else None,
        )

    return step_fn


# --------------------------------------------------------------------------------------------
# Data: the data layer's grain pipelines.
# --------------------------------------------------------------------------------------------


def layer_data(config, with_meta: bool) -> common.StageData:
    d, k = config.data, config.meta.k
    tok = D.load_tokenizer(d.tokenizer_path)
    shared = bool(d.shared_prompt)  # one row per prompt and its responses (data/packing.py)
    pref, val = common.preference_data(d, tok)
    report = pref.skip_report
    num_pairs = (report.total - report.skipped) if report is not None else 0
    train = {"pref": pref}
    if with_meta:
        train["meta"] = D.meta_iterator(d, tok, k=k, num_epochs=0, shared_prompt=shared)
    meta_eval = None
    if d.meta_path:
        meta_eval = lambda: D.meta_iterator(
            d, tok, k=k, shuffle=False, num_epochs=1, drop_remainder=False, shared_prompt=shared
        )
    return common.StageData(
        train=train, num_examples=num_pairs, val=val, tokenizer=tok, meta_eval=meta_eval
    )


# --------------------------------------------------------------------------------------------
# Evaluation: validation accuracy and rewards; reward differences on the meta set.
# --------------------------------------------------------------------------------------------


def make_eval_fn(
    reward_fn, mesh, data: common.StageData, meta_cfg, eval_batches: int = 0
) -> loop.EvalFn:
    pair_rewards = jax.jit(lambda p, b: metarm.pair_rewards(reward_fn, p, b))
    meta_rewards = jax.jit(lambda p, b: metarm.meta_rewards(reward_fn, p, b))

    def batches(make):
        for i, b in enumerate(make()):
            if eval_batches and i >= eval_batches:
                return
            yield b

    def eval_fn(params) -> dict[str, Any]:
        r_w, r_l = [], []
        for b in batches(data.val):
            seqs = {k: v for k, v in b.items() if k != "example_mask"}  # unpacked or packed
            g = sharding.global_batch(
                mesh, dict(seqs, example_mask=D.real_rows(b).astype(np.int32))
            )
            w, l, keep = sharding.to_host(
                (*pair_rewards(params, {k: g[k] for k in seqs}), g["example_mask"])
            )
            r_w.append(w[keep > 0])
            r_l.append(l[keep > 0])
        r_w, r_l = np.concatenate(r_w), np.concatenate(r_l)
        both = np.concatenate([r_w, r_l])
        out = {
            "accuracy": float(np.mean(r_w > r_l)),
            "loss": float(losses.bt_loss(jnp.asarray(r_w), jnp.asarray(r_l))),
            "reward_mean": float(both.mean()),
            "reward_std": float(both.std()),
            "reward_margin": float(np.mean(r_w - r_l)),
            "pairs": float(len(r_w)),
        }
        if data.meta_eval is not None:
            diffs, j_sum, prompts = [], 0.0, 0
            for r, sm in meta_scores(meta_rewards, params, mesh, batches(data.meta_eval)):
                diffs.append(abs_differences(r, sm))
                j_sum += float(losses.difference_loss(jnp.asarray(r), jnp.asarray(sm))) * len(r)
                prompts += len(r)
            diffs = np.concatenate(diffs)
            hi = meta_cfg.hist_max or float(diffs.max(initial=0.0)) or 1.0
            counts, _ = np.histogram(diffs, bins=meta_cfg.hist_bins, range=(0.0, hi))
            out.update(
                {
                    "meta/absdiff_mean": float(diffs.mean()),
                    "meta/absdiff_var": float(diffs.var()),
                    "meta/absdiff_median": float(np.median(diffs)),
                    "meta/J": j_sum / max(prompts, 1),
                    "meta/absdiff_hist_max": hi,
                    "meta/absdiff_hist": counts.astype(np.float64),
                    "meta/absdiff": diffs,
                }
            )
        return out

    return eval_fn


# --------------------------------------------------------------------------------------------
# The stages.
# --------------------------------------------------------------------------------------------


def validate_metarm(config) -> None:
    """What the metarm stage needs from the rest of the config (``stages.VALIDATORS``)."""
    if not config.data.meta_path:
        raise ConfigError(
            "the metarm stage needs meta examples: set config.data.meta_path (written by "
            "the build_meta stage), or run the rm stage instead."
        )


def _run(ctx, with_meta: bool, data: common.StageData | None) -> dict[str, Any]:
    config, mesh = ctx.config, ctx.mesh
    t = config.train
    name = "metarm" if with_meta else "rm"
    if with_meta and data is None:
        validate_metarm(config)  # a stage of rlhf gets data.meta_path from it: checked here too
    data = data if data is not None else layer_data(config, with_meta)
    total = common.total_steps(
        name,
        steps=t.steps,
        epochs=t.epochs,
        num_examples=data.num_examples,
        batch_size=config.data.pref_batch_size,
        block="train",
        batch_key="pref_batch_size",
        unit="pairs",
    )

    with jax.set_mesh(mesh):
        model = models.from_config(config.model, "reward", mesh, seed=config.seed)
        reward_fn, params, *_ = models.split(model)
        center = float(t.center_rewards)
        step_fn = (
            metarm_step(reward_fn, config.meta, center) if with_meta else rm_step(reward_fn, center)
        )
        optimizer, schedule = optim.optimizer(t, total)
        eval_fn = make_eval_fn(reward_fn, mesh, data, config.meta, t.eval_batches)
        params, summary = loop.train(
            t,
            mesh=mesh,
            workdir=StageDir(ctx.workdir).train(name),
            params=params,
            step_fn=step_fn,
            seed=config.seed,
            batches=data.train,
            total_steps=total,
            optimizer=optimizer,
            schedule=schedule,
            eval_fn=eval_fn,
            desc=name,
            # MetaRM's ascent sized against the optimizer's step reads its last update norm
            update_norm_arg=with_meta and config.meta.eta_mode == "update",
        )
        nnx.update(model, params)
        if t.export:  # rm and metarm both write export/rm: the RM that PPO reads
            tok = data.tokenizer
            if tok is None and config.data.tokenizer_path:
                tok = D.load_tokenizer(config.data.tokenizer_path)
            summary["export"] = export_rm(model, ctx.workdir, config.data, tok, name, summary)
    return summary


def export_rm(model, workdir: str, data_cfg, tokenizer, stage: str, summary=None) -> str:
    """``workdir/export/rm``: the RM as an HF sequence classifier with its tokenizer and its
    scoring convention (config.json and README.md); without a tokenizer, the weights only."""
    scoring = None
    if tokenizer is not None:
        scoring = scoring_convention(data_cfg, tokenizer, stage, summary)
        if scoring.get("warning"):
            print(f"[metarm_jax] {stage}: {scoring['warning']}")
    return common.export(model, workdir, "rm", tokenizer=tokenizer, scoring=scoring)


def scoring_convention(data_cfg, tokenizer, stage: str, summary: dict | None = None) -> dict:
    """How the exported RM scores a text: the sequences this stage trained on (data.features:
    ``[BOS] + prompt + response + EOS``, no BOS when the prompt starts with it) and where the
    head reads (the last non-pad token, the EOS). Written into the export's config.json
    (``hf.SCORING_KEY``) and model card; the README's TRL and OpenRLHF recipes follow it."""
    has_bos = bool(data_cfg.add_bos) and tokenizer.bos_token_id is not None
    if data_cfg.conversation_format == "chat_template":
        fmt = (
            "dialogues in the tokenizer's chat template: the prompt is the rendering with "
            "add_generation_prompt=True, the response is the assistant turn as the template "
            "renders it after that prompt, up to (not including) its end-of-turn token, which is "
            "the EOS above (anything the template renders after it is not scored)."
        )
    else:
        fmt = (
            f"dialogues in the Anthropic HH format: the prompt is {formats.HUMAN!r} + ' ' + user "
            f"turn (+ {formats.ASSISTANT!r} + ' ' + assistant turn ...) ending with "
            f"{formats.ASSISTANT!r}, the response is ' ' + its text."
        )
    if data_cfg.dataset == "summarize_from_feedback" and data_cfg.conversation_format == "hh":
        fmt = (
            "TL;DR summarisation: the prompt is 'SUBREDDIT: r/{subreddit}\nTITLE: {title}\n"
            "POST: {post}\nTL;DR:', the response is ' ' + the summary."
        )
    out = {
        "sequence": ("BOS + " if has_bos else "") + "prompt + response + EOS",
        "bos_token": tokenizer.bos_token if has_bos else None,
        "bos_token_id": int(tokenizer.bos_token_id) if has_bos else None,
        "bos_added_unless_prompt_starts_with_it": has_bos,
        "eos_token": tokenizer.eos_token,
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token": tokenizer.pad_token,
        "pad_token_id": int(tokenizer.pad_token_id),
        "add_special_tokens": False,
        "reward_read_at": "last non-pad token (the EOS)",
        "prompt_format": data_cfg.conversation_format,
        "prompt_format_doc": fmt,
        "tokenization": "prompt and response tokenized apart, then joined (for the HH format and "
        "checked chat templates this equals tokenizing the whole text)",
        "dataset": data_cfg.dataset,
        "stage": stage,
    }
    summary = summary or {}
    if summary.get("eval/reward_mean") is not None:
        out["validation_reward_mean"] = float(summary["eval/reward_mean"])
        out["validation_reward_std"] = float(summary["eval/reward_std"])
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        out["warning"] = (
            "the pad token is the EOS: transformers' *ForSequenceClassification finds the last "
            "token by pad_token_id, so it reads the token before the EOS (TRL does too); score "
            "through the attention mask (OpenRLHF, or the README's reward function) or give "
            "the tokenizer a pad token of its own before training."
        )
    return out


# --------------------------------------------------------------------------------------------
# WARM: the weight average of RMs fine-tuned from one initialisation.
# --------------------------------------------------------------------------------------------

# config.json keys that fix the shapes of an RM's weights: members must agree on all of them.
_SHAPE_KEYS = (
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)


def validate_warm(config) -> None:
    """What the warm stage needs: at least 2 RM exports of one shape (``stages.VALIDATORS``)."""
    paths = tuple(config.warm.rm_paths)
    if len(paths) < 2:
        raise ConfigError(
            f"config.warm.rm_paths={paths!r}: the warm stage averages at least 2 reward models; "
            "give their export directories (e.g. <workdir>/export/rm of each rm stage)."
        )
    first = None
    for i, path in enumerate(paths):
        try:
            cfg = hf.read_config(path)
        except Exception as e:
            raise ConfigError(f"config.warm.rm_paths[{i}]: {str(e).splitlines()[0]}") from None
        arch = " ".join(cfg.get("architectures") or [])
        if not arch.endswith("ForSequenceClassification"):
            raise ConfigError(
                f"config.warm.rm_paths[{i}]={path!r} is a {arch or 'model without architectures'}"
                ", not a reward model (*ForSequenceClassification, e.g. an rm stage's export)."
            )
        shape = {k: cfg.get(k) for k in _SHAPE_KEYS}
        if first is None:
            first = shape
        elif shape != first:
            diff = sorted(k for k in _SHAPE_KEYS if shape[k] != first[k])
            raise ConfigError(
                f"config.warm.rm_paths[{i}]={path!r} differs from rm_paths[0] in {diff}: WARM "
                "averages RMs of one shape, fine-tuned from one initialisation."
            )


def average_rms(config, mesh, paths) -> Any:
    """The WARM model: member 0's model with every parameter the element-wise mean of the
    members' (``core.ensemble.average``, one member loaded at a time besides member 0 and the
    running sum of differences)."""
    load = lambda p: models.from_config(config.model, "reward", mesh, path=p, seed=config.seed)
    model = load(paths[0])
    _, first, *_ = models.split(model)
    add = jax.jit(ensemble.add_delta)
    acc = jax.jit(ensemble.delta_sum)(first)
    for path in paths[1:]:
        _, params, *_ = models.split(load(path))
        acc = add(acc, params, first)
        del params
    nnx.update(model, jax.jit(ensemble.finish_average, static_argnums=2)(first, acc, len(paths)))
    return model


def run_warm(ctx) -> dict[str, Any]:
    """Stage ``warm``: WARM (Ramé et al. 2024) of ``config.warm.rm_paths``, written to
    ``workdir/export/rm`` as an HF sequence classifier with member 0's tokenizer and scoring
    convention (its validation reward statistics dropped: they were member 0's)."""
    config, mesh = ctx.config, ctx.mesh
    validate_warm(config)
    paths = tuple(config.warm.rm_paths)
    with jax.set_mesh(mesh):
        model = average_rms(config, mesh, paths)
        scoring = dict(hf.read_config(paths[0]).get(hf.SCORING_KEY) or {})
        for key in ("validation_reward_mean", "validation_reward_std", "warning"):
            scoring.pop(key, None)
        tok_path = config.data.tokenizer_path or paths[0]
        has_tok = os.path.exists(os.path.join(tok_path, "tokenizer.json"))
        tok = D.load_tokenizer(tok_path) if config.data.tokenizer_path or has_tok else None
        if scoring:
            scoring.update(stage="warm", warm_members=list(paths))
        export = common.export(model, ctx.workdir, "rm", tokenizer=tok, scoring=scoring or None)
    return {"export": export, "members": len(paths), "steps": 0}


def run_rm(ctx, *, data: common.StageData | None = None) -> dict[str, Any]:
    """Stage ``rm``: the vanilla reward model (Bradley-Terry on preference pairs).

    ``data``: train on these batches instead of config.data's datasets (tests, benchmarks)."""
    return _run(ctx, with_meta=False, data=data)


def run_metarm(ctx, *, data: common.StageData | None = None) -> dict[str, Any]:
    """Stage ``metarm``: MetaRM (Algorithm 1), config.meta.{eta, order, k}; ``data`` as run_rm."""
    return _run(ctx, with_meta=True, data=data)
