"""PPO roll-outs: the buffer of one iteration, scored by the four models (the RM: one, or an
ensemble of M whose scores are aggregated, ``Ensemble``), as a batch source of the one train loop
(``train/ppo.py`` is the step and the stage).

At the first step of every iteration :class:`Rollouts` samples ``rollouts_per_query`` responses
for ``queries_per_iteration`` prompts with the current actor, scores them (actor, reference,
critic and RM forwards, one jitted function), turns scores into per-token rewards and GAE
advantages, logs the roll-out and shift statistics, and then serves the iteration's minibatches.
Checkpoints fall on iteration boundaries, so the buffer is never saved: the source's state is the
prompt iterator's position and the running reward moments (float32 bits), and roll-out and
minibatch randomness is a function of (seed, iteration), so a killed run resumes bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from metarm_jax import data as D
from metarm_jax import sharding as shd
from metarm_jax.config import stages
from metarm_jax.core import ensemble, packed, stats
from metarm_jax.core import policy_losses as pl
from metarm_jax.core import ppo as core
from metarm_jax.generation import sampling
from metarm_jax.models import hf
from metarm_jax.runtime import faults
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.train import loop

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


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """PPO's reward from M reward models (``ppo.reward_models``): each member scores every
    roll-out, the scores are standardised per member (``mean``/``std`` [M], None: as they are)
    and aggregated (``core.ensemble.aggregate``: ``agg``, λ = ``lam``)."""

    agg: str
    lam: float
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __call__(self, members: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[M, N] raw scores -> (reward [N], the members' scores on the scale aggregated [M, N])."""
        if self.mean is not None:
            members = ensemble.standardize(members, jnp.asarray(self.mean), jnp.asarray(self.std))
        return ensemble.aggregate(members, self.agg, self.lam), members


def member_scale(path: str, i: int) -> tuple[float, float]:
    """(mean, std) of an RM's scores on its validation pairs, from its export's scoring convention
    (the rm/metarm stage writes them into config.json: ``validation_reward_mean``/``_std``)."""
    scoring = hf.read_config(path).get(hf.SCORING_KEY) or {}
    mean, std = scoring.get("validation_reward_mean"), scoring.get("validation_reward_std")
    if mean is None or std is None or not std > 0:
        raise ConfigError(
            f"config.ppo.reward_models[{i}]={path!r}: its config.json has no validation reward "
            f"mean and positive std ({hf.SCORING_KEY}.validation_reward_mean/_std, written by the "
            "rm and metarm stages) to put the members on one scale; set "
            "ppo.ensemble_standardize=False to aggregate the raw scores."
        )
    return float(mean), float(std)


def ensemble_from(paths, agg: str, lam: float, standardize: bool) -> Ensemble:
    """The ensemble of the RM exports ``paths`` (standardised by their validation scores)."""
    mean = std = None
    if standardize:
        mean, std = zip(*(member_scale(path, i) for i, path in enumerate(paths)))
    return Ensemble(agg, float(lam), mean, std)


def ensemble_of(p) -> Ensemble | None:
    """The ensemble ``config.ppo`` asks for (``reward_models``), or None (one RM)."""
    paths = tuple(p.reward_models)
    if not paths:
        return None
    return ensemble_from(paths, p.ensemble_agg, p.ensemble_lambda, p.ensemble_standardize)


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


def advantages(
    pcfg,
    moments: core.RunningMoments,
    score,
    old_logp,
    ref_logp,
    values,
    rmask,
    num_queries: int,
    bin_edges,
):
    """Rewards, GAE and the roll-out statistics (pure; jitted by the caller).

    score [N], old_logp/ref_logp/values/rmask [N, Tn]; rows are prompt-major (N = Q·R).
    Returns (moments, {advantages, returns [N, Tn]}, metrics).
    """
    moments = core.update_moments(moments, score)
    if pcfg["reward_norm"] == "none":
        s = score
    else:
        s = core.normalize_scores(score, moments, subtract_mean=pcfg["reward_norm"] == "standard")
    clip = pcfg["reward_clip"] or None
    clipped = (
        jnp.mean((jnp.abs(s) > clip).astype(jnp.float32))
        if clip is not None
        else jnp.zeros((), jnp.float32)
    )
    s = core.clip_rewards(s, clip)
    kl = core.kl_per_token(
        old_logp, ref_logp, rmask, estimator=pcfg["kl_estimator"], clip=pcfg["kl_clip"] or None
    )
    rewards = core.token_rewards(s, kl, rmask, beta=pcfg["kl_beta"])
    adv, ret = core.gae(rewards, values, rmask, gamma=pcfg["gamma"], lam=pcfg["lam"])
    if pcfg["whiten_advantages"]:
        adv = core.whiten(adv, rmask)
    m = rmask.astype(bool)
    shift = stats.reward_difference_stats(score.reshape(num_queries, -1), bin_edges)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    metrics = {
        "rollout/score_mean": f32(score.mean()),
        "rollout/score_std": f32(score.std()),
        "rollout/score_used_mean": f32(s.mean()),
        "rollout/reward_clip_frac": clipped,  # scores the clip cut (flat for PPO)
        "rollout/kl": f32(pl.masked_sum(kl, m, axis=-1).mean()),  # Σ_t KL_t, mean over rows
        "rollout/kl_token_mean": f32(pl.masked_mean(kl, m)),
        "rollout/return_mean": f32(rewards.sum(-1).mean()),  # score - β Σ KL
        "rollout/response_length": f32(m.sum(-1).mean()),
        "rollout/value_mean": f32(pl.masked_mean(values, m)),
        "rollout/running_score_mean": moments.mean,
        "rollout/running_score_std": moments.std(),
        "rollout/within_prompt_score_std": f32(score.reshape(num_queries, -1).std(-1).mean()),
        "shift/absdiff_mean": shift["mean"],
        "shift/absdiff_var": shift["var"],
        "shift/absdiff_hist": shift["hist"],
        "shift/num_pairs": shift["num_pairs"],
    }
    return moments, {"advantages": adv, "returns": ret}, metrics


# --------------------------------------------------------------------------------------------
# Frozen models: host offload between uses.
# --------------------------------------------------------------------------------------------


def host_memory_kind() -> str | None:
    """'pinned_host' when the device has it (GPU, TPU, and jax's CPU client), else None."""
    kinds = {m.kind for m in jax.devices()[0].addressable_memories()}
    return "pinned_host" if "pinned_host" in kinds else None


class Frozen:
    """Params of a frozen model; with ``offload``, kept in host memory between uses.

    ``get()`` returns them on their device shardings (the one table's); ``release()`` moves them
    back to host memory (a host memory kind when the backend has one, else numpy arrays).
    """

    def __init__(self, params, offload: bool):
        self.shardings = jax.tree.map(lambda x: x.sharding, params)
        self.offload = offload
        self.kind = host_memory_kind() if offload else None
        self.params = params
        self.release()

    def get(self):
        if self.offload:
            return jax.device_put(self.params, self.shardings)
        return self.params

    def release(self) -> None:
        if not self.offload:
            return
        if self.kind is not None:
            self.params = jax.device_put(
                self.params, jax.tree.map(lambda s: s.with_memory_kind(self.kind), self.shardings)
            )
        else:
            self.params = jax.device_get(self.params)


# --------------------------------------------------------------------------------------------
# The roll-out buffer: a StateSource of the one loop.
# --------------------------------------------------------------------------------------------


def _f32_bits(x) -> int:
    return int(np.asarray(x, np.float32).view(np.uint32))


def _from_bits(b: int) -> jax.Array:
    return jnp.asarray(np.asarray(b, np.uint32).view(np.float32))


def load_token_fn(config, key: str = "monitor"):
    """The optional function of token ids that ``config.ppo.<key>`` names ("module:function", a
    factory called with the config; checked by ``config_lib.validate``), or None: ``monitor``
    (logged) or ``reward_fn`` (replaces the RM's score, e.g. the synthetic world's gold reward for
    the ceiling arm)."""
    spec = config.ppo[key]
    return stages.load_function(spec, f"ppo.{key}")(config) if spec else None


class Rollouts(loop.StateSource):
    """Rolls out at the first step of every iteration, then serves its minibatches."""

    def __init__(
        self,
        *,
        config,
        mesh,
        prompts,
        actor_graphdef,
        lm_apply,
        ref: Frozen,
        rm: Frozen,
        critic_key: str,
        score_fn,
        pad_id: int,
        eos_id: int | None,
        timer: dict | None = None,
    ):
        p = config.ppo
        self.pcfg = settings(p)
        self.mesh, self.prompts = mesh, prompts
        self.actor_graphdef, self.lm_apply = actor_graphdef, lm_apply
        self.ref, self.rm, self.critic_key, self.score_fn = ref, rm, critic_key, score_fn
        self.pad_id, self.eos_id = pad_id, eos_id
        self.q, self.r = int(p.queries_per_iteration), int(p.rollouts_per_query)
        self.n = self.q * self.r
        self.mb = int(p.minibatch_size)
        self.num_mb = self.n // self.mb
        self.epochs = int(p.ppo_epochs)
        self.steps_per_iteration = self.epochs * self.num_mb
        self.critic_warmup = int(p.critic_warmup)
        self.seed = int(p.seed)  # resolved (-1 = config.seed)
        # PPO iterations this arm ran before this stage (earlier rounds): roll-out and minibatch
        # keys continue from there, as the prompt stream does (run_ppo skips as many batches).
        self.iteration_offset = int(p.iteration_offset)
        self.sample_settings = sampling.settings(
            config.sampling, **({"max_new_tokens": p.max_new_tokens} if p.max_new_tokens else {})
        )
        nb, hi = int(p.shift_hist_bins), float(p.shift_hist_max)
        self.bin_edges = np.concatenate([np.linspace(0.0, hi, nb + 1), [np.inf]]).astype(np.float32)
        self.log_values = bool(p.shift_log_values)
        self.moments = core.RunningMoments.init()
        self.buffer: dict[str, jax.Array] | None = None
        self.buffer_iteration = -1
        self.metrics: dict[str, Any] = {}
        self.timer = timer if timer is not None else {}
        self.monitor = load_token_fn(config, "monitor")
        self.reward_fn = load_token_fn(config, "reward_fn")
        num_queries = self.q
        self._advantages = jax.jit(
            lambda mo, sc, ol, rl, v, m, e: advantages(
                self.pcfg, mo, sc, ol, rl, v, m, num_queries, e
            )
        )
        batch_sh = lambda nd: shd.batch_sharding(mesh, nd)
        self._take = jax.jit(lambda buf, idx: jax.tree.map(lambda x: x[idx], buf))
        self._batch_sh = batch_sh

    # -------------------------------------------------------------- the iteration's roll-out

    def _rng(self, *path) -> jax.Array:
        key = jax.random.key(self.seed)
        for i in path:
            key = jax.random.fold_in(key, i)
        return key

    def rollout(self, params, iteration: int) -> None:
        t0 = time.perf_counter()
        batch = next(self.prompts)
        stream_iteration = self.iteration_offset + iteration  # this arm's PPO iterations so far
        ids, pmask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
        keep = D.real_rows(batch)
        if not keep.all() or len(ids) != self.q:
            raise ConfigError(
                f"ppo: a prompt batch has {int(keep.sum())} real prompts, expected "
                f"ppo.queries_per_iteration={self.q}; the prompt iterator must drop "
                "the remainder (it does by default)."
            )
        width = sampling.bucket_length(
            int((pmask > 0).sum(1).max()), self.sample_settings.prompt_bucket_min
        )
        ids, pmask = sampling.left_pack(ids, pmask, width, self.pad_id)
        out = sampling.generate(
            (self.actor_graphdef, params["actor"]),
            ids,
            pmask,
            self._rng(0, stream_iteration),
            self.sample_settings,
            num_samples=self.r,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            mesh=self.mesh,
        )
        tokens, rmask = jax.block_until_ready((out.tokens, out.mask))
        t1 = time.perf_counter()

        rep = lambda x: np.repeat(x, self.r, axis=0)
        seq_ids = jnp.concatenate([self._put(rep(ids)), tokens], axis=1)
        seq_mask = jnp.concatenate([self._put(rep(pmask)), rmask], axis=1)
        num_response = int(tokens.shape[1])
        scored = self.score_fn(
            params["actor"],
            self.ref.get(),
            params["critic"],
            self.rm.get(),
            seq_ids,
            seq_mask,
            num_response,
        )
        scored = jax.block_until_ready(scored)
        host = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
        if self.reward_fn is not None:  # PPO on a given reward of the tokens (e.g. gold)
            given = np.asarray(
                self.reward_fn(rep(ids), rep(pmask), host(tokens), host(rmask)), np.float32
            )
            sh = scored["score"].sharding
            scored = dict(
                scored, score=jax.make_array_from_callback(given.shape, sh, lambda i: given[i])
            )
        scored = dict(
            scored,
            score=faults.poison("reward", scored["score"]),
            values=faults.poison("critic_value", scored["values"]),
        )
        for key, what in (
            ("score", "the reward model's scores"),
            ("values", "the critic's values"),
        ):
            bad = int(np.sum(~np.isfinite(shd.to_host(scored[key]))))
            if bad:  # nothing of this iteration reaches an update, and so no checkpoint
                raise loop.TrainingDiverged(
                    f"ppo: iteration {self.iteration_offset + iteration} (this stage's iteration "
                    f"{iteration}): {bad} of {scored[key].size} of {what} are not finite; no "
                    "update used them. Check the reward model / critic checkpoint, or lower "
                    "ppo.critic_lr."
                )
        self.ref.release()
        self.rm.release()
        t2 = time.perf_counter()
        members = scored.pop("members", None)

        self.moments, adv, metrics = self._advantages(
            self.moments,
            scored["score"],
            scored["old_logp"],
            scored["ref_logp"],
            scored["values"],
            rmask,
            jnp.asarray(self.bin_edges),
        )
        actor_on = jnp.full((self.n,), float(iteration >= self.critic_warmup), jnp.float32)
        self.buffer = {
            "input_ids": seq_ids,
            "attention_mask": seq_mask,
            "response_mask": rmask,
            "old_logp": scored["old_logp"],
            "values": scored["values"],
            **adv,
            "actor_on": actor_on,
        }
        self.buffer_iteration = iteration
        metrics = dict(jax.device_get(metrics))
        metrics["shift/absdiff_hist_max"] = float(self.bin_edges[-2])
        if self.log_values:
            score = shd.to_host(scored["score"]).reshape(self.q, self.r)
            metrics["shift/absdiff"] = stats.abs_differences(score, None).astype(np.float64)
        if members is not None:  # the ensemble's members as aggregated (standardised)
            m = shd.to_host(members)
            metrics["rollout/ensemble_spread"] = float(np.mean(m.std(axis=0)))
            metrics["rollout/ensemble_member_mean"] = m.mean(axis=1).astype(np.float64)
        if self.monitor is not None:
            values = self.monitor(rep(ids), rep(pmask), host(tokens), host(rmask))
            metrics["rollout/monitor_mean"] = float(np.mean(values))
        metrics["rollout/iteration"] = float(iteration)
        metrics["rollout/stream_iteration"] = float(stream_iteration)
        metrics["rollout/prompt_index"] = np.asarray(batch["prompt_index"], np.float64)
        metrics["rollout/actor_on"] = float(iteration >= self.critic_warmup)
        metrics["time/generate_s"] = t1 - t0
        metrics["time/score_s"] = t2 - t1
        self.timer.setdefault("generate", []).append(t1 - t0)
        self.timer.setdefault("score", []).append(t2 - t1)
        self.metrics = metrics

    def _put(self, x: np.ndarray) -> jax.Array:
        sh = self._batch_sh(x.ndim)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    # -------------------------------------------------------------- StateSource

    def next_batch(self, params, step: int):
        iteration, j = divmod(step, self.steps_per_iteration)
        if j == 0:
            self.rollout(params, iteration)
        elif self.buffer_iteration != iteration:
            raise RuntimeError(
                f"ppo: step {step} is inside iteration {iteration}, whose roll-out "
                "buffer is gone; checkpoints must fall on iteration boundaries."
            )
        epoch, b = divmod(j, self.num_mb)
        perm = jax.random.permutation(
            self._rng(1, self.iteration_offset + iteration, epoch), self.n
        )
        idx = perm[b * self.mb : (b + 1) * self.mb]
        out = self._take(self.buffer, idx)
        return jax.tree.map(lambda x: jax.device_put(x, self._batch_sh(x.ndim)), out)

    def pop_metrics(self) -> Mapping[str, Any]:
        m, self.metrics = self.metrics, {}
        return m

    def get_state(self) -> bytes:
        it_state = self.prompts.get_state()
        return json.dumps(
            {
                "prompts": it_state,
                "moments": {
                    k: _f32_bits(getattr(self.moments, k)) for k in ("count", "mean", "m2")
                },
            }
        ).encode()

    def set_state(self, state: bytes) -> None:
        s = json.loads(state.decode())
        self.prompts.set_state(s["prompts"])
        self.moments = core.RunningMoments(**{k: _from_bits(v) for k, v in s["moments"].items()})
        self.buffer, self.buffer_iteration = None, -1


def settings(p) -> dict[str, Any]:
    """The numeric/static PPO settings the jitted code reads (``config_lib.validate`` checked
    them before the run)."""
    return {
        k: p[k]
        for k in (
            "reward_norm",
            "reward_clip",
            "kl_estimator",
            "kl_clip",
            "kl_beta",
            "gamma",
            "lam",
            "whiten_advantages",
            "clip_eps",
            "value_clip_eps",
            "vf_coef",
            "ent_coef",
            "target_kl",
        )
    }
