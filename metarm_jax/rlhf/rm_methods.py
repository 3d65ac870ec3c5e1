"""How each ROUNDS arm trains its reward model in round r: one function per ``Arm.rm_method``.

Each is ``fn(req: RMRequest) -> RMResult``: it runs its stage(s) through the runner (resumable,
skipped once done) and returns the RM export PPO will optimise this round. Every arm starts its
round from ``req.start`` (the previous round's RM with ``rlhf.rm_init='previous'``, else r_0) and
sees ``req.meta`` (k samples per train prompt from the arm's current policy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from metarm_jax import data as D
from metarm_jax import fileio, hosts
from metarm_jax.data import synthetic, world_files
from metarm_jax.layout import StageDir
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import Arm
from metarm_jax.rlhf.runner import Runner, export_of


@dataclasses.dataclass(frozen=True)
class RMRequest:
    runner: Runner
    layout: RunLayout
    arm: Arm
    round: int
    start: str  # the RM this round continues from
    meta: str  # this round's meta samples (a build_meta jsonl)


@dataclasses.dataclass(frozen=True)
class RMResult:
    path: str  # the HF export
    metrics: str  # its stage's metrics.jsonl
    steps: int


def _stage(req: RMRequest, stage: str, overrides: dict) -> RMResult:
    name = req.layout.rm_step(req.arm, req.round, stage)
    summary = req.runner.step(name, stage, {"model.hf_path": req.start, **overrides})
    return RMResult(
        path=export_of(summary, req.arm.name),
        metrics=StageDir(req.layout.path(name)).metrics(stage),
        steps=int(summary.get("steps", 0)),
    )


def metarm(req: RMRequest) -> RMResult:
    """MetaRM (Algorithm 1) on the original pairs with this round's meta samples, η = meta.eta."""
    eta = float(req.runner.config.meta.eta)
    return _stage(req, "metarm", {"data.meta_path": req.meta, "meta.eta": eta})


def metarm_second(req: RMRequest) -> RMResult:
    """MetaRM of the second order: g = ∇_θ L(θ + η∇J(θ)), through the ascent (``hvp`` form)."""
    eta = float(req.runner.config.meta.eta)
    return _stage(
        req, "metarm", {"data.meta_path": req.meta, "meta.eta": eta, "meta.order": "second"}
    )


def eta0(req: RMRequest) -> RMResult:
    """The control: the MetaRM stage with η = 0 (same data order, seeds and steps)."""
    return _stage(req, "metarm", {"data.meta_path": req.meta, "meta.eta": 0.0})


def _oracle_dir(req: RMRequest, r: int) -> str:
    return req.layout.path(req.layout.round_dir(req.arm, r), "oracle_pairs")


def oracle(req: RMRequest) -> RMResult:
    """The accumulating oracle, a positive control: a Bradley-Terry RM continued (from the
    previous round's oracle RM) on the original pairs plus every round's gold-labelled pairs of
    its own policy's samples so far (every pair of a prompt's k responses whose gold differs;
    chosen = the higher gold): replay, so it does not forget the base distribution. It takes the
    same RM steps as every other arm (a random sample of the growing pool; synthetic world
    only). Its test split is the world's own test pairs, so it validates like every other RM."""
    runner, config = req.runner, req.runner.config
    out_dir = _oracle_dir(req, req.round)
    test = os.path.join(out_dir, "test.jsonl")
    if runner.lead and not os.path.exists(test):
        world = synthetic.World(config.world)
        recs = D.load("meta", D.DataSource.of("meta", req.meta, split="", on_bad_record="error"))
        rows = world_files.gold_pairs(world, [(r.prompt, list(r.responses)) for r in recs])
        fileio.write_jsonl(os.path.join(out_dir, "gold.jsonl"), rows)
        d = config.data
        pool = [os.path.join(d.path, f"{d.split}.jsonl")]
        pool += [os.path.join(_oracle_dir(req, r), "gold.jsonl") for r in range(1, req.round + 1)]
        text = ""
        for path in pool:
            with open(path, encoding="utf-8") as f:
                text += f.read()
        fileio.write_text(os.path.join(out_dir, "train.jsonl"), text)
        with open(os.path.join(d.path, f"{d.eval_split}.jsonl"), encoding="utf-8") as f:
            fileio.write_text(test, f.read())
    hosts.barrier(f"rlhf:{out_dir}")
    return _stage(req, "rm", {"data.path": out_dir, "data.split": "train"})


METHODS: dict[str, Callable[[RMRequest], RMResult]] = {
    "metarm": metarm,
    "metarm_second": metarm_second,
    "eta0": eta0,
    "oracle": oracle,
}
