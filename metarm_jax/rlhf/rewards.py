"""The fixed reward of each CONTINUOUS arm: one function per ``Arm.reward`` (``plan.REWARDS``).

Each is ``fn(req: RewardRequest) -> Reward``: it runs the steps its reward needs through the
runner (resumable, skipped once done: the ensemble's members are trained once and shared by
every ensemble arm and WARM) and returns what PPO optimises, as ``ppo.*`` overrides, with the
RMs it reads and the RM training steps behind it. Every CONTINUOUS arm's PPO runs from π_SFT for
R x ppo.iterations with its critic from r_0; only these overrides differ.

    rm0       r_0 (vanilla PPO)
    gold      the world's gold reward (the ceiling)
    ensemble  M = rlhf.ensemble_size RMs: r_0 (member 0) and M-1 more trained from π_SFT with the
              rm stage exactly as r_0, differing only in seed and data order (config.seed and
              data.pref_seed + i·MEMBER_SEED_STRIDE); ``ppo.reward_models``, aggregated by the
              arm's ``agg`` (``core.ensemble``)
    warm      the element-wise mean of those M RMs' weights (the ``warm`` stage), one RM
    centred   an RM trained exactly as r_0 but with reward centring (train.center_rewards =
              rlhf.center_rewards)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from metarm_jax.rlhf import plan
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import Arm, RunRecord
from metarm_jax.rlhf.runner import Runner, export_of

GOLD_REWARD = "metarm_jax.data.synthetic:gold_monitor"  # the world's gold of token ids
# Member i's seeds are the run's plus i times this: far from the seeds of a study (seed + 0..4).
MEMBER_SEED_STRIDE = 1000


@dataclasses.dataclass(frozen=True)
class RewardRequest:
    runner: Runner
    layout: RunLayout
    arm: Arm
    rec: RunRecord


@dataclasses.dataclass(frozen=True)
class Reward:
    rm: str  # ppo.rm_path (the RM PPO reads; for an ensemble or gold, r_0: not the reward)
    rms: tuple[str, ...]  # the RMs that score every roll-out (() for the gold reward)
    rm_steps: int  # RM training steps behind the arm (r_0's included: the critic's start)
    ppo: dict[str, Any] = dataclasses.field(default_factory=dict)  # further ppo.* overrides


def rm0(req: RewardRequest) -> Reward:
    return Reward(req.rec.rm0, (req.rec.rm0,), req.rec.rm0_steps)


def gold(req: RewardRequest) -> Reward:
    return Reward(req.rec.rm0, (), req.rec.rm0_steps, {"reward_fn": GOLD_REWARD})


def par(req: RewardRequest) -> Reward:
    """PAR: r_0's score against π_SFT's references of the same prompt (ppo.reward_shaping)."""
    return Reward(req.rec.rm0, (req.rec.rm0,), req.rec.rm0_steps, {"reward_shaping": "par"})


def members(req: RewardRequest) -> list[tuple[str, int]]:
    """(export, RM steps) of the ensemble's M members, member 0 first: r_0 when this run trained
    it (rlhf.rm_path empty), else trained here like the others (all from π_SFT, one
    initialisation, as WARM needs)."""
    runner, rec = req.runner, req.rec
    config = runner.config
    out = []
    for i in range(int(config.rlhf.ensemble_size)):
        if i == 0 and not config.rlhf.rm_path:
            out.append((rec.rm0, rec.rm0_steps))
            continue
        s = runner.step(
            req.layout.member_step(i),
            "rm",
            {
                "model.hf_path": rec.sft,
                "seed": int(config.seed) + i * MEMBER_SEED_STRIDE,
                "data.pref_seed": int(config.data.pref_seed) + i * MEMBER_SEED_STRIDE,
            },
        )
        out.append((export_of(s, "rm"), int(s.get("steps", 0))))
    return out


def _member_steps(req: RewardRequest, ms: list[tuple[str, int]]) -> int:
    """Every member's steps, and r_0's when it is not member 0 (the critic starts from it)."""
    extra = req.rec.rm0_steps if req.runner.config.rlhf.rm_path else 0
    return extra + sum(steps for _, steps in ms)


def ensemble(req: RewardRequest) -> Reward:
    ms = members(req)
    paths = tuple(p for p, _ in ms)
    return Reward(
        req.rec.rm0,
        paths,
        _member_steps(req, ms),
        {"reward_models": paths, "ensemble_agg": req.arm.agg},
    )


def warm(req: RewardRequest) -> Reward:
    ms = members(req)
    s = req.runner.step(req.layout.warm_step, "warm", {"warm.rm_paths": tuple(p for p, _ in ms)})
    path = export_of(s, "warm")
    return Reward(path, (path,), _member_steps(req, ms))


def centred(req: RewardRequest) -> Reward:
    rec, config = req.rec, req.runner.config
    s = req.runner.step(
        req.layout.centred_step,
        "rm",
        {"model.hf_path": rec.sft, "train.center_rewards": float(config.rlhf.center_rewards)},
    )
    path = export_of(s, "rm")
    return Reward(path, (path,), rec.rm0_steps + int(s.get("steps", 0)))


# One builder per reward kind of the plan (``plan.REWARDS`` is the one list of names; a kind
# without its function here fails when this module is imported).
SOURCES: dict[str, Callable[[RewardRequest], Reward]] = {k: globals()[k] for k in plan.REWARDS}
