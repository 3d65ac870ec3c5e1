"""The reward-model stages: ``rm`` (vanilla Bradley-Terry) and ``metarm`` (the paper's
Algorithm 1, ``metarm_jax.core.metarm``). Both run the one train loop; they differ only in the
step function and in drawing a meta batch besides the preference batch.

The model starts from ``config.model``: a random preset, or ``model.hf_path`` (an HF Llama base,
an SFT ``LlamaForCausalLM`` export, which gets a fresh score head, or a previous RM's
``LlamaForSequenceClassification`` export). At the end the RM is written to
``workdir/export/rm`` as an HF ``LlamaForSequenceClassification``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metarm_jax import config_lib
from metarm_jax.core import losses, metarm
from metarm_jax.errors import ConfigError
from metarm_jax.models import hf
from metarm_jax.train import loop, optim, synthetic

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


# --------------------------------------------------------------------------------------------
# The model at the edge, and the two step functions.
# --------------------------------------------------------------------------------------------


def split_model(model: nnx.Module):
    """(reward_fn, params): reward_fn(params, ids [B,T], mask [B,T]) -> rewards [B] float32."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def reward_fn(p, input_ids, attention_mask):
        return nnx.merge(graphdef, p, rest)(input_ids, attention_mask)

    return reward_fn, params


def rm_step(reward_fn) -> loop.StepFn:
    """Vanilla RM: g = ∇_θ L_θ(X_t)."""

    def step_fn(params, batch, rng):
        del rng
        return metarm.vanilla_grads(reward_fn, params, batch["pref"])

    return step_fn


def metarm_step(reward_fn, eta: float, order: str) -> loop.StepFn:
    """MetaRM: g = ∇_θ' L_θ'(X_t) at θ' = θ + η∇_θ J_θ(X_s) (order 'first'), or through it."""
    if order not in metarm.ORDERS:
        raise ConfigError(f"config.meta.order={order!r}; expected one of {metarm.ORDERS}.")

    def step_fn(params, batch, rng):
        del rng
        return metarm.meta_grads(reward_fn, params, batch["pref"], batch["meta"], eta, order)

    return step_fn


# --------------------------------------------------------------------------------------------
# Data: the data layer's grain pipelines, or the synthetic task.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RMData:
    train: dict[str, Any]  # {"pref": it, ["meta": it]}: checkpointable grain iterators
    num_pairs: int  # training pairs (for train.epochs)
    val: Batches  # fresh pass over the validation preference batches
    meta_eval: Batches | None  # fresh pass over the meta batches |Δr| is measured on


def synthetic_data(config, with_meta: bool) -> RMData:
    t, d, k = config.train, config.data, config.meta.k
    T = t.synthetic_seq_len
    pref = synthetic.preference_arrays(t.synthetic_train, T, seed=d.pref_seed)
    val = synthetic.preference_arrays(t.synthetic_val, T, seed=d.pref_seed + 1000)
    meta_eval = synthetic.meta_arrays(
        t.synthetic_meta, k, T, seed=d.meta_seed + 1000, shift=t.synthetic_shift
    )
    train = {"pref": synthetic.batches(pref, d.pref_batch_size, seed=d.pref_seed)}
    if with_meta:
        meta = synthetic.meta_arrays(
            t.synthetic_meta, k, T, seed=d.meta_seed, shift=t.synthetic_shift
        )
        train["meta"] = synthetic.batches(meta, d.meta_batch_size, seed=d.meta_seed)
    return RMData(
        train=train,
        num_pairs=t.synthetic_train,
        val=lambda: synthetic.batches(val, d.pref_batch_size, shuffle=False, repeat=False),
        meta_eval=lambda: synthetic.batches(
            meta_eval, d.meta_batch_size, shuffle=False, repeat=False
        ),
    )


def layer_data(config, with_meta: bool) -> RMData:
    from metarm_jax import data as D

    d = config.data
    if d.meta_k != config.meta.k:
        raise ConfigError(
            f"config.meta.k={config.meta.k} but config.data.meta_k={d.meta_k}; the meta "
            "batches are read with data.meta_k responses per prompt: set both alike."
        )
    tok = D.load_tokenizer(d.tokenizer_path)
    pref = D.preference_iterator(d, tok, num_epochs=0)  # the loop decides when to stop
    report = pref.skip_report
    num_pairs = (report.total - report.skipped) if report is not None else 0
    train = {"pref": pref}
    if with_meta and not d.meta_path:
        raise ConfigError(
            "the metarm stage needs meta examples: set config.data.meta_path (written by "
            "the build_meta stage), or run the rm stage instead."
        )
    if with_meta:
        train["meta"] = D.meta_iterator(d, tok, num_epochs=0)
    val = lambda: D.preference_iterator(
        d, tok, split=d.eval_split, shuffle=False, num_epochs=1, drop_remainder=False
    )
    meta_eval = None
    if d.meta_path:
        meta_eval = lambda: D.meta_iterator(
            d, tok, shuffle=False, num_epochs=1, drop_remainder=False
        )
    return RMData(train=train, num_pairs=num_pairs, val=val, meta_eval=meta_eval)


# --------------------------------------------------------------------------------------------
# Evaluation: validation accuracy and rewards; reward differences on the meta set.
# --------------------------------------------------------------------------------------------


def abs_differences(rewards: np.ndarray, sample_mask: np.ndarray | None) -> np.ndarray:
    """|r_i - r_j| for every pair i < j of real responses to the same prompt; rewards: [m, k]."""
    m, k = rewards.shape
    mask = np.ones((m, k), bool) if sample_mask is None else np.asarray(sample_mask).astype(bool)
    i, j = np.triu_indices(k, 1)
    keep = mask[:, i] & mask[:, j]
    return np.abs(rewards[:, i] - rewards[:, j])[keep]


def meta_scores(meta_rewards, params, mesh, batches) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(rewards [m, k], sample_mask [m, k]) per meta batch, without a padded last batch's fill rows.

    meta_rewards(params, {"input_ids", "attention_mask"}) -> [m, k], e.g. a jitted
    ``metarm.meta_rewards`` on a reward_fn.
    """
    for b in batches:
        keep = np.asarray(b.get("example_mask", np.ones(len(b["input_ids"]), np.int32))) > 0
        seqs = {k: b[k] for k in ("input_ids", "attention_mask")}
        r = np.asarray(jax.device_get(meta_rewards(params, loop.global_batch(mesh, seqs))))[keep]
        yield r, np.asarray(b["sample_mask"])[keep]


def make_eval_fn(reward_fn, mesh, data: RMData, meta_cfg, eval_batches: int = 0) -> loop.EvalFn:
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
            keep = np.asarray(b.get("example_mask", np.ones(len(b["chosen_ids"]), np.int32))) > 0
            seqs = {k: b[k] for k in ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")}
            w, l = jax.device_get(pair_rewards(params, loop.global_batch(mesh, seqs)))
            r_w.append(np.asarray(w)[keep])
            r_l.append(np.asarray(l)[keep])
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


def _run(ctx, with_meta: bool) -> dict[str, Any]:
    config, mesh = ctx.config, ctx.mesh
    t = config.train
    name = "metarm" if with_meta else "rm"
    if with_meta:
        losses.validate_meta_k(config.meta.k)
    data = synthetic_data(config, with_meta) if t.synthetic else layer_data(config, with_meta)
    total = int(t.steps) or math.floor(t.epochs * data.num_pairs / config.data.pref_batch_size)
    if total < 1:
        raise ConfigError(
            f"{name}: the run has 0 steps ({data.num_pairs} pairs x train.epochs="
            f"{t.epochs} / data.pref_batch_size={config.data.pref_batch_size}); set "
            "train.steps or train.epochs."
        )

    with jax.set_mesh(mesh):
        model = config_lib.build_model(config, "reward", mesh)
        reward_fn, params = split_model(model)
        step_fn = (
            metarm_step(reward_fn, config.meta.eta, config.meta.order)
            if with_meta
            else rm_step(reward_fn)
        )
        optimizer, schedule = optim.optimizer(t, total)
        eval_fn = make_eval_fn(reward_fn, mesh, data, config.meta, t.eval_batches)
        workdir = os.path.join(ctx.workdir, name)
        params, summary = loop.train(
            t,
            mesh=mesh,
            workdir=workdir,
            params=params,
            step_fn=step_fn,
            seed=config.seed,
            batches=data.train,
            total_steps=total,
            optimizer=optimizer,
            schedule=schedule,
            eval_fn=eval_fn,
            desc=name,
        )
        nnx.update(model, params)
        if t.export:
            out = os.path.join(ctx.workdir, "export", "rm")  # rm and metarm: the RM PPO reads
            hf.save_hf(model, out)
            summary["export"] = out
    return summary


def run_rm(ctx) -> dict[str, Any]:
    """Stage ``rm``: the vanilla reward model (Bradley-Terry on preference pairs)."""
    return _run(ctx, with_meta=False)


def run_metarm(ctx) -> dict[str, Any]:
    """Stage ``metarm``: MetaRM (Algorithm 1), config.meta.{eta, order, k}."""
    return _run(ctx, with_meta=True)
