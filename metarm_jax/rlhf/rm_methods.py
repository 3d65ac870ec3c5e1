"""How each ROUNDS arm trains its reward model in round r: one function per ``Arm.rm_method``.

Each is ``fn(req: RMRequest) -> RMResult``: it runs its stage(s) through the runner (resumable,
skipped once done) and returns the RM export PPO will optimise this round. Every arm starts its
round from ``req.start`` (the previous round's RM with ``rlhf.rm_init='previous'``, else r_0) and
sees ``req.meta`` (k samples per train prompt from the arm's current policy).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from metarm_jax import data as D
from metarm_jax.data import synthetic, world_files
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import Arm
from metarm_jax.rlhf.runner import Runner, export_of
from metarm_jax.runtime import fileio, hosts
from metarm_jax.runtime.layout import StageDir


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
    judge: dict = dataclasses.field(default_factory=dict)  # relabel: this round's judge costs


def _stage(req: RMRequest, stage: str, overrides: dict) -> RMResult:
    name = req.layout.rm_step(req.arm, req.round, stage)
    summary = req.runner.step(name, stage, {"model.hf_path": req.start, **overrides})
    return RMResult(
        path=export_of(summary, req.arm.name),
        metrics=StageDir(req.layout.path(name)).metrics(stage),
        steps=int(summary.get("steps", 0)),
    )


def metarm(req: RMRequest) -> RMResult:
    """MetaRM (Algorithm 1) on the original pairs with this round's meta samples, η = meta.eta
    (the run's own ``meta`` block, unchanged)."""
    return _stage(req, "metarm", {"data.meta_path": req.meta})


def metarm_second(req: RMRequest) -> RMResult:
    """MetaRM of the second order: g = ∇_θ L(θ + η∇J(θ)), through the ascent (``hvp`` form)."""
    return _stage(req, "metarm", {"data.meta_path": req.meta, "meta.order": "second"})


def metarm_random(req: RMRequest) -> RMResult:
    """Negative control: MetaRM with the ascent replaced by a random direction of its norm."""
    return _stage(req, "metarm", {"data.meta_path": req.meta, "meta.direction": "random"})


def metarm_sft_j(req: RMRequest) -> RMResult:
    """Negative control: MetaRM with J on π_SFT's samples (round 1's meta samples, the same in
    every arm) every round, whatever the arm's current policy."""
    sft_meta = req.layout.meta_file(req.arm, 1)
    return _stage(req, "metarm", {"data.meta_path": sft_meta})


def metarm_descent(req: RMRequest) -> RMResult:
    """Negative control: MetaRM's step sign-flipped (descent on J, the same size)."""
    return _stage(req, "metarm", {"data.meta_path": req.meta, "meta.direction": "descent"})


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


def _relabel_dir(req: RMRequest, r: int) -> str:
    return req.layout.path(req.layout.round_dir(req.arm, r), "relabel_pairs")


def judge_pairs(judge, records) -> tuple[list[dict], dict]:
    """Pairs of one round's samples labelled by ``judge`` (an ``LLMJudge``, or any ``Judge``):
    per prompt the disjoint pairs (0, 1), (2, 3), ... of its k responses (identical responses
    are not a pair), each asked in both orders; a pair whose two verdicts agree becomes a TRL
    row ``{prompt, chosen, rejected}``, a tie, an order flip or an unparsable answer is dropped.
    Returns (rows, accounting: pairs asked, labelled, dropped, and the judge's own counts)."""
    prompts, first, second = [], [], []
    for rec in records:
        rs = list(rec.responses)
        for i in range(0, len(rs) - 1, 2):
            if rs[i] != rs[i + 1]:
                prompts.append(rec.prompt)
                first.append(rs[i])
                second.append(rs[i + 1])
    if not prompts:
        return [], {"pairs": 0, "labelled": 0, "dropped": 0}
    res = judge.compare(prompts, first, second)
    rows = []
    for p, a, b, o in zip(prompts, first, second, res.outcomes):
        if o != 0:
            rows.append({"prompt": p, "chosen": a if o > 0 else b, "rejected": b if o > 0 else a})
    stats = dict(getattr(res, "stats", {}) or {})
    stats.update(pairs=len(prompts), labelled=len(rows), dropped=len(prompts) - len(rows))
    return rows, stats


def _trl_rows(config, split: str) -> list[dict]:
    """The run's preference pairs of ``split`` as TRL text rows: the transcripts exactly as the
    RM scores them (prompt + chosen, prompt + rejected), whatever the dataset's format."""
    d = config.data
    tok = None
    if d.conversation_format == "chat_template":
        from metarm_jax.data.tokenizer import load_tokenizer

        tok = load_tokenizer(d.tokenizer_path or config.model.hf_path)
    recs = D.load_records("preference", d, tok, split=split)
    return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in recs]


def relabel(req: RMRequest) -> RMResult:
    """Iterative relabelling by the LLM judge, the costly upper bound on real data: the oracle's
    recipe with the judge in place of the gold reward. Each round the judge labels pairs of the
    arm's own samples (``judge_pairs``; its cache under ``<workdir>/llm_judge_cache`` is the one
    the report's judge reads, so no comparison is paid twice), and the RM continues from the
    previous round's on the original pairs plus every round's labelled pairs so far (replay),
    at the same RM steps as every other arm. The pool is written in TRL's text format, so any
    dataset the run reads is relabelled the same way; its test split is the run's own."""
    from metarm_jax.eval import llm_judge  # the judge is asked on process 0 only

    runner, config = req.runner, req.runner.config
    out_dir = _relabel_dir(req, req.round)
    accounting = os.path.join(out_dir, "judge.json")
    if runner.lead and not os.path.exists(accounting):
        recs = D.load("meta", D.DataSource.of("meta", req.meta, split="", on_bad_record="error"))
        judge = llm_judge.from_config(config.judge, workdir=req.layout.root)
        rows, stats = judge_pairs(judge, recs)
        fileio.write_jsonl(os.path.join(out_dir, "labelled.jsonl"), rows)
        pool = _trl_rows(config, config.data.split)
        for r in range(1, req.round + 1):
            with open(os.path.join(_relabel_dir(req, r), "labelled.jsonl"), encoding="utf-8") as f:
                pool += [json.loads(line) for line in f if line.strip()]
        fileio.write_jsonl(os.path.join(out_dir, "train.jsonl"), pool)
        fileio.write_jsonl(os.path.join(out_dir, "test.jsonl"),
                           _trl_rows(config, config.data.eval_split))  # fmt: skip
        fileio.write_json(accounting, stats, indent=1)  # last: it marks the pool as written
    hosts.barrier(f"rlhf:{out_dir}")
    with open(accounting) as f:
        stats = json.load(f)
    res = _stage(
        req,
        "rm",
        {"data.dataset": "trl", "data.path": out_dir, "data.split": "train",
         "data.eval_split": "test", "data.name": "", "data.data_dir": ""},
    )  # fmt: skip
    return dataclasses.replace(res, judge=stats)


METHODS: dict[str, Callable[[RMRequest], RMResult]] = {
    "metarm": metarm,
    "metarm_second": metarm_second,
    "eta0": eta0,
    "metarm_random": metarm_random,
    "metarm_sft_j": metarm_sft_j,
    "metarm_descent": metarm_descent,
    "oracle": oracle,
    "relabel": relabel,
}
