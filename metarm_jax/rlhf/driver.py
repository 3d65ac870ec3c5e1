"""Iterative RLHF with MetaRM: the stage ``rlhf`` runs the paper's rounds end to end, with the
controls that make the comparison mean something.

    [world]      synthetic world files (quickstart only)
    sft          supervised policy π_SFT                    (or config.model.hf_path)
    rm           vanilla reward model r_0 on the pairs      (or config.rlhf.rm_path)
    arms         every arm of the plan (metarm_jax/rlhf/plan.py), e.g. for the method:
      round r = 1..R:
        meta       k responses per train prompt from π_{r-1}   (OOD prompts in the OOD setting)
        metarm     r_r = MetaRM (η = meta.eta) on the ORIGINAL pairs, from r_{r-1} (or r_0)
        ppo        π_r = PPO from π_{r-1} against r_r, reference π_SFT; the prompt stream and
                   roll-out keys continue from round r-1 (ppo.iteration_offset)
      and the baselines the config asks for (eta0, oracle, vanilla_ppo, dpo, and the rivals:
      ensemble_*, warm, centred, whose RMs are steps too: rewards.py)
    samples      eval_k responses per prompt of every policy on the test prompts; one per prompt
                 of every MetaRM round on the validation prompts (which pick the best round)
    report       tables and figures (metarm_jax/rlhf/report.py)

Every step is an ordinary stage run in its own sub-directory of the workdir (``RunLayout``) with a
config derived from the run's config, once (``Runner``). So the run resumes at the stage and step
where it stopped.
"""

from __future__ import annotations

import json
import os
from typing import Any

from metarm_jax import data as D
from metarm_jax.config import stages
from metarm_jax.config.lib import derive
from metarm_jax.data import world_files
from metarm_jax.data.tokenizer import train_bpe_tokenizer
from metarm_jax.rlhf import plan, report, rewards, rm_methods
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import CONTINUOUS, ROUNDS, SINGLE, Arm, ArmRun, Round, RunRecord
from metarm_jax.rlhf.runner import Runner, export_of
from metarm_jax.runtime import fileio, hosts
from metarm_jax.runtime.layout import StageDir

# --------------------------------------------------------------------------------------------
# The run's data: the world, a tokenizer, the OOD prompt sets, the evaluation prompts.
# --------------------------------------------------------------------------------------------


def _world_overrides(runner: Runner, layout: RunLayout) -> dict[str, Any]:
    """Write the synthetic world once and point every data key at its files."""
    paths_file = layout.world_paths()
    if not os.path.exists(paths_file):
        cfg = runner.config.world
        paths = world_files.write_world(layout.path(layout.world), cfg) if runner.lead else None
        if runner.lead:
            fileio.write_json(paths_file, paths)
    hosts.barrier("rlhf:world")
    with open(paths_file) as f:
        paths = json.load(f)
    pairs, prompts = os.path.dirname(paths["pairs_train"]), os.path.dirname(paths["prompts_train"])
    return {
        "data.tokenizer_path": paths["tokenizer"],
        "data.dataset": "hh_rlhf",
        "data.path": pairs,
        "data.split": "train",
        "data.eval_split": "test",
        "data.sft_dataset": "hh_rlhf",
        "data.sft_path": os.path.dirname(paths["sft_train"]),
        "data.sft_split": "train",
        "data.prompt_dataset": "prompts",
        "data.prompt_path": prompts,
        "data.prompt_split": "train",
        "rlhf.eval_prompt_dataset": "prompts",
        "rlhf.eval_prompt_path": prompts,
        "rlhf.eval_prompt_split": "test",
        "rlhf.valid_prompt_split": "valid",
        "rlhf.ood_prompt_dataset": "prompts",
        "rlhf.ood_prompt_path": os.path.dirname(paths["prompts_ood"]),
        "rlhf.ood_prompt_split": "train",
        "rlhf.ood_eval_split": "test",
        "rlhf.ood_valid_split": "",
    }


def _tokenizer(runner: Runner, layout: RunLayout, config) -> str:
    """Train (once) a BPE tokenizer on the run's preference pairs; returns its directory."""
    out = layout.path(layout.tokenizer)
    if not os.path.exists(os.path.join(out, "tokenizer.json")) and runner.lead:
        d = config.data
        source = D.DataSource.of(
            d.dataset,
            d.path,
            split=d.split,
            name=d.name,
            data_dir=d.data_dir,
            on_bad_record="skip",
            max_skip_fraction=1.0,
        )
        pairs = D.load("preference", source)
        texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
        train_bpe_tokenizer(texts, int(config.rlhf.tokenizer_vocab), out)
    hosts.barrier("rlhf:tokenizer")
    return out


def _ood_overrides(rc) -> dict[str, Any]:
    """Figure 3: meta samples, PPO and evaluation on the OOD prompts."""
    return {
        "data.prompt_dataset": rc.ood_prompt_dataset,
        "data.prompt_path": rc.ood_prompt_path,
        "data.prompt_split": rc.ood_prompt_split,
        "rlhf.eval_prompt_dataset": rc.ood_prompt_dataset,
        "rlhf.eval_prompt_path": rc.ood_prompt_path,
        "rlhf.eval_prompt_split": rc.ood_eval_split,
        "rlhf.valid_prompt_split": rc.ood_valid_split,
    }


def _prepare(ctx: stages.StageContext, layout: RunLayout) -> stages.StageContext:
    """The run's context with its data in place: the world's paths, a trained tokenizer and the
    OOD prompts, as config values every later step sees (one derived config)."""
    runner = Runner(ctx)
    overrides: dict[str, Any] = _world_overrides(runner, layout) if ctx.config.rlhf.world else {}
    config = derive(ctx.config, overrides)
    if not config.data.tokenizer_path and config.rlhf.tokenizer_vocab:
        overrides["data.tokenizer_path"] = _tokenizer(runner, layout, config)
    if config.rlhf.meta_prompts == "ood":
        overrides.update(_ood_overrides(config.rlhf))
    if not overrides:
        return ctx
    return stages.StageContext(derive(ctx.config, overrides), ctx.mesh, ctx.workdir)


def eval_prompt_sets(config) -> tuple[dict, dict]:
    """(validation, test) prompt sources, disjoint: the validation split when there is one
    (``rlhf.valid_prompt_split``), else the first ``valid_prompts`` prompts of the test source,
    the test set being the ``eval_prompts`` after them."""
    rc = config.rlhf
    source = {"dataset": rc.eval_prompt_dataset, "path": rc.eval_prompt_path}
    if rc.valid_prompt_split:  # not the test split (config_lib._check_rlhf)
        valid = dict(source, split=rc.valid_prompt_split, skip=0, max=int(rc.valid_prompts))
        test = dict(source, split=rc.eval_prompt_split, skip=0, max=int(rc.eval_prompts))
    else:
        valid = dict(source, split=rc.eval_prompt_split, skip=0, max=int(rc.valid_prompts))
        test = dict(
            source, split=rc.eval_prompt_split, skip=int(rc.valid_prompts), max=int(rc.eval_prompts)
        )
    return valid, test


# --------------------------------------------------------------------------------------------
# Steps.
# --------------------------------------------------------------------------------------------


def _sample_overrides(policy: str, k: int, out: str, prompts: dict, round_: int = 0) -> dict:
    return {
        "build_meta.policy_path": policy,
        "build_meta.k": k,
        "build_meta.round": round_,
        "build_meta.output_path": out,
        "build_meta.prompt_dataset": prompts["dataset"],
        "build_meta.prompt_path": prompts["path"],
        "build_meta.prompt_split": prompts["split"],
        **(
            {
                "build_meta.skip_prompts": prompts.get("skip", 0),
                "build_meta.max_prompts": prompts["max"],
            }
            if "max" in prompts
            else {}
        ),
        "data.meta_path": "",
    }


def _ppo_overrides(policy: str, ref: str, rm: str, **extra) -> dict[str, Any]:
    out = {"ppo.policy_path": policy, "ppo.ref_path": ref, "ppo.rm_path": rm, "ppo.critic_path": rm}
    out.update({f"ppo.{k}": v for k, v in extra.items()})
    return out


def _rounds_arm(runner, layout, arm: Arm, rec: RunRecord, meta_prompts: dict) -> ArmRun:
    """The R rounds of one ROUNDS arm: meta samples -> the arm's RM -> PPO, each round continuing
    from the arm's previous policy and RM."""
    config = runner.config
    iters = rec.ppo_iterations
    train_rm = rm_methods.METHODS[arm.rm_method]
    policy, rm = rec.sft, rec.rm0
    out = ArmRun(arm)
    for r in range(1, rec.rounds + 1):
        meta = layout.meta_file(arm, r)
        runner.step(
            layout.meta_step(arm, r),
            "build_meta",
            _sample_overrides(policy, int(config.meta.k), meta, meta_prompts, r),
        )
        start = {"previous": rm, "vanilla": rec.rm0, "restart": rec.sft}[config.rlhf.rm_init]
        res = train_rm(rm_methods.RMRequest(runner, layout, arm, r, start, meta))
        rm = res.path
        name = layout.ppo_step(arm, r)
        ppo = runner.step(
            name, "ppo", _ppo_overrides(policy, rec.sft, rm, iteration_offset=(r - 1) * iters)
        )
        policy = export_of(ppo, "ppo")
        out.rounds.append(
            Round(
                round=r,
                policy=policy,
                rm=rm,
                meta=meta,
                rm_metrics=res.metrics,
                rm_steps=res.steps,
                judge=res.judge,
                ppo_metrics=StageDir(layout.path(name)).metrics("ppo"),
                ppo_iterations=iters,
            )
        )
    return out


def _continuous_arm(runner, layout, arm: Arm, rec: RunRecord) -> ArmRun:
    """PPO against the arm's fixed reward (``rewards.SOURCES[arm.reward]``: r_0, the world's
    gold for the ceiling, a rival's RM or ensemble) for the whole budget, exported at every round
    boundary; the critic starts from r_0 in every arm."""
    iters, name = rec.ppo_iterations, layout.single_step(arm)
    reward = rewards.SOURCES[arm.reward](rewards.RewardRequest(runner, layout, arm, rec))
    overrides = _ppo_overrides(
        rec.sft, rec.sft, reward.rm, iterations=iters * rec.rounds, export_every=iters,
        **reward.ppo,
    )  # fmt: skip
    overrides["ppo.critic_path"] = rec.rm0
    s = runner.step(name, "ppo", overrides)
    final = export_of(s, "ppo")
    where = StageDir(layout.path(name))
    at = {r: final if r == rec.rounds else where.export(f"ppo_iter{r * iters}") for r in
          range(1, rec.rounds + 1)}  # fmt: skip
    return ArmRun(
        arm,
        at_round=at,
        final=final,
        ppo_metrics=where.metrics("ppo"),
        rms=reward.rms,
        rm_steps=reward.rm_steps,
    )


def _single_arm(runner, layout, arm: Arm, rec: RunRecord) -> ArmRun:
    """DPO on the same pairs from π_SFT."""
    s = runner.step(layout.single_step(arm), arm.name, {"model.hf_path": rec.sft})
    return ArmRun(arm, final=export_of(s, arm.name), steps=int(s.get("steps", 0)))


def run(ctx: stages.StageContext) -> dict[str, Any]:
    """Stage ``rlhf``."""
    layout = RunLayout(ctx.workdir)
    ctx = _prepare(ctx, layout)
    runner = Runner(ctx)
    config, rc, d = ctx.config, ctx.config.rlhf, ctx.config.data
    arms = plan.arms(config)

    # π_SFT and r_0
    sft = runner.step(layout.sft, "sft", {}) if rc.sft else None
    sft_path = export_of(sft, "sft") if sft else config.model.hf_path  # validated: not ''
    rm0_step = None if rc.rm_path else runner.step(layout.rm0, "rm", {"model.hf_path": sft_path})
    rec = RunRecord(
        sft=sft_path,
        rm0=rc.rm_path or export_of(rm0_step, "rm"),
        rm0_steps=int(rm0_step.get("steps", 0)) if rm0_step else 0,
        rm0_metrics="" if rc.rm_path else StageDir(layout.path(layout.rm0)).metrics("rm"),
        ppo_iterations=int(config.ppo.iterations),
        rounds=int(rc.rounds),
        arms={},
    )
    meta_prompts = {"dataset": d.prompt_dataset, "path": d.prompt_path, "split": d.prompt_split}
    for arm in arms:
        if arm.schedule == ROUNDS:
            rec.arms[arm.name] = _rounds_arm(runner, layout, arm, rec, meta_prompts)
        elif arm.schedule == CONTINUOUS:
            rec.arms[arm.name] = _continuous_arm(runner, layout, arm, rec)
        elif arm.schedule == SINGLE:
            rec.arms[arm.name] = _single_arm(runner, layout, arm, rec)

    # Samples: eval_k per test prompt for every policy (the judge reads the first); one per
    # validation prompt for every policy (the method's rounds choose the best round there, and
    # every arm its peak).
    valid_prompts, test_prompts = eval_prompt_sets(config)
    policies = rec.policies()
    test, valid = {}, {}
    for name, path in policies.items():
        test[name] = layout.sample_file("test", name)
        runner.step(
            layout.sample_step("test", name),
            "build_meta",
            _sample_overrides(path, int(rc.eval_k), test[name], test_prompts),
        )
    for name in policies:
        valid[name] = layout.sample_file("valid", name)
        runner.step(
            layout.sample_step("valid", name),
            "build_meta",
            _sample_overrides(policies[name], 1, valid[name], valid_prompts),
        )
    return report.build(ctx, rec, test_samples=test, valid_samples=valid)
