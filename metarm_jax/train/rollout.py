"""PPO roll-outs: the buffer of one iteration, scored by the four models (the RM: one, or an
ensemble of M whose scores are aggregated, ``ensemble_reward.Ensemble``), as a batch source of the
one train loop (``train/ppo.py`` is the step and the stage).

At the first step of every iteration :class:`Rollouts` samples ``rollouts_per_query`` responses
for ``queries_per_iteration`` prompts with the current actor, scores them (actor, reference,
critic and RM forwards, one jitted function: ``rollout_scoring.make_score_fn``), turns scores into
per-token rewards and GAE advantages (``advantages``), logs the roll-out and shift statistics, and
then serves the iteration's minibatches. The frozen reference and RM are ``offload.Frozen``.
Checkpoints fall on iteration boundaries, so the buffer is never saved: the source's state is the
prompt iterator's position and the running reward moments (float32 bits), and roll-out and
minibatch randomness is a function of (seed, iteration), so a killed run resumes bit for bit.
"""

from __future__ import annotations

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
from metarm_jax.core import policy_losses as pl
from metarm_jax.core import ppo as core
from metarm_jax.core import stats
from metarm_jax.generation import sampling
from metarm_jax.runtime import faults
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.train import loop

# Re-exported for metarm_jax/rlhf (report.py, kl.py), which import them from here.
from metarm_jax.train.ensemble_reward import ensemble_from as ensemble_from
from metarm_jax.train.offload import Frozen
from metarm_jax.train.rollout_scoring import response_logprobs as response_logprobs

# --------------------------------------------------------------------------------------------
# Rewards and advantages of one roll-out batch.
# --------------------------------------------------------------------------------------------


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
        self.par = p.reward_shaping == "par"  # PAR: the score relative to reference samples
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
        out = self._sample(params["actor"], ids, pmask, self._rng(0, stream_iteration))
        tokens, rmask = jax.block_until_ready((out.tokens, out.mask))
        t1 = time.perf_counter()

        rep = lambda x: np.repeat(x, self.r, axis=0)
        scored, seq_ids, seq_mask = self._score(params, ids, pmask, tokens, rmask)
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
        if self.par:  # PAR: the score against the reference policy's samples of each prompt
            scored, par_metrics = self._preference_as_reward(
                params, ids, pmask, scored, stream_iteration
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
        if self.par:
            metrics.update(par_metrics)
        metrics["rollout/iteration"] = float(iteration)
        metrics["rollout/stream_iteration"] = float(stream_iteration)
        metrics["rollout/prompt_index"] = np.asarray(batch["prompt_index"], np.float64)
        metrics["rollout/actor_on"] = float(iteration >= self.critic_warmup)
        metrics["time/generate_s"] = t1 - t0
        metrics["time/score_s"] = t2 - t1
        self.timer.setdefault("generate", []).append(t1 - t0)
        self.timer.setdefault("score", []).append(t2 - t1)
        self.metrics = metrics

    def _sample(self, policy_params, ids, pmask, key):
        """``rollouts_per_query`` samples per (left-packed) prompt from a policy's params."""
        return sampling.generate(
            (self.actor_graphdef, policy_params),
            ids,
            pmask,
            key,
            self.sample_settings,
            num_samples=self.r,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            mesh=self.mesh,
        )

    def _score(self, params, ids, pmask, tokens, rmask):
        """The four models' scoring of each prompt (repeated per sample) followed by its sampled
        tokens: (``score_fn``'s outputs, the sequences' ids, their mask)."""
        rep = lambda x: np.repeat(x, self.r, axis=0)
        seq_ids = jnp.concatenate([self._put(rep(ids)), tokens], axis=1)
        seq_mask = jnp.concatenate([self._put(rep(pmask)), rmask], axis=1)
        scored = self.score_fn(
            params["actor"],
            self.ref.get(),
            params["critic"],
            self.rm.get(),
            seq_ids,
            seq_mask,
            int(tokens.shape[1]),
        )
        return scored, seq_ids, seq_mask

    def _preference_as_reward(self, params, ids, pmask, scored, stream_iteration: int):
        """PAR (``core.preference_as_reward``): rollouts_per_query references per prompt sampled
        from the reference policy with this iteration's own keys (a resumed run draws the same),
        scored by the same RM; the roll-outs' score becomes the mean of σ(r − r_ref)."""
        out = self._sample(self.ref.get(), ids, pmask, self._rng(2, stream_iteration))
        ref, _, _ = self._score(params, ids, pmask, out.tokens, out.mask)
        host = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
        raw, ref_raw = host(scored["score"]), host(ref["score"])
        par = np.asarray(
            core.preference_as_reward(
                jnp.asarray(raw.reshape(self.q, self.r)), jnp.asarray(ref_raw.reshape(self.q, -1))
            ),
            np.float32,
        ).reshape(-1)
        sh = scored["score"].sharding
        shaped = jax.make_array_from_callback(par.shape, sh, lambda i: par[i])
        metrics = {
            "rollout/par_rm_score_mean": float(raw.mean()),
            "rollout/par_ref_score_mean": float(ref_raw.mean()),
        }
        return dict(scored, score=shaped), metrics

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
