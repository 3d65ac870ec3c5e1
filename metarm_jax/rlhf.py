"""Iterative RLHF with MetaRM: the stage ``rlhf`` runs the paper's rounds end to end.

    [world]      synthetic world files (quickstart only)
    sft          supervised policy π_SFT                    (or config.model.hf_path)
    rm           vanilla reward model r_0 on the pairs      (or config.rlhf.rm_path)
    round r = 1..R:
      meta       k responses per prompt from π_{r-1}         (build_meta; OOD prompts in the
                                                              OOD setting)
      metarm     r_r = MetaRM on the ORIGINAL pairs, starting from r_{r-1} or r_0
      ppo        π_r = PPO from π_{r-1} against r_r, reference π_SFT
      eval       π_r vs π_SFT on held-out prompts
    baselines    vanilla PPO (r_0, the same total PPO budget) and DPO on the same pairs
    report       tables and figures (metarm_jax/eval/report.py)

Every step is an ordinary stage run in its own sub-directory of the workdir with a config derived
from the run's config; a finished step leaves ``DONE.json`` there and is skipped on restart, and a
step that was killed resumes from its own checkpoints (the loop's orbax checkpoints, build_meta's
chunks). So the run resumes at the stage and step where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax

from metarm_jax import data as D
from metarm_jax import fileio, stages
from metarm_jax.config_lib import derive
from metarm_jax.data import synthetic
from metarm_jax.data.tokenizer import train_bpe_tokenizer
from metarm_jax.errors import ConfigError
from metarm_jax.eval import report as report_lib

DONE = "DONE.json"


class Runner:
    """Runs sub-stages in their own directories, once each (DONE.json marks a finished one)."""

    def __init__(self, ctx: stages.StageContext):
        self.ctx = ctx
        self.lead = jax.process_index() == 0

    def step(self, name: str, stage: str, overrides: dict[str, Any]) -> dict:
        workdir = os.path.join(self.ctx.workdir, name)
        done = os.path.join(workdir, DONE)
        if os.path.exists(done):
            with open(done) as f:
                return json.load(f)
        if self.lead:
            print(f"-- rlhf: {name} ({stage})", flush=True)
        config = derive(self.ctx.config, overrides)
        with config.unlocked():
            config.workdir = workdir
        t0 = time.time()
        summary = stages.get(stage)(stages.StageContext(config, self.ctx.mesh, workdir)) or {}
        summary = dict(summary, seconds=round(time.time() - t0, 1), workdir=workdir)
        if self.lead:
            fileio.write_json(done, summary, indent=1, default=_jsonable)
        return json.loads(json.dumps(summary, default=_jsonable))

    def path(self, *parts) -> str:
        return os.path.join(self.ctx.workdir, *parts)


def _jsonable(x):
    try:
        return float(x) if getattr(x, "ndim", 1) == 0 else x.tolist()
    except Exception:
        return str(x)


def _world_overrides(runner: Runner) -> dict[str, Any]:
    """Write the synthetic world once and point every data key at its files."""
    root = runner.path("world")
    paths_file = os.path.join(root, "paths.json")
    if not os.path.exists(paths_file):
        paths = synthetic.write_world(root, runner.ctx.config.world) if runner.lead else None
        if runner.lead:
            fileio.write_json(paths_file, paths)
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
        "rlhf.ood_prompt_dataset": "prompts",
        "rlhf.ood_prompt_path": os.path.dirname(paths["prompts_ood"]),
        "rlhf.ood_prompt_split": "test",
    }


def _tokenizer(runner: Runner) -> str:
    """Train (once) a BPE tokenizer on the run's preference pairs; returns its directory."""
    config, out = runner.ctx.config, runner.path("tokenizer")
    if not os.path.exists(os.path.join(out, "tokenizer.json")) and runner.lead:
        d = config.data
        pairs = D.load_preference_pairs(
            d.dataset,
            d.path,
            d.split,
            name=d.name,
            data_dir=d.data_dir,
            on_bad_record="skip",
            max_skip_fraction=1.0,
        )
        texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
        train_bpe_tokenizer(texts, int(config.rlhf.tokenizer_vocab), out)
    return out


def _export(summary: dict, kind: str) -> str:
    path = summary.get("export")
    if not path:
        raise ConfigError(f"rlhf: the {kind} step exported nothing (is its export switched off?).")
    return path


def _ppo_overrides(policy: str, ref: str, rm: str, iterations: int | None = None) -> dict:
    out = {"ppo.policy_path": policy, "ppo.ref_path": ref, "ppo.rm_path": rm, "ppo.critic_path": rm}
    if iterations is not None:
        out["ppo.iterations"] = iterations
    return out


def _sample(runner: Runner, name: str, policy: str, k: int, prompts: dict) -> str:
    """k samples per prompt from a policy (the build_meta stage: chunked, resumable)."""
    out = runner.path("samples", f"{name}.jsonl")
    runner.step(
        os.path.join("samples", name),
        "build_meta",
        {
            "build_meta.policy_path": policy,
            "build_meta.k": k,
            "build_meta.output_path": out,
            "build_meta.prompt_dataset": prompts["dataset"],
            "build_meta.prompt_path": prompts["path"],
            "build_meta.prompt_split": prompts["split"],
            "build_meta.max_prompts": prompts["max"],
            "data.meta_path": "",
        },
    )
    return out


def run(ctx: stages.StageContext) -> dict[str, Any]:
    """Stage ``rlhf``."""
    config = ctx.config
    rc = config.rlhf
    if rc.rounds < 1:
        raise ConfigError(f"config.rlhf.rounds={rc.rounds}: at least one round.")
    if rc.rm_init not in ("previous", "vanilla"):
        raise ConfigError(f"config.rlhf.rm_init={rc.rm_init!r}; expected 'previous' or 'vanilla'.")
    if rc.meta_prompts not in ("train", "ood"):
        raise ConfigError(
            f"config.rlhf.meta_prompts={rc.meta_prompts!r}; expected 'train' or 'ood'."
        )
    if rc.meta_prompts == "ood" and not rc.ood_prompt_path:
        raise ConfigError(
            "config.rlhf.meta_prompts='ood' needs config.rlhf.ood_prompt_path (a hub "
            "name or a local copy of the OOD prompt set)."
        )
    runner = Runner(ctx)
    base = _world_overrides(runner) if rc.world else {}
    if base:  # later steps see the world's paths as if they were in the config
        ctx = stages.StageContext(derive(config, base), ctx.mesh, ctx.workdir)
        runner = Runner(ctx)
        config, rc = ctx.config, ctx.config.rlhf
    d = config.data
    if not d.tokenizer_path and rc.tokenizer_vocab:
        ctx = stages.StageContext(
            derive(config, {"data.tokenizer_path": _tokenizer(runner)}), ctx.mesh, ctx.workdir
        )
        runner = Runner(ctx)
        config, rc, d = ctx.config, ctx.config.rlhf, ctx.config.data

    # π_SFT and r_0
    sft = runner.step("sft", "sft", {}) if rc.sft else None
    sft_path = _export(sft, "sft") if sft else config.model.hf_path
    if not sft_path:
        raise ConfigError("config.rlhf.sft=False needs config.model.hf_path (the SFT policy).")
    rm0 = rc.rm_path or _export(runner.step("rm", "rm", {"model.hf_path": sft_path}), "rm")

    meta_prompts = (
        {"dataset": d.prompt_dataset, "path": d.prompt_path, "split": d.prompt_split, "max": 0}
        if rc.meta_prompts == "train"
        else {
            "dataset": rc.ood_prompt_dataset,
            "path": rc.ood_prompt_path,
            "split": rc.ood_prompt_split,
            "max": 0,
        }
    )
    eval_prompts = {
        "dataset": rc.eval_prompt_dataset or d.prompt_dataset,
        "path": rc.eval_prompt_path or d.prompt_path,
        "split": rc.eval_prompt_split,
        "max": int(rc.eval_prompts),
    }

    policy, rm = sft_path, rm0
    rounds = []
    for r in range(1, rc.rounds + 1):
        tag = f"round{r}"
        meta = runner.path(tag, "meta.jsonl")
        runner.step(
            os.path.join(tag, "meta"),
            "build_meta",
            {
                "build_meta.policy_path": policy,
                "build_meta.k": config.meta.k,
                "build_meta.round": r,
                "build_meta.output_path": meta,
                "build_meta.prompt_dataset": meta_prompts["dataset"],
                "build_meta.prompt_path": meta_prompts["path"],
                "build_meta.prompt_split": meta_prompts["split"],
                "data.meta_path": "",
            },
        )
        start = rm if rc.rm_init == "previous" else rm0
        metarm = runner.step(
            os.path.join(tag, "metarm"), "metarm", {"model.hf_path": start, "data.meta_path": meta}
        )
        rm = _export(metarm, "metarm")
        ppo = runner.step(os.path.join(tag, "ppo"), "ppo", _ppo_overrides(policy, sft_path, rm))
        policy = _export(ppo, "ppo")
        rounds.append(
            {
                "round": r,
                "policy": policy,
                "rm": rm,
                "meta": meta,
                "metarm_workdir": metarm["workdir"],
                "ppo_workdir": ppo["workdir"],
            }
        )

    baselines: dict[str, dict] = {}
    if "vanilla_ppo" in rc.baselines:
        iters = int(config.ppo.iterations) * int(rc.rounds)  # the same total PPO budget
        s = runner.step("vanilla_ppo", "ppo", _ppo_overrides(sft_path, sft_path, rm0, iters))
        baselines["vanilla_ppo"] = {"policy": _export(s, "ppo"), "ppo_workdir": s["workdir"]}
    if "dpo" in rc.baselines:
        s = runner.step("dpo", "dpo", {"model.hf_path": sft_path})
        baselines["dpo"] = {"policy": _export(s, "dpo")}

    # Samples on held-out prompts: one per prompt for the judge, eval_k for the |Δr| histogram.
    policies = {
        "sft": sft_path,
        **{f"round{x['round']}": x["policy"] for x in rounds},
        **{k: v["policy"] for k, v in baselines.items()},
    }
    samples = {
        name: _sample(runner, name, path, 1, eval_prompts) for name, path in policies.items()
    }
    final = f"round{rc.rounds}"
    multi = _sample(runner, f"{final}_k{rc.eval_k}", policies[final], int(rc.eval_k), eval_prompts)

    result = report_lib.build(
        ctx,
        rounds=rounds,
        baselines=baselines,
        samples=samples,
        multi_samples=multi,
        rm0=rm0,
        sft_path=sft_path,
        sft_workdir=sft["workdir"] if sft else None,
        rm0_workdir=None if rc.rm_path else runner.path("rm"),
    )
    return result
