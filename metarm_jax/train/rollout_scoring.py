"""Roll-out scoring: one jitted forward of each of the four PPO models (actor, reference,
critic, RM or RM ensemble) over a roll-out batch, on unpacked rows [prompt | response] or on
packed rows [prompt | response_1 | ... | response_g] that compute each prompt once for g of its
responses (``score_group`` picks g by a FLOP model, ``pack_scoring_rows`` builds the rows).
``response_slice``/``response_logprobs`` are the models-at-the-edge helpers the PPO step also uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from metarm_jax.core import packed
from metarm_jax.core import policy_losses as pl
from metarm_jax.train.ensemble_reward import Ensemble

# --------------------------------------------------------------------------------------------
# Models at the edge: pure functions of (params, ids [B, T], mask [B, T]).
# --------------------------------------------------------------------------------------------


def response_slice(x: jax.Array, num_response: int) -> jax.Array:
    """Outputs at the positions that PREDICT the last ``num_response`` tokens: [B, T, ...] ->
    [B, Tn, ...] (position t-1 predicts token t; a value V(s_t) lives where its logits do)."""
    t = x.shape[1]
    return x[:, t - num_response - 1 : t - 1]


def response_logprobs(lm_apply, params, ids, mask, num_response: int):
    """(log π(response tokens) [B, Tn], entropy [B, Tn]) from one forward of prompt+response."""
    logits = response_slice(lm_apply(params, ids, mask), num_response)
    return pl.logprobs_and_entropy(logits, ids[:, -num_response:])


# --------------------------------------------------------------------------------------------
# The jitted pieces of a roll-out.
# --------------------------------------------------------------------------------------------


# Attention's FLOPs (scores, softmax, weighted values over a dense [L, L] mask) ran at about a
# third of the projections' rate on XLA:CPU in bench/kernels.py (part 1 at llama_100m shapes,
# tokens/s times FLOPs per token: about 68 vs 208 GFLOP/s), so score_group counts each three times.
ATTENTION_FLOP_WEIGHT = 3.0


def score_group(cfg, rows: int, per_prompt: int, width: int, num_response: int, dp: int) -> int:
    """How many of a prompt's roll-outs one packed scoring row holds: the divisor g of
    ``per_prompt`` (keeping rows/g divisible by the ``dp`` data-parallel devices) whose rows
    [prompt | response_1 | ... | response_g] cost the least: per token the layers' weight FLOPs
    and an LM head for half of the four models (actor and reference), plus attention's
    4·L²·H·D per layer (weighted by ``ATTENTION_FLOP_WEIGHT``) over the row's L = width +
    g·num_response tokens. Longer rows save prompt tokens but pay attention quadratically.
    1 means unpacked."""
    d = cfg.head_dim or cfg.hidden_size // cfg.num_heads
    hd, kvd, e = cfg.num_heads * d, cfg.num_kv_heads * d, cfg.hidden_size
    layer = 2 * e * hd + 2 * e * kvd + 3 * e * cfg.intermediate_size
    per_token = 2.0 * cfg.num_layers * layer + e * cfg.vocab_size

    def cost(g):
        length = width + g * num_response
        attention = cfg.num_layers * 4.0 * length**2 * hd * ATTENTION_FLOP_WEIGHT
        return rows / g * (length * per_token + attention)

    fits = [g for g in range(1, per_prompt + 1) if per_prompt % g == 0 and (rows // g) % dp == 0]
    return min(fits, key=lambda g: (cost(g), g))


def pack_scoring_rows(ids: jax.Array, mask: jax.Array, num_response: int, g: int):
    """Roll-out rows [N, W + Tn] (a left-padded prompt, then a response of Tn slots; every g
    consecutive rows share their prompt) -> N/g packed rows [prompt | response_1 | ... |
    response_g] (a ``core.packed.Packing``: one segment, the prompt branch 0, response b branch
    b, every token at its unpacked position; ``read_at`` [N/g, g] the reward read-out, each
    response's last token, the prompt's last for an empty one) and the index in the packed row
    of the output that predicts each response slot [g, Tn] (static)."""
    n, t = ids.shape
    w, rows = t - num_response, n // g
    ids3, mask3 = ids.reshape(rows, g, t), mask.reshape(rows, g, t).astype(jnp.int32)
    p_mask, r_mask = mask3[:, 0, :w], mask3[:, :, w:]  # [rows, W], [rows, g, Tn]
    seg = jnp.concatenate([p_mask, r_mask.reshape(rows, -1)], axis=1)
    branch = np.concatenate(
        [np.zeros(w, np.int32), np.repeat(np.arange(1, g + 1, dtype=np.int32), num_response)]
    )
    p_len = p_mask.sum(-1)
    p_pos = jnp.maximum(jnp.cumsum(p_mask, -1) - 1, 0)
    r_pos = p_len[:, None, None] + jnp.maximum(jnp.cumsum(r_mask, -1) - 1, 0)
    start = w + num_response * np.arange(g)  # each response's first slot in the packed row
    predict = start[:, None] + np.arange(num_response)[None, :] - 1
    predict[:, 0] = w - 1  # a response's first token is predicted by the prompt's last
    n_resp = r_mask.sum(-1)
    read_at = jnp.where(n_resp > 0, jnp.asarray(start)[None, :] + n_resp - 1, w - 1)
    packing = packed.Packing(
        ids=jnp.concatenate([ids3[:, 0, :w], ids3[:, :, w:].reshape(rows, -1)], axis=1),
        segment_ids=seg,
        positions=jnp.concatenate([p_pos, r_pos.reshape(rows, -1)], axis=1),
        branch_ids=jnp.broadcast_to(jnp.asarray(branch), seg.shape),
        read_at=read_at.astype(jnp.int32),
    )
    return packing, predict


def make_score_fn(
    lm_apply,
    ref_apply,
    value_apply,
    rm_apply,
    *,
    per_prompt=0,
    cfg=None,
    dp=1,
    group=0,
    ensemble_reward: Ensemble | None = None,
):
    """Roll-out scoring: (actor, ref, critic, rm params, ids [N, T], mask [N, T], Tn) ->
    {score [N], old_logp, ref_logp, values [N, Tn]}; one jitted forward of each model.

    An RM ensemble (``ensemble_reward``): ``rm_apply`` and the rm params are sequences of M
    (one forward of each member); score is their aggregation and ``members`` [M, N] the
    members' scores as aggregated (standardised).

    ``per_prompt`` > 0 (the roll-outs per prompt, consecutive rows; ``cfg`` the actor's
    LlamaConfig, ``dp`` the data-parallel devices): each forward runs on packed rows that hold
    one prompt and g of its responses (``score_group``), so the prompt is computed once for g;
    the outputs are those of the unpacked rows at every response slot that is a real token.
    ``group`` > 0 fixes g instead (a divisor of per_prompt)."""

    def rm_scores(rm, *args, **kw):
        if ensemble_reward is None:
            return rm_apply(rm, *args, **kw)
        return jnp.stack([f(q, *args, **kw) for f, q in zip(rm_apply, rm, strict=True)])

    def score(actor, ref, critic, rm, ids, mask, num_response, g):
        if g == 1:
            old_logp, _ = response_logprobs(lm_apply, actor, ids, mask, num_response)
            ref_logp, _ = response_logprobs(ref_apply, ref, ids, mask, num_response)
            values = response_slice(value_apply(critic, ids, mask), num_response)
            rm_score = rm_scores(rm, ids, mask)
        else:
            rows, predict = pack_scoring_rows(ids, mask, num_response, g)
            n = ids.shape[0]
            at = jnp.asarray(predict.reshape(-1))
            # [N/g, L, ...] -> the outputs that predict each response slot, [N, Tn, ...]
            take = lambda x: jnp.take(x, at, axis=1).reshape(n, num_response, *x.shape[2:])
            targets = ids[:, -num_response:]
            old_logp, _ = pl.logprobs_and_entropy(
                take(lm_apply(actor, rows.ids, None, packing=rows)), targets
            )
            ref_logp, _ = pl.logprobs_and_entropy(
                take(ref_apply(ref, rows.ids, None, packing=rows)), targets
            )
            values = take(value_apply(critic, rows.ids, None, packing=rows))
            rm_score = rm_scores(rm, rows.ids, None, packing=rows)
            rm_score = rm_score.reshape(*rm_score.shape[:-2], n)  # [(M,) N/g, g] -> [(M,) N]
        out = {
            "old_logp": old_logp,
            "ref_logp": ref_logp,
            "values": values.astype(jnp.float32),
        }
        if ensemble_reward is not None:
            rm_score, out["members"] = ensemble_reward(rm_score)
        out["score"] = rm_score.astype(jnp.float32)
        return out

    jitted = jax.jit(score, static_argnums=(6, 7))

    def call(actor, ref, critic, rm, ids, mask, num_response):
        n, t = ids.shape
        g = 1
        if per_prompt > 1:
            g = group or score_group(cfg, n, per_prompt, t - num_response, num_response, dp)
        return jitted(actor, ref, critic, rm, ids, mask, num_response, g)

    return call
