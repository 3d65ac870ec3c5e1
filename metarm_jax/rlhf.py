"""Iterative RLHF with MetaRM: the stage ``rlhf`` runs the paper's rounds end to end, with the
controls that make the comparison mean something.

    [world]      synthetic world files (quickstart only)
    sft          supervised policy π_SFT                    (or config.model.hf_path)
    rm           vanilla reward model r_0 on the pairs      (or config.rlhf.rm_path)
    arm metarm   round r = 1..R:
      meta         k responses per train prompt from π_{r-1}   (OOD prompts in the OOD setting)
      metarm       r_r = MetaRM (η = meta.eta) on the ORIGINAL pairs, from r_{r-1} (or r_0)
      ppo          π_r = PPO from π_{r-1} against r_r, reference π_SFT; the prompt stream and
                   roll-out keys continue from round r-1 (ppo.iteration_offset)
    arm eta0     the same rounds with η = 0 (baseline "eta0"): identical data order, seeds,
                 steps, RM continuation, critic initialisation and warm-up; only η differs
    arm oracle   the same rounds with an RM trained on gold-labelled pairs of the current
                 policy's samples (baseline "oracle"; synthetic world only): a positive control
    vanilla_ppo  PPO against r_0 for R x ppo.iterations, exported at every round boundary
    dpo          DPO on the same pairs
    samples      eval_k responses per prompt of every policy on the test prompts; one per prompt
                 of every MetaRM round on the validation prompts (which pick the best round)
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
from metarm_jax import faults, fileio, hosts, stages
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
        sub = stages.StageContext(config, self.ctx.mesh, workdir)
        if self.lead:  # what this step ran with, resolved (arms are compared by these files)
            fileio.write_text(
                os.path.join(workdir, "config.json"), sub.config.to_json_best_effort(indent=1)
            )
        faults.point(f"stage_start:{stage}")
        summary = stages.get(stage)(sub) or {}
        summary = dict(summary, seconds=round(time.time() - t0, 1), workdir=workdir)
        faults.point("done_marker")
        if self.lead:
            fileio.write_json(done, summary, indent=1, default=_jsonable)
        hosts.barrier(f"rlhf:{name}:done")  # a restart on any process sees the same steps done
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
    hosts.barrier("rlhf:tokenizer")
    return out


def _export(summary: dict, kind: str) -> str:
    path = summary.get("export")
    if not path:
        raise ConfigError(f"rlhf: the {kind} step exported nothing (is its export switched off?).")
    return path


ARMS = ("metarm", "eta0", "oracle")
BASELINES = ("eta0", "oracle", "vanilla_ppo", "dpo")


def _ppo_overrides(
    policy: str, ref: str, rm: str, iterations: int | None = None, **extra
) -> dict[str, Any]:
    out = {"ppo.policy_path": policy, "ppo.ref_path": ref, "ppo.rm_path": rm, "ppo.critic_path": rm}
    if iterations is not None:
        out["ppo.iterations"] = iterations
    out.update({f"ppo.{k}": v for k, v in extra.items()})
    return out


def _sample(runner: Runner, name: str, policy: str, k: int, prompts: dict, round_: int = 0) -> str:
    """k samples per prompt from a policy (the build_meta stage: chunked, resumable)."""
    out = runner.path("samples", f"{name}.jsonl")
    runner.step(
        os.path.join("samples", name),
        "build_meta",
        {
            "build_meta.policy_path": policy,
            "build_meta.k": k,
            "build_meta.round": round_,
            "build_meta.output_path": out,
            "build_meta.prompt_dataset": prompts["dataset"],
            "build_meta.prompt_path": prompts["path"],
            "build_meta.prompt_split": prompts["split"],
            "build_meta.skip_prompts": prompts.get("skip", 0),
            "build_meta.max_prompts": prompts["max"],
            "data.meta_path": "",
        },
    )
    return out


def _oracle_pairs(runner: Runner, meta: str, out_dir: str) -> str:
    """Gold-labelled pairs of the current policy's samples (every pair of a prompt's k responses
    whose gold rewards differ; chosen = the higher gold), as an hh_rlhf train split; the test
    split is the world's own test pairs, so the oracle RM validates like every other RM."""
    path = os.path.join(out_dir, "train.jsonl")
    test = os.path.join(out_dir, "test.jsonl")
    if runner.lead and not os.path.exists(test):
        world = synthetic.World(runner.ctx.config.world)
        recs = D.load_meta_examples(meta, on_bad_record="error")
        rows = synthetic.gold_pairs(world, [(r.prompt, list(r.responses)) for r in recs])
        fileio.write_jsonl(path, rows)
        d = runner.ctx.config.data
        with open(os.path.join(d.path, f"{d.eval_split}.jsonl"), encoding="utf-8") as f:
            fileio.write_text(test, f.read())
    hosts.barrier(f"rlhf:{out_dir}")
    return out_dir


def _arm(runner: Runner, name: str, *, sft_path: str, rm0: str, meta_prompts: dict) -> list[dict]:
    """The R rounds of one arm (metarm, eta0 or oracle): meta samples -> RM -> PPO, each round
    continuing from the arm's previous policy and RM. Round 1's meta samples (from π_SFT, the
    same keys) are the same for every arm, so the arms share them."""
    config = runner.ctx.config
    rc = config.rlhf
    iters = int(config.ppo.iterations)
    root = "" if name == "metarm" else name
    policy, rm = sft_path, rm0
    rounds = []
    for r in range(1, rc.rounds + 1):
        tag = os.path.join(root, f"round{r}")
        meta_tag = "round1" if r == 1 else tag  # the arms start from the same policy
        meta = runner.path(meta_tag, "meta.jsonl")
        runner.step(
            os.path.join(meta_tag, "meta"),
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
        if name == "oracle":
            pairs = _oracle_pairs(runner, meta, runner.path(tag, "oracle_pairs"))
            rm_step = runner.step(
                os.path.join(tag, "rm"),
                "rm",
                {"model.hf_path": start, "data.path": pairs, "data.split": "train"},
            )
        else:
            eta = float(config.meta.eta) if name == "metarm" else 0.0
            rm_step = runner.step(
                os.path.join(tag, "metarm"),
                "metarm",
                {"model.hf_path": start, "data.meta_path": meta, "meta.eta": eta},
            )
        rm = _export(rm_step, name)
        ppo = runner.step(
            os.path.join(tag, "ppo"),
            "ppo",
            _ppo_overrides(policy, sft_path, rm, iteration_offset=(r - 1) * iters),
        )
        policy = _export(ppo, "ppo")
        rounds.append(
            {
                "arm": name,
                "round": r,
                "policy": policy,
                "rm": rm,
                "meta": meta,
                "rm_workdir": rm_step["workdir"],
                "rm_steps": int(rm_step.get("steps", 0)),
                "ppo_workdir": ppo["workdir"],
                "ppo_iterations": iters,
            }
        )
    return rounds


def validate(config) -> None:
    """The rlhf stage's checks (``stages.VALIDATORS``: run by ``config_lib.validate``)."""
    rc, world = config.rlhf, bool(config.rlhf.world)
    if rc.rounds < 1:
        raise ConfigError(f"config.rlhf.rounds={rc.rounds}: at least one round.")
    if rc.rm_init not in ("previous", "vanilla"):
        raise ConfigError(f"config.rlhf.rm_init={rc.rm_init!r}; expected 'previous' or 'vanilla'.")
    if rc.meta_prompts not in ("train", "ood"):
        raise ConfigError(
            f"config.rlhf.meta_prompts={rc.meta_prompts!r}; expected 'train' or 'ood'."
        )
    if rc.meta_prompts == "ood" and not rc.ood_prompt_path and not world:  # the world has its own
        raise ConfigError(
            "config.rlhf.meta_prompts='ood' needs config.rlhf.ood_prompt_path (a hub "
            "name or a local copy of the OOD prompt set)."
        )
    unknown = sorted(set(rc.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(
            f"config.rlhf.baselines: unknown {unknown}; expected a subset of {list(BASELINES)}."
        )
    if "oracle" in rc.baselines and not world:
        raise ConfigError(
            "config.rlhf.baselines: 'oracle' needs the synthetic world's gold reward "
            "(config.rlhf.world=True); drop it for real data."
        )
    if rc.valid_prompts < 1 or rc.eval_prompts < 1 or rc.eval_k < 2:
        raise ConfigError(
            f"config.rlhf: valid_prompts={rc.valid_prompts} and eval_prompts={rc.eval_prompts} "
            f"must be >= 1 and eval_k={rc.eval_k} >= 2 (the RM metrics compare responses of "
            "the same prompt)."
        )


def _eval_prompt_sets(config) -> tuple[dict, dict]:
    """(validation, test) prompt sources, disjoint: the validation split when there is one
    (``rlhf.valid_prompt_split``), else the first ``valid_prompts`` prompts of the test source,
    the test set being the ``eval_prompts`` after them."""
    rc, d = config.rlhf, config.data
    source = {"dataset": rc.eval_prompt_dataset, "path": rc.eval_prompt_path}
    if rc.valid_prompt_split:
        valid = dict(source, split=rc.valid_prompt_split, skip=0, max=int(rc.valid_prompts))
        test = dict(source, split=rc.eval_prompt_split, skip=0, max=int(rc.eval_prompts))
        if rc.valid_prompt_split == rc.eval_prompt_split:
            raise ConfigError(
                f"config.rlhf.valid_prompt_split={rc.valid_prompt_split!r} is the test split: "
                "the best round would be chosen on the prompts it is compared on. Use another "
                "split, or '' to hold out the first rlhf.valid_prompts test prompts."
            )
    else:
        valid = dict(source, split=rc.eval_prompt_split, skip=0, max=int(rc.valid_prompts))
        test = dict(
            source, split=rc.eval_prompt_split, skip=int(rc.valid_prompts), max=int(rc.eval_prompts)
        )
    del d
    return valid, test


def run(ctx: stages.StageContext) -> dict[str, Any]:
    """Stage ``rlhf``."""
    config = ctx.config
    rc = config.rlhf
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

    if rc.meta_prompts == "ood":  # Figure 3: meta samples, PPO and evaluation on OOD prompts
        ood = {
            "data.prompt_dataset": rc.ood_prompt_dataset,
            "data.prompt_path": rc.ood_prompt_path,
            "data.prompt_split": rc.ood_prompt_split,
            "rlhf.eval_prompt_dataset": rc.ood_prompt_dataset,
            "rlhf.eval_prompt_path": rc.ood_prompt_path,
            "rlhf.eval_prompt_split": rc.ood_eval_split,
            "rlhf.valid_prompt_split": rc.ood_valid_split,
        }
        ctx = stages.StageContext(derive(config, ood), ctx.mesh, ctx.workdir)
        runner = Runner(ctx)
        config, rc, d = ctx.config, ctx.config.rlhf, ctx.config.data

    # π_SFT and r_0
    sft = runner.step("sft", "sft", {}) if rc.sft else None
    sft_path = _export(sft, "sft") if sft else config.model.hf_path
    if not sft_path:
        raise ConfigError("config.rlhf.sft=False needs config.model.hf_path (the SFT policy).")
    rm0_step = None if rc.rm_path else runner.step("rm", "rm", {"model.hf_path": sft_path})
    rm0 = rc.rm_path or _export(rm0_step, "rm")

    meta_prompts = {"dataset": d.prompt_dataset, "path": d.prompt_path, "split": d.prompt_split}
    arms = {"metarm": _arm(runner, "metarm", sft_path=sft_path, rm0=rm0, meta_prompts=meta_prompts)}
    for name in ("eta0", "oracle"):
        if name in rc.baselines:
            arms[name] = _arm(runner, name, sft_path=sft_path, rm0=rm0, meta_prompts=meta_prompts)

    iters = int(config.ppo.iterations)
    baselines: dict[str, dict] = {}
    if "vanilla_ppo" in rc.baselines:
        # The same total PPO budget, exported at each round boundary for matched comparisons.
        s = runner.step(
            "vanilla_ppo",
            "ppo",
            _ppo_overrides(sft_path, sft_path, rm0, iters * int(rc.rounds), export_every=iters),
        )
        final = _export(s, "ppo")
        at = {
            r: (
                final
                if r == rc.rounds
                else os.path.join(s["workdir"], "export", f"ppo_iter{r * iters}")
            )
            for r in range(1, rc.rounds + 1)
        }
        baselines["vanilla_ppo"] = {"policy": final, "at_round": at, "ppo_workdir": s["workdir"]}
    if "dpo" in rc.baselines:
        s = runner.step("dpo", "dpo", {"model.hf_path": sft_path})
        baselines["dpo"] = {"policy": _export(s, "dpo"), "steps": int(s.get("steps", 0))}

    # Samples: eval_k per test prompt for every policy (the judge reads the first); one per
    # validation prompt for the MetaRM rounds, which choose the best round.
    valid_prompts, test_prompts = _eval_prompt_sets(config)
    policies = {"sft": sft_path}
    for name, rounds in arms.items():
        prefix = "" if name == "metarm" else f"{name}_"
        policies.update({f"{prefix}round{x['round']}": x["policy"] for x in rounds})
    if "vanilla_ppo" in baselines:
        policies.update(
            {f"vanilla_ppo@{r}": p for r, p in baselines["vanilla_ppo"]["at_round"].items()}
        )
    if "dpo" in baselines:
        policies["dpo"] = baselines["dpo"]["policy"]
    test = {
        name: _sample(runner, f"test/{name}", path, int(rc.eval_k), test_prompts)
        for name, path in policies.items()
    }
    valid = {
        name: _sample(runner, f"valid/{name}", policies[name], 1, valid_prompts)
        for name in ["sft"] + [f"round{x['round']}" for x in arms["metarm"]]
    }
    return report_lib.build(
        ctx,
        arms=arms,
        baselines=baselines,
        test_samples=test,
        valid_samples=valid,
        rm0=rm0,
        rm0_steps=int(rm0_step.get("steps", 0)) if rm0_step else 0,
        sft_workdir=sft["workdir"] if sft else None,
        rm0_workdir=None if rc.rm_path else runner.path("rm"),
    )
