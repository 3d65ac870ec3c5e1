"""The PPO stage (RLHF's last step) on the one train loop.

Four models: the actor (trainable policy, "lm" head), the critic (trainable, "value" head,
initialised from the reward model: its score kernel, bias 0), the reference (frozen SFT policy)
and the reward model (frozen). One PPO iteration (docs/ppo.md):

    prompts   = next(prompt iterator)                                    [Q, Tp]
    responses = sampling.generate(actor, prompts, settings, num_samples=R) [Q·R, Tn] prompt-major
    score     = RM(prompt + response) at the last real token             [Q·R]
    old_logp, ref_logp, values = actor / ref / critic forward            [Q·R, Tn]
    rewards   = clip(normalise(score)) on the last token - β·KL_t        (core.ppo)
    adv, ret  = whiten(GAE(rewards, values; γ, λ)), GAE returns
    shift     = reward_difference_stats(score.reshape(Q, R))             (paper, Figure 1)
    then ppo_epochs × (Q·R / minibatch_size) optimizer steps of the clipped policy loss (actor)
    and the clipped value loss (critic), each a step of the one train loop.

How it maps onto the loop: the train params are {"actor", "critic"} and the optimizer is one
optax transformation made of two (policy lr, critic lr). The roll-out buffer is a
:class:`loop.StateSource`: at the first step of each iteration it rolls out with the current
actor params, then serves the iteration's minibatches (global jax.Arrays, batch-sharded).
Checkpoints fall on iteration boundaries, so the buffer is never saved: the source's state is the
prompt iterator's position and the running reward moments (float32 bits), and roll-out/minibatch
randomness is a function of (seed, iteration), so a killed run resumes bit for bit.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.core import policy_losses as pl
from metarm_jax.core import ppo as core
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.runtime.layout import StageDir
from metarm_jax.train import common, loop, optim
from metarm_jax.train.ensemble_reward import ensemble_of
from metarm_jax.train.offload import Frozen
from metarm_jax.train.rollout import Rollouts, settings
from metarm_jax.train.rollout_scoring import make_score_fn, response_logprobs, response_slice

# --------------------------------------------------------------------------------------------
# The step.
# --------------------------------------------------------------------------------------------


def make_step_fn(lm_apply, value_apply, pcfg) -> loop.StepFn:
    """The PPO train step on one minibatch: grads of {"actor", "critic"}.

    The actor's loss is gated by batch["actor_on"] (0 during critic warm-up) and, with
    target_kl > 0, by approx_kl(current vs roll-out policy on this minibatch) <= 1.5·target_kl:
    a gated actor gets an exactly zero gradient, which the optimizer treats as "no update".
    """
    target_kl = float(pcfg["target_kl"])

    def step_fn(params, batch, rng):
        del rng
        b = batch["rollout"]
        ids, mask, rmask = b["input_ids"], b["attention_mask"], b["response_mask"]
        n = rmask.shape[1]

        def loss_fn(p):
            logp, ent = response_logprobs(lm_apply, p["actor"], ids, mask, n)
            p_loss, p_metrics = core.policy_loss(
                logp, b["old_logp"], b["advantages"], rmask, clip_eps=pcfg["clip_eps"]
            )
            entropy = pl.masked_mean(ent, rmask)
            values = response_slice(value_apply(p["critic"], ids, mask), n)
            v_loss, v_metrics = core.value_loss(
                values, b["values"], b["returns"], rmask, clip_eps=pcfg["value_clip_eps"]
            )
            gate = b["actor_on"][0]
            if target_kl > 0:
                gate = gate * (p_metrics["ppo/approx_kl_k1"] <= 1.5 * target_kl)
            gate = jax.lax.stop_gradient(gate.astype(jnp.float32))
            actor_loss = p_loss - pcfg["ent_coef"] * entropy
            loss = gate * actor_loss + pcfg["vf_coef"] * v_loss
            return loss, {
                **p_metrics,
                **v_metrics,
                "ppo/entropy": entropy,
                "ppo/actor_update": gate,
                "ppo/actor_loss": actor_loss,
            }

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {"loss": loss, **metrics}

    return step_fn


# --------------------------------------------------------------------------------------------
# The stage.
# --------------------------------------------------------------------------------------------


def validate(config) -> None:
    """What the ppo stage needs from the rest of the config (its keys' values are checked by
    ``config_lib.validate``, which also runs this before any stage: ``stages.VALIDATORS``)."""
    if not config.ppo.rm_path:
        raise ConfigError(
            "config.ppo.rm_path is empty: PPO needs a reward model (an HF "
            "*ForSequenceClassification directory, e.g. <workdir>/export/rm "
            "written by the rm/metarm stage; with ppo.reward_models, the critic's start)."
        )
    for i, path in enumerate(config.ppo.reward_models):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(
                f"config.ppo.reward_models[{i}]={path!r}: no HF checkpoint there (no "
                "config.json); give the export directory of a trained reward model."
            )


def rm_paths(p) -> tuple[str, ...]:
    """The reward models that score every roll-out: ``ppo.reward_models`` (an ensemble) or
    ``ppo.rm_path``."""
    return tuple(p.reward_models) or (p.rm_path,)


def run_ppo(ctx, *, timer: dict | None = None) -> dict[str, Any]:
    """Stage ``ppo``: PPO of config.model (or ppo.policy_path) against the RM in ppo.rm_path.

    With ``ppo.reward_models`` the reward is an ensemble's aggregation (``ensemble_reward.Ensemble``);
    ``summary["rm_forwards_per_rollout"]`` counts the RM forwards each roll-out costs.

    Writes workdir/ppo (checkpoints, metrics.jsonl, tb/) and, with ppo.export,
    workdir/export/ppo (LlamaForCausalLM + tokenizer) and workdir/export/ppo_critic (value head + tokenizer).
    """
    config, mesh = ctx.config, ctx.mesh
    p = config.ppo  # resolved: every path and dtype is set (config_lib.resolve)
    validate(config)  # a stage of rlhf gets rm_path from it: checked here too
    pcfg = settings(p)
    tok_path = config.data.tokenizer_path or p.policy_path
    if not tok_path:
        raise ConfigError(
            "ppo: no tokenizer: set config.data.tokenizer_path (or a policy path "
            "whose directory holds one)."
        )
    tok = D.load_tokenizer(tok_path)

    def load(path, head, param_dtype=None):
        return models.from_config(
            config.model, head, mesh, path=path, param_dtype=param_dtype, seed=config.seed
        )

    with jax.set_mesh(mesh):
        actor_model = load(p.policy_path, "lm")
        ref_model = load(p.ref_path, "lm", p.frozen_dtype)
        ens = ensemble_of(p)  # PPO's reward: the RM in rm_path, or an ensemble's aggregation
        if ens is None:
            rm_apply, rm_params, *_ = models.split(load(p.rm_path, "reward", p.frozen_dtype))
        else:
            members = [models.split(load(path, "reward", p.frozen_dtype)) for path in rm_paths(p)]
            rm_apply = tuple(m.apply for m in members)
            rm_params = tuple(m.params for m in members)
            del members
        critic_model = load(p.critic_path, "value")
        lm_apply, actor_params, actor_gd, _ = models.split(actor_model)
        ref_apply, ref_params, *_ = models.split(ref_model)
        value_apply, critic_params, *_ = models.split(critic_model)
        del ref_model

        dcfg = config.data.copy_and_resolve_references()
        dcfg.prompt_batch_size = int(p.queries_per_iteration)
        prompts = D.prompt_iterator(
            dcfg, tok, num_epochs=0, drop_remainder=True, shard_index=0, shard_count=1
        )
        for _ in range(int(p.iteration_offset)):  # earlier rounds' prompts (a restored
            next(prompts)  # checkpoint sets the position anyway)

        source = Rollouts(
            config=config,
            mesh=mesh,
            prompts=prompts,
            actor_graphdef=actor_gd,
            lm_apply=lm_apply,
            ref=Frozen(ref_params, p.offload_frozen),
            rm=Frozen(rm_params, p.offload_frozen),
            critic_key="critic",
            score_fn=make_score_fn(
                lm_apply,
                ref_apply,
                value_apply,
                rm_apply,
                # data.shared_prompt: a prompt computed once for g of its roll-outs
                per_prompt=int(p.rollouts_per_query) if config.data.shared_prompt else 0,
                cfg=actor_model.cfg,
                dp=sharding.dp_size(mesh),
                ensemble_reward=ens,
            ),
            pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0,
            eos_id=tok.eos_token_id,
            timer=timer,
        )
        spi = source.steps_per_iteration
        total = int(p.iterations) * spi
        optimizer = optim.two_optimizers(
            optim.block_optimizer(p, config.train, p.policy_lr, total),
            optim.block_optimizer(p, config.train, p.critic_lr, total),
        )
        tcfg = config.train.copy_and_resolve_references()
        tcfg.save_every = int(p.save_every) * spi
        tcfg.eval_every = 0
        workdir = StageDir(ctx.workdir).train("ppo")

        def snapshot(step, params):
            nnx.update(actor_model, params["actor"])
            if step < total:  # the last one is export/ppo
                common.export(actor_model, ctx.workdir, f"ppo_iter{step // spi}", tokenizer=tok)

        params, summary = loop.train(
            tcfg,
            mesh=mesh,
            workdir=workdir,
            params={"actor": actor_params, "critic": critic_params},
            step_fn=make_step_fn(lm_apply, value_apply, pcfg),
            seed=config.seed,
            batches={"rollout": source},
            total_steps=total,
            optimizer=optimizer,
            desc="ppo",
            snapshot_every=int(p.export_every) * spi if p.export else 0,
            snapshot_fn=snapshot,
            boundary=spi,  # a checkpoint (a preemption's too) only between iterations
        )
        summary.update(
            iterations=int(p.iterations),
            steps_per_iteration=spi,
            rm_forwards_per_rollout=len(rm_paths(p)),
        )
        nnx.update(actor_model, params["actor"])
        nnx.update(critic_model, params["critic"])
        if p.export:
            summary["export"] = common.export(actor_model, ctx.workdir, "ppo", tokenizer=tok)
            common.export(critic_model, ctx.workdir, "ppo_critic", tokenizer=tok)
    return summary
