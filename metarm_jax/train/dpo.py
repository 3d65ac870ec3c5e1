"""The ``dpo`` stage: Direct Preference Optimization (Rafailov et al. 2023, Eq. 7).

    L(θ) = -mean log σ(β [(log π_θ(y_w|x) - log π_ref(y_w|x)) - (log π_θ(y_l|x) - log π_ref(y_l|x))])

π_θ (the policy, trained) and π_ref (the reference, frozen) both start from the same weights:
``config.model`` (``config.dpo.init = 'model'``, e.g. ``model.hf_path`` = an SFT export), or the
SFT export of this run's workdir (``'sft'``, for the pipeline ``('sft', 'dpo')``). log π(y|x) is the sum of the
response tokens' log-probs. Each model runs ONE forward over the [2n, T] stack of the n chosen
and n rejected sequences. The reference log-probs are computed inside the same jitted step,
under ``stop_gradient`` (not precomputed): no extra pass over the data and nothing to keep in
sync with the iterator on resume, at the cost of one reference forward per step.

The reference rides in the loop's params as ``{"policy": θ, "ref": θ_ref}``; the optimizer is
``optax.multi_transform`` with ``set_to_zero`` on ``ref``, so it has no optimizer state and its
update is exactly 0 (the reference never changes; tested bitwise). It may be stored in bf16
(``config.dpo.ref_dtype``). It is saved in the checkpoints with the policy, so resume is exact.

Response masks: the data layer's preference batches carry full sequences without a loss mask.
When a batch has ``chosen_loss_mask`` / ``rejected_loss_mask`` they are used. Otherwise the
response is everything after the longest common prefix of the chosen and rejected sequences
(they share one tokenized prompt). That prefix may also hold the first response tokens when both
responses start alike; those tokens have the same context and token in both sequences, so
their log-probs cancel in h = (π_w - ref_w) - (π_l - ref_l): the loss, gradient, margin and
accuracy are exactly those of the prompt-length mask; only the separate implicit rewards
β(π_w - ref_w), β(π_l - ref_l) leave the shared tokens out.

The policy is written to ``workdir/export/dpo`` as an HF ``LlamaForCausalLM`` with the tokenizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.core import packed
from metarm_jax.core import policy_losses as pl
from metarm_jax.core.tree import global_norm
from metarm_jax.models import llama_config
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.runtime.layout import StageDir
from metarm_jax.train import common, loop, optim

PAIR_KEYS = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")


# --------------------------------------------------------------------------------------------
# Response masks and log-probs of a pair batch.
# --------------------------------------------------------------------------------------------


def _left_justify(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Rotate each row so its first real token is at column 0 (identity for right padding)."""
    t = x.shape[1]
    start = jnp.argmax(mask > 0, axis=1)
    idx = (jnp.arange(t)[None, :] + start[:, None]) % t
    return jnp.take_along_axis(x, idx, axis=1)


def response_masks(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """[n, T] masks of the response tokens (and final EOS) of the chosen and rejected sequences.

    From ``chosen_loss_mask``/``rejected_loss_mask`` when the batch has them, else: the real
    tokens after the longest common prefix of the two sequences (see the module docstring for
    why that gives the same DPO loss). Works for left and right padding.
    """
    if "chosen_loss_mask" in batch:
        return batch["chosen_loss_mask"], batch["rejected_loss_mask"]
    ci, cm, ri, rm = (batch[k] for k in PAIR_KEYS)
    cj, cmj = _left_justify(ci, cm), _left_justify(cm, cm)
    rj, rmj = _left_justify(ri, rm), _left_justify(rm, rm)
    same = (cj == rj) & (cmj > 0) & (rmj > 0)
    prefix = jnp.sum(jnp.cumprod(same.astype(jnp.int32), axis=1), axis=1)  # [n]

    def after(mask):
        pos = jnp.cumsum(mask > 0, axis=1) - 1  # real index
        return ((mask > 0) & (pos >= prefix[:, None])).astype(jnp.int32)

    return after(cm), after(rm)


def packed_pair_logprobs(logits_fn, params, rows: packed.Packing) -> tuple[jax.Array, jax.Array]:
    """``pair_logprobs`` of a shared-prompt batch: ONE forward of its n rows [prompt | chosen |
    rejected]. Each response token is scored by the logits of the token before it in its own
    sequence (``rows.prev``: the prompt's last token for the first one). The response is the
    branch: everything after the pair's common prefix, as ``response_masks`` reads it (the one
    difference, a sequence that is a prefix of the other, gives both branches the same last
    token with the same context, which cancels in the loss)."""
    ids, prev, branch = rows.ids, rows.prev, rows.branch_ids
    if prev is None or branch is None:
        raise ValueError(
            "dpo: packed rows need prev and branch_ids (data.packing.pack_pairs builds them)."
        )
    logits = logits_fn(params, ids, None, packing=rows)  # [n, L, V]
    before = jnp.take_along_axis(logits, jnp.maximum(prev, 0)[:, :, None], axis=1)
    token_logp = pl.logprobs_of(before, ids)  # [n, L]
    real = (rows.segment_ids > 0) & (prev >= 0)
    return tuple(
        pl.sequence_logprobs(token_logp, (real & (branch == b)).astype(jnp.int32)) for b in (1, 2)
    )


def pair_logprobs(logits_fn, params, batch) -> tuple[jax.Array, jax.Array]:
    """(log π(y_w|x) [n], log π(y_l|x) [n]): summed response log-probs, ONE forward of [2n, T]
    (or of the n packed rows of a shared-prompt batch)."""
    rows = packed.rows(batch)
    if rows is not None:
        return packed_pair_logprobs(logits_fn, params, rows)
    n = batch["chosen_ids"].shape[0]
    resp_w, resp_l = response_masks(batch)
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    resp = jnp.concatenate([resp_w, resp_l])
    logits, targets, tmask = pl.next_token_targets(logits_fn(params, ids, mask), ids, resp)
    seq = pl.sequence_logprobs(pl.logprobs_of(logits, targets), tmask)  # [2n]
    return seq[:n], seq[n:]


# --------------------------------------------------------------------------------------------
# The step: params = {"policy": θ, "ref": θ_ref}.
# --------------------------------------------------------------------------------------------


def dpo_loss_on_batch(logits_fn, params, batch, beta, label_smoothing):
    ref = jax.lax.stop_gradient(params["ref"])
    ref_w, ref_l = pair_logprobs(logits_fn, ref, batch)
    pi_w, pi_l = pair_logprobs(logits_fn, params["policy"], batch)
    loss, metrics = pl.dpo_loss(
        pi_w, pi_l, ref_w, ref_l, beta=beta, label_smoothing=label_smoothing
    )
    metrics["dpo/logp_chosen"] = jnp.mean(pi_w)
    metrics["dpo/logp_rejected"] = jnp.mean(pi_l)
    return loss, metrics


def dpo_step(logits_fn, beta: float, label_smoothing: float) -> loop.StepFn:
    """g = ∇_θ L_DPO(θ; batch["pref"]); the reference's gradient is 0 (it is frozen)."""

    def step_fn(params, batch, rng):
        del rng
        (loss, m), g = jax.value_and_grad(
            lambda p: dpo_loss_on_batch(
                logits_fn, {"policy": p, "ref": params["ref"]}, batch["pref"], beta, label_smoothing
            ),
            has_aux=True,
        )(params["policy"])
        grads = {"policy": g, "ref": jax.tree.map(jnp.zeros_like, params["ref"])}
        metrics = {
            "loss": loss,
            **{k.removeprefix("dpo/"): v for k, v in m.items() if k != "dpo/loss"},
            "grad_norm": global_norm(g),
        }
        return grads, metrics

    return step_fn


def frozen_ref_optimizer(optimizer: optax.GradientTransformation) -> optax.GradientTransformation:
    """``optimizer`` on params["policy"]; params["ref"] gets a zero update and no state."""
    return optax.multi_transform(
        {"policy": optimizer, "ref": optax.set_to_zero()}, {"policy": "policy", "ref": "ref"}
    )


# --------------------------------------------------------------------------------------------
# Data and evaluation.
# --------------------------------------------------------------------------------------------


def layer_data(config) -> common.StageData:
    d = config.data
    if not d.tokenizer_path:
        raise ConfigError(
            "the dpo stage needs config.data.tokenizer_path (a local HF tokenizer directory)."
        )
    tok = D.load_tokenizer(d.tokenizer_path)
    pref, val = common.preference_data(d, tok)
    return common.StageData(
        train={"pref": pref}, num_examples=pref.num_examples, val=val, tokenizer=tok
    )


def make_eval_fn(
    logits_fn, mesh, val: common.Batches, beta: float, eval_batches: int = 0
) -> loop.EvalFn:
    both = jax.jit(
        lambda p, b: (
            pair_logprobs(logits_fn, p["policy"], b),
            pair_logprobs(logits_fn, p["ref"], b),
        )
    )

    def eval_fn(params) -> dict[str, Any]:
        cols = [[], [], [], []]
        for i, b in enumerate(val()):
            if eval_batches and i >= eval_batches:
                break
            seqs = {k: v for k, v in b.items() if k != "example_mask"}  # unpacked or packed
            g = sharding.global_batch(
                mesh, dict(seqs, example_mask=D.real_rows(b).astype(np.int32))
            )
            (pw, plo), (rw, rl), keep = sharding.to_host(
                (*both(params, {k: g[k] for k in seqs}), g["example_mask"])
            )
            for col, v in zip(cols, (pw, plo, rw, rl)):
                col.append(v[keep > 0])
        pw, plo, rw, rl = (jnp.asarray(np.concatenate(c)) for c in cols)
        # evaluation reports the plain DPO loss (no cDPO label smoothing), whatever training uses
        loss, m = pl.dpo_loss(pw, plo, rw, rl, beta=beta, label_smoothing=0.0)
        return {
            "loss": float(loss),
            "accuracy": float(m["dpo/accuracy"]),
            "reward_margin": float(m["dpo/reward_margin"]),
            "reward_chosen": float(m["dpo/reward_chosen"]),
            "reward_rejected": float(m["dpo/reward_rejected"]),
            "logp_chosen": float(jnp.mean(pw)),
            "logp_rejected": float(jnp.mean(plo)),
            "pairs": float(len(pw)),
        }

    return eval_fn


# --------------------------------------------------------------------------------------------
# The stage.
# --------------------------------------------------------------------------------------------


def start_path(config, workdir: str) -> str | None:
    """Where policy and reference start: None (``config.model``) or, with ``dpo.init='sft'``,
    the SFT export of this run's workdir."""
    if config.dpo.init == "model":  # else 'sft' (config_lib.validate)
        return None
    path = os.path.join(workdir, "export", "sft")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"config.dpo.init='sft' but {path} holds no SFT export; run the sft "
            "stage first (pipeline ('sft', 'dpo')) or set config.dpo.init='model'."
        )
    return path


def reference_params(config, mesh, path: str | None, dtype: str):
    """The frozen reference: the policy's start built again, its params cast to ``dtype``
    (``dpo.ref_dtype``, resolved; '' keeps model.param_dtype)."""
    ref_model = models.from_config(config.model, "lm", mesh, path=path, seed=config.seed)
    ref = models.split(ref_model, "lm").params
    if dtype:
        ref = jax.tree.map(lambda x: x.astype(llama_config.DTYPES[dtype]), ref)
    return ref


def run_dpo(ctx) -> dict[str, Any]:
    """Stage ``dpo``: config.dpo (β, schedule), config.data (pairs, pref_batch_size), config.model."""
    config, mesh = ctx.config, ctx.mesh
    s = config.dpo
    t = common.stage_train_config(config.train, s)
    data = layer_data(config)
    total = common.total_steps(
        "dpo",
        steps=t.steps,
        epochs=t.epochs,
        num_examples=data.num_examples,
        batch_size=config.data.pref_batch_size,
        block="dpo",
        batch_key="pref_batch_size",
        unit="pairs",
    )
    start = start_path(config, ctx.workdir)
    with jax.set_mesh(mesh):
        model = models.from_config(config.model, "lm", mesh, path=start, seed=config.seed)
        models.check_vocab(model, data.tokenizer, "dpo")
        logits_fn, policy, *_ = models.split(model, "lm")
        params = {"policy": policy, "ref": reference_params(config, mesh, start, s.ref_dtype)}
        optimizer, schedule = optim.optimizer(t, total)
        params, summary = loop.train(
            t,
            mesh=mesh,
            workdir=StageDir(ctx.workdir).train("dpo"),
            params=params,
            step_fn=dpo_step(logits_fn, s.beta, s.label_smoothing),
            seed=config.seed,
            batches=data.train,
            total_steps=total,
            optimizer=frozen_ref_optimizer(optimizer),
            schedule=schedule,
            eval_fn=make_eval_fn(logits_fn, mesh, data.val, s.beta, t.eval_batches),
            desc="dpo",
        )
        nnx.update(model, params["policy"])
        if s.export:
            summary["export"] = common.export(model, ctx.workdir, "dpo", tokenizer=data.tokenizer)
    return summary
