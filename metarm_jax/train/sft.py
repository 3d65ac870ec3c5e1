"""The ``sft`` stage: supervised fine-tuning of the policy (causal LM) on response tokens only.

    L(θ) = -1/N Σ_{response tokens t} log π_θ(y_t | x, y_<t)     N = response tokens in the batch

The data layer's SFT batches (`input_ids, attention_mask, loss_mask: [n, T]`) mark the
assistant tokens and the final EOS with `loss_mask = 1`; prompt and padding positions are in the
context but never in the loss. With ``config.data.pack_sft`` (the default) a batch's examples
are packed several to a row (one ``core.packed.Packing`` of ids, segment ids, positions and loss
mask, ``metarm_jax.data.packing.pack_examples``): each example its own segment with its own
positions, the same examples and the same loss, less padding. The stage runs the one
train loop with the paper's schedule (`config.sft`: lr 2e-5, 2 epochs, 0.3 epoch warm-up, linear decay to zero; global batch
`config.data.sft_batch_size` = 32), evaluates validation loss and token accuracy, and writes the
policy to ``workdir/export/sft`` as an HF ``LlamaForCausalLM`` with the tokenizer.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.core import packed
from metarm_jax.core import policy_losses as pl
from metarm_jax.core.tree import global_norm
from metarm_jax.data import rows
from metarm_jax.data.records import SkipReport
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.runtime.layout import StageDir
from metarm_jax.train import common, loop, optim

# --------------------------------------------------------------------------------------------
# The model at the edge, and the step.
# --------------------------------------------------------------------------------------------


def sft_loss_on_batch(logits_fn, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Masked next-token cross-entropy of one SFT batch: logits[:, t] predicts input_ids[:, t+1],
    counted where loss_mask[:, t+1] = 1 (`policy_losses.next_token_targets` + `sft_loss`).
    A packed batch: the same within each segment (a token never predicts the next example's)."""
    rows = packed.rows(batch)
    if rows is not None:
        ids, seg = rows.ids, rows.segment_ids
        logits = logits_fn(params, ids, None, packing=rows)
        same = jnp.pad(seg[:, 1:] == seg[:, :-1], ((0, 0), (1, 0)))  # token t follows t-1
        mask = rows.loss_mask * same
    else:
        ids, mask = batch["input_ids"], batch["loss_mask"]
        logits = logits_fn(params, ids, batch["attention_mask"])
    logits, targets, mask = pl.next_token_targets(logits, ids, mask)
    return pl.sft_loss(logits, targets, mask)


def sft_step(logits_fn) -> loop.StepFn:
    """g = ∇_θ L_SFT(θ; batch["sft"])."""

    def step_fn(params, batch, rng):
        del rng
        (loss, metrics), grads = jax.value_and_grad(
            lambda p: sft_loss_on_batch(logits_fn, p, batch["sft"]), has_aux=True
        )(params)
        metrics = {
            "loss": loss,
            "token_accuracy": metrics["sft/token_accuracy"],
            "num_tokens": metrics["sft/num_tokens"],
            "grad_norm": global_norm(grads),
        }
        return grads, metrics

    return step_fn


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------


def _same_files(path: str, split_a: str, split_b: str, data_dir: str) -> bool:
    if not os.path.exists(path):
        return False  # a hub dataset: its splits are distinct
    try:
        return rows.resolve_files(path, split_a, data_dir) == rows.resolve_files(
            path, split_b, data_dir
        )
    except Exception:
        return False  # the loader reports a missing split itself, with its own message


def layer_data(config, row_multiple: int = 1) -> common.StageData:
    """Train and validation SFT batches; ``row_multiple``: packed batches' rows split into this
    many equal parts (this host's data-parallel devices times the micro-batches)."""
    d, s = config.data, config.sft
    if not d.tokenizer_path:
        raise ConfigError(
            "the sft stage needs config.data.tokenizer_path (a local HF tokenizer directory)."
        )
    tok = D.load_tokenizer(d.tokenizer_path)
    records = D.load_records("sft", d, tok)
    holdout = int(s.val_holdout)
    if holdout:
        if holdout >= len(records):
            raise ConfigError(
                f"config.sft.val_holdout={holdout} leaves no training example "
                f"({len(records)} SFT examples in {d.sft_path!r})."
            )
        train_recs = D.Records(records[:-holdout], records.skip_report)
        held_out = SkipReport("sft validation (held out)", d.on_bad_record, d.max_skip_fraction)
        held_out.total = holdout
        val_recs = D.Records(records[-holdout:], held_out)
    else:
        if _same_files(d.sft_path, d.sft_split, d.eval_split, d.sft_data_dir):
            raise ConfigError(
                f"config.data.sft_path={d.sft_path!r} has no separate {d.eval_split!r} split "
                "(data.eval_split): validation would be training data. Set "
                "config.sft.val_holdout=N to hold out N training examples instead."
            )
        train_recs = records
        val_recs = D.load_records("sft", d, tok, split=d.eval_split)
    # the loop decides when to stop
    pack = {"pack_sft": bool(d.pack_sft), "row_multiple": row_multiple}
    train = D.sft_iterator(d, tok, records=train_recs, num_epochs=0, **pack)
    val = lambda: D.sft_iterator(
        d, tok, records=val_recs, shuffle=False, num_epochs=1, drop_remainder=False, **pack
    )
    return common.StageData(
        train={"sft": train}, num_examples=train.num_examples, val=val, tokenizer=tok
    )


# --------------------------------------------------------------------------------------------
# Evaluation: validation loss and token accuracy, token-weighted over the whole set.
# --------------------------------------------------------------------------------------------


def make_eval_fn(logits_fn, mesh, val: common.Batches, eval_batches: int = 0) -> loop.EvalFn:
    @jax.jit
    def sums(params, batch):
        _, m = sft_loss_on_batch(logits_fn, params, batch)
        n = m["sft/num_tokens"]
        return m["sft/loss"] * n, m["sft/token_accuracy"] * n, n

    def eval_fn(params) -> dict[str, Any]:
        nll = correct = tokens = 0.0
        for i, b in enumerate(val()):
            if eval_batches and i >= eval_batches:
                break
            seqs = {k: v for k, v in b.items() if k != "example_mask"}  # pad rows: loss mask 0
            a, c, n = sharding.to_host(sums(params, sharding.global_batch(mesh, seqs)))
            nll, correct, tokens = nll + float(a), correct + float(c), tokens + float(n)
        return {
            "loss": nll / max(tokens, 1.0),
            "token_accuracy": correct / max(tokens, 1.0),
            "tokens": tokens,
        }

    return eval_fn


# --------------------------------------------------------------------------------------------
# The stage.
# --------------------------------------------------------------------------------------------


def run_sft(ctx) -> dict[str, Any]:
    """Stage ``sft``: config.sft (schedule), config.data (SFT data, sft_batch_size), config.model."""
    config, mesh = ctx.config, ctx.mesh
    s, d = config.sft, config.data
    t = common.stage_train_config(config.train, s)
    local_dp = max(1, sharding.dp_size(mesh) // jax.process_count())
    data = layer_data(config, row_multiple=local_dp * int(t.grad_accum))
    per_epoch = data.num_examples / d.sft_batch_size
    total = common.total_steps(
        "sft",
        steps=t.steps,
        epochs=t.epochs,
        num_examples=data.num_examples,
        batch_size=d.sft_batch_size,
        block="sft",
        batch_key="sft_batch_size",
    )
    if s.warmup_epochs > 0:  # the paper's 0.3 epoch, in steps (>= 1 so it reads as steps)
        t.warmup = float(max(1, round(s.warmup_epochs * per_epoch)))

    with jax.set_mesh(mesh):
        model = models.from_config(config.model, "lm", mesh, seed=config.seed)
        models.check_vocab(model, data.tokenizer, "sft")
        logits_fn, params, *_ = models.split(model, "lm")
        optimizer, schedule = optim.optimizer(t, total)
        eval_fn = make_eval_fn(logits_fn, mesh, data.val, t.eval_batches)
        params, summary = loop.train(
            t,
            mesh=mesh,
            workdir=StageDir(ctx.workdir).train("sft"),
            params=params,
            step_fn=sft_step(logits_fn),
            seed=config.seed,
            batches=data.train,
            total_steps=total,
            optimizer=optimizer,
            schedule=schedule,
            eval_fn=eval_fn,
            desc="sft",
        )
        nnx.update(model, params)
        if s.export:
            summary["export"] = common.export(model, ctx.workdir, "sft", tokenizer=data.tokenizer)
    summary["warmup_steps"] = min(optim.warmup_steps(t.warmup, total), total)
    return summary
