"""The run report of iterative RLHF: the paper's tables and figures, with the controls and the
intervals that let them be read.

    Selection  the best MetaRM round, chosen on VALIDATION prompts (round r vs SFT)
    Table 1    each round of each ROUNDS arm vs π_SFT on TEST prompts (win / tie / lose, 95% CI)
    Table 2    the best round r* vs SFT and every other arm at r* (its ``Arm.opponents``)
    Gold       mean gold reward of every policy (synthetic world), 95% intervals, and paired
               differences for Table 2
    RM metrics within-prompt pairwise accuracy and Kendall τ of each round's RMs (r_0 and every
               ROUNDS arm's) against gold, on each arm's round-r samples and on a fixed probe
               set (π_SFT's samples), 95% intervals over prompts
    Figure 1   variance of within-prompt reward differences over PPO, per arm
    Figure 4   RM validation accuracy per round
    Figure 5   |Δr| on the final policy's samples, raw and normalised, step-matched RMs
    Checks     every arm's RM and PPO step counts, the fraction of PPO scores the reward clip
               cut (flagged above 10%), the MetaRM step's geometry

This module gathers: it loads the samples and metrics a run left (``RunRecord``, ``RunLayout``),
scores them with the judge and the reward models, and hands plain arrays to ``compute`` (the
numbers) and ``render`` (markdown, console, plots). Everything goes to the workdir:
``report.md``, ``report.json``, ``fig*.png``.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metarm_jax import data as D
from metarm_jax.data import synthetic
from metarm_jax.eval import judges, llm_judge
from metarm_jax.generation.scoring import RewardScorer
from metarm_jax.rlhf import compute, gate, plan, render, texts
from metarm_jax.rlhf import kl as kl_lib
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import CONTINUOUS, ROUNDS, RunRecord
from metarm_jax.runtime import faults
from metarm_jax.runtime.layout import read_metrics
from metarm_jax.train import rollout


def load_samples(path: str) -> tuple[list[str], list[list[str]]]:
    recs = D.load("meta", D.DataSource.of("meta", path, split="", on_bad_record="error"))
    return [r.prompt for r in recs], [list(r.responses) for r in recs]


def _same_prompts(texts: dict[str, tuple[list[str], list]], what: str) -> list[str]:
    prompts = next(iter(texts.values()))[0]
    for name, (p, _) in texts.items():
        if p != prompts:
            raise RuntimeError(f"report: the {what} prompts of {name} differ from the others'.")
    return prompts


class Scorers:
    """One RewardScorer per RM export, built on first use."""

    def __init__(self, config, mesh):
        self.config, self.mesh, self.cache = config, mesh, {}

    def __call__(self, path: str) -> RewardScorer:
        if path not in self.cache:
            self.cache[path] = RewardScorer(self.config, self.mesh, path)
        return self.cache[path]


def make_judge(config, world, scorer: Scorers, rm0: str, workdir: str):
    """The judge ``rlhf.judge`` names: (judge, its description for the report)."""
    rc = config.rlhf
    if rc.judge == "llm":
        judge = llm_judge.from_config(config.judge, workdir=workdir)
        return judge, judge.describe()
    if world is not None:
        return judges.GoldJudge(world, tie_margin=rc.tie_margin), "gold reward (synthetic world)"
    ref = rc.judge_rm_path or rm0
    judge = judges.RewardModelJudge(scorer(ref).score_fn, tie_margin=rc.tie_margin)
    return judge, f"reward model {ref}" + (
        "" if rc.judge_rm_path else " (the vanilla RM: not independent of training)"
    )


def build(
    ctx, rec: RunRecord, *, test_samples: dict[str, str], valid_samples: dict[str, str]
) -> dict[str, Any]:
    """Judge, tabulate and plot; write report.md / report.json / fig*.png into ctx.workdir."""
    config, workdir = ctx.config, ctx.workdir
    layout = RunLayout(workdir)
    rc = config.rlhf
    n_boot = int(rc.bootstrap)
    lead = jax.process_index() == 0
    rounds = rec.rounds
    main = rec.main.arm

    test = {name: load_samples(path) for name, path in test_samples.items()}
    valid = {name: load_samples(path) for name, path in valid_samples.items()}
    meta_names = main.policies(rounds)
    prompts, vprompts = _same_prompts(test, "test"), _same_prompts(valid, "validation")
    if set(prompts) & set(vprompts):
        raise RuntimeError(
            f"report: {len(set(prompts) & set(vprompts))} validation prompts are also test "
            "prompts; the best round must be chosen on prompts it is not compared on."
        )
    first = {name: [r[0] for r in resp] for name, (_, resp) in test.items()}
    vfirst = {name: [r[0] for r in resp] for name, (_, resp) in valid.items()}
    vfirst = {name: vfirst[name] for name in ["sft", *meta_names]}  # the best round's choice

    use_gold = rc.judge == "gold" or (rc.judge == "auto" and rc.world)
    world = synthetic.World(config.world) if use_gold else None
    scorer = Scorers(config, ctx.mesh)
    judge, judge_name = make_judge(config, world, scorer, rec.rm0, workdir)

    def vs(a, b, texts=first, ps=prompts):
        return compute.comparison(judge.compare(ps, texts[a], texts[b]), n_boot)

    # Selection on validation prompts only; Tables 1 and 2 on test prompts only.
    selection = {name: vs(name, "sft", vfirst, vprompts) for name in meta_names}
    best = compute.select_best(selection)
    r_best = int(best.removeprefix("round"))
    table1 = {p: vs(p, "sft") for run in rec.of(ROUNDS) for p in run.arm.policies(rounds)}
    opponents = {"sft": "sft"}
    for run in rec.arms.values():
        opponents.update(run.arm.opponents(r_best, rounds))
    table2 = {label: vs(best, name) for label, name in opponents.items()}
    # Every round against vanilla PPO (the plan's floor arm) after the same PPO iterations
    # (Figure 3 in the OOD setting)
    vanilla = rec.arms.get(plan.FLOOR)
    rounds_vs_vanilla = (
        {n: vs(n, vanilla.arm.policy(int(n.removeprefix("round")))) for n in meta_names}
        if vanilla
        else {}
    )

    # Rewards of every policy's test samples (the judge reads the first sample of each prompt).
    gold: dict[str, dict] = {}
    gold_diff: dict[str, dict] = {}
    if world is not None:
        g = {
            name: np.asarray(world.gold(prompts, resp), np.float64) for name, resp in first.items()
        }
        gold = {name: compute.mean_ci(v, n_boot) for name, v in g.items()}
        for label, name in opponents.items():
            gold_diff[label] = compute.paired_difference(g[best], g[name], n_boot)
    last_rm = rec.main.rounds[-1].rm
    proxies = {
        name: {
            "vanilla_rm": float(np.mean(scorer(rec.rm0).score_fn(prompts, resp))),
            "last_metarm": float(np.mean(scorer(last_rm).score_fn(prompts, resp))),
        }
        for name, resp in first.items()
    }

    rm_metrics = _rm_metrics(config, rec, test, prompts, world, scorer, n_boot)
    ascent = {  # each ascent arm's RM against eta0's, on the arm's own samples
        run.arm.name: compute.ascent_effect(rm_metrics, run.arm.name, plan.NULL_ASCENT)
        for run in rec.of(ROUNDS)
        if plan.NULL_ASCENT in run.arm.compare_to and plan.NULL_ASCENT in rec.arms
    }
    experiment = _experiment(ctx, rec, layout, test, valid, world, scorer, n_boot)
    fig1 = _figure1(config, rec, test, scorer)
    lengths = texts.lengths(config, test)
    div = texts.diversity_table(config, first, rc.diversity)
    human_eval = texts.human_eval(config, layout, prompts, first, best, n_boot, lead)
    fig5 = _figure5(rec, test, scorer)

    # Curves, step counts, clipping and the meta step's geometry, from the stages' metrics.
    ppo_rows, rm_rows, geometry = {}, {}, {}
    if rec.rm0_metrics:
        rm_rows["vanilla_rm"] = read_metrics(rec.rm0_metrics)
    for run in rec.of(ROUNDS):
        ppo_rows[run.arm.name] = [row for x in run.rounds for row in read_metrics(x.ppo_metrics)]
        for x in run.rounds:
            rm_rows[run.arm.policy(x.round)] = rrows = read_metrics(x.rm_metrics)
            if run.arm.main:
                geometry[run.arm.policy(x.round)] = compute.geometry(rrows)
    for run in rec.of(CONTINUOUS):
        ppo_rows[run.arm.name] = read_metrics(run.ppo_metrics)
    clip = {name: compute.clip_fraction(rows) for name, rows in ppo_rows.items()}

    d = config.data
    result = {
        **experiment,
        "setting": "ood" if rc.meta_prompts == "ood" else "in-distribution",
        "train_prompts": f"{d.prompt_dataset}:{d.prompt_path}:{d.prompt_split}",
        "eval_prompts": f"{rc.eval_prompt_dataset}:{rc.eval_prompt_path}:{rc.eval_prompt_split}",
        "judge": judge_name,
        "tie_margin": rc.tie_margin,
        "prompts": len(prompts),
        "valid_prompts": len(vprompts),
        "samples_per_prompt": len(test["sft"][1][0]),
        "bootstrap": n_boot,
        "best_round": best,
        "selection": selection,
        "table1": table1,
        "table2": table2,
        "rounds_vs_vanilla": rounds_vs_vanilla,
        "gold": gold,
        "gold_diff": gold_diff,
        "proxy": proxies,
        "rm_metrics": rm_metrics,
        "ascent_effect": {k: v for k, v in ascent.items() if v is not None},
        "fig5": {
            k: {"mean": float(v["raw"].mean()), "normalised_mean": float(v["normalised"].mean())}
            for k, v in fig5.items()
        },
        "budget": compute.budgets(rec),
        "reward_sources": compute.reward_sources(rec, config.ppo),
        "reward_clip": clip,
        "geometry": geometry,
        "fig1": fig1,
        "lengths": lengths,
        "diversity": div,
        "human": human_eval,
        "examples": [
            {"prompt": prompts[i], "responses": {name: first[name][i] for name in first}}
            for i in range(min(int(rc.report_examples), len(prompts)))
        ],
    }
    if rc.judge == "llm":
        result["judge_stats"] = dict(judge.stats)
    faults.point("report")
    if lead:
        figs = render.figures(workdir, result, ppo_rows, rm_rows, fig5, meta_names)
        with open(layout.report("report.md"), "w") as f:
            f.write(render.markdown(result, figs, rec))
        with open(layout.report("report.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(render.console(result, rec))
    return {"report": layout.report("report.md"), **compute.summary(result)}


def _reference(world, prompts, scorer, rc):
    """The truth RM rankings are measured against: (its name, fn(responses) -> [prompts, k]),
    or (None, None) when there is none."""
    if world is not None:

        def gold(resp):
            return np.asarray(
                [world.gold([p] * len(r), r) for p, r in zip(prompts, resp)], np.float64
            )

        return "gold", gold
    if rc.judge_rm_path:
        return f"independent RM {rc.judge_rm_path}", lambda resp: scorer(rc.judge_rm_path).score(
            prompts, resp
        )[0]
    return None, None


def _points(rec: RunRecord, run) -> list[tuple[int, str, Any]]:
    """(round, policy, the reward it optimised: an RM export, (member exports, aggregation) for
    an ensemble, or None for the gold reward) at every export of a ROUNDS or CONTINUOUS arm,
    π_SFT (round 0) first: a ROUNDS arm's round 0 is r_0, a CONTINUOUS arm's reward is fixed."""
    a = run.arm
    if a.schedule == ROUNDS:
        return [(0, "sft", rec.rm0)] + [(r, a.policy(r), run.rm_at(r)) for r in
                                        range(1, rec.rounds + 1)]  # fmt: skip
    fixed = run.reward(rec.rm0)
    return [(0, "sft", fixed)] + [(r, a.policy(r), fixed) for r in range(1, rec.rounds + 1)]


def _scores(
    config, scorer: Scorers, reward, prompts, responses, memo: dict | None = None, key: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Scores [prompts, k] and sample mask of the texts under ``reward``: an RM export, or
    (member exports, aggregation): the ensemble's reward as PPO computed it
    (``ensemble_reward.Ensemble``: standardised members, aggregated). With ``memo``, each RM scores the
    texts named ``key`` once."""

    def one(path):
        if memo is None:
            return scorer(path).score(prompts, responses)
        if (path, key) not in memo:
            memo[path, key] = scorer(path).score(prompts, responses)
        return memo[path, key]

    if isinstance(reward, str):
        return one(reward)
    paths, agg = reward
    p = config.ppo
    ens = rollout.ensemble_from(paths, agg, p.ensemble_lambda, p.ensemble_standardize)
    scored = [one(path) for path in paths]
    members = np.stack([s for s, _ in scored])  # [M, prompts, k]
    out, _ = ens(jnp.asarray(members.reshape(len(paths), -1)))
    return np.asarray(out, np.float64).reshape(members.shape[1:]), scored[0][1]


def _experiment(ctx, rec: RunRecord, layout, test, valid, world, scorer, n_boot) -> dict:
    """The experiment's controls, every arm's frontier (gold and proxy against √KL at every
    export), its peak (chosen on validation) and final gold, and each arm's RM accuracy against
    gold on its own policy's samples. Needs the synthetic world's gold reward."""
    if world is None:
        note = "needs the synthetic world's gold reward (rlhf.world); not measured"
        return {"controls": {"note": note}, "curves": {}, "rm_on_policy_accuracy": {}}
    config = ctx.config
    policies = rec.policies()
    gold_test, gold_valid = {}, {}

    def gold_of(name):
        if name not in gold_test:
            ps, resp = test[name]
            gold_test[name] = np.asarray(
                [np.mean(world.gold([p] * len(r), r)) for p, r in zip(ps, resp)], np.float64
            )
            vps, vresp = valid[name]
            gold_valid[name] = float(np.mean(world.gold(vps, [r[0] for r in vresp])))
        return gold_test[name]

    curves, fits, peak_final, on_policy = {}, {}, {}, {}
    for run in rec.arms.values():
        if run.arm.schedule not in (ROUNDS, CONTINUOUS):
            continue
        name, pts = run.arm.name, []
        for r, policy, rm in _points(rec, run):
            ps, resp = test[policy]
            g = gold_of(policy)
            kl_file = layout.path("samples", "kl", f"{policy}.json")
            kl = kl_lib.estimate(
                config, ctx.mesh, policies[policy], rec.sft, ps, int(config.seed), kl_file
            )
            proxy = g if rm is None else _scores(config, scorer, rm, ps, resp)[0].mean(-1)
            pts.append(
                compute.curve_point(r, r * rec.ppo_iterations, kl, g, proxy, gold_valid[policy])
            )
            if r > 0 and rm is not None:
                scores, mask = _scores(config, scorer, rm, ps, resp)
                ref = np.asarray([world.gold([p] * len(x), x) for p, x in zip(ps, resp)])
                on_policy.setdefault(name, {})[f"round{r}"] = compute.rm_agreement(
                    scores, ref, mask, n_boot
                )["accuracy"]
        curves[name] = pts
        fits[name] = compute.gao_fit([p["sqrt_kl"] for p in pts], [p["gold"] for p in pts])
        names = {r: p for r, p, _ in _points(rec, run)}
        peak_final[name] = compute.peak_and_final(
            {r: gold_valid[p] for r, p in names.items()},
            {r: gold_test[p] for r, p in names.items()},
            n_boot,
        )

    def difference(a: str, b: str) -> dict[str, Any]:
        """a − b in test gold, paired over prompts: at the end of the budget and at each one's
        own peak (its round chosen on validation)."""
        golds = []
        for name in (a, b):
            names = {r: p for r, p, _ in _points(rec, rec.arms[name])}
            golds += [{r: gold_test[p] for r, p in names.items()}]
            golds += [{r: gold_valid[p] for r, p in names.items()}]
        return compute.control_difference(*golds, n_boot)

    controls: dict[str, Any] = {"note": f"needs the {plan.FLOOR} arm"}
    if plan.FLOOR in peak_final:
        diffs = {c: difference(c, plan.FLOOR) for c in plan.CONTROLS if c in rec.arms}
        controls = compute.controls(compute.overoptimised(peak_final[plan.FLOOR]), diffs)
    # The method against each arm it is compared to, each at its OWN validation-chosen peak and
    # at the final round (the fair reading; Table 2 compares at the method's best round).
    method = {b: difference(plan.MAIN, b) for b in rec.main.arm.compare_to if b in peak_final}
    # MetaRM's premise in this world (docs/synthetic.md, "The blind world")
    pair = (gate.ORACLE, gate.ETA0)
    premise = gate.measure(
        rec,
        test,
        valid,
        world,
        lambda path, ps, resp: _scores(config, scorer, path, ps, resp),
        controls,
        difference(*pair)["peak"] if set(pair) <= set(rec.arms) else None,
    )
    return {
        "controls": controls,
        "gate": premise,
        "method_differences": method,
        "curves": curves,
        "frontier_fit": fits,
        "peak_final": peak_final,
        "rm_on_policy_accuracy": on_policy,
    }


def _rm_metrics(config, rec: RunRecord, test, prompts, world, scorer, n_boot) -> dict[str, Any]:
    """For each round r: the RMs of that round (r_0, every ROUNDS arm's, and the fixed reward of
    every rival CONTINUOUS arm: an ensemble's aggregate as PPO computed it, WARM's, the centred
    RM) on the probe set (π_SFT's samples), on each ROUNDS arm's round-r policy samples, and on
    the held-out shifted set (``compute.SHIFTED``: per test prompt, the samples of every arm's
    final policy pooled; test prompts, so no RM trained on them), against the reference."""
    rc = config.rlhf
    ref_name, reference = _reference(world, prompts, scorer, rc)
    if reference is None:
        return {"reference": None, "note": "no gold and no rlhf.judge_rm_path: not measured"}
    refs: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"reference": ref_name, "rounds": {}}
    finals = [
        run.arm.policy(rec.rounds)
        for run in rec.arms.values()
        if run.arm.schedule in (ROUNDS, CONTINUOUS)
    ]
    shifted = [[y for p in finals for y in test[p][1][i]] for i in range(len(prompts))]
    out["shifted_policies"] = finals
    memo: dict = {}  # a fixed RM scores a fixed set once, whatever the round
    rivals = {
        run.arm.name: run.reward(rec.rm0) for run in rec.of(CONTINUOUS) if run.arm.rival_reward
    }
    for r in range(1, rec.rounds + 1):
        rms = {"r0": rec.rm0}
        sets = {"probe (SFT samples)": "sft"}
        for run in rec.of(ROUNDS):
            rms[f"{run.arm.name}_r{r}"] = run.rm_at(r)
            sets[f"{run.arm.name} round {r} samples"] = run.arm.policy(r)
        rms.update({f"{name}_r{r}": reward for name, reward in rivals.items()})
        sets[compute.SHIFTED] = compute.SHIFTED
        table = {}
        for set_label, policy in sets.items():
            resp = shifted if policy == compute.SHIFTED else test[policy][1]
            if policy not in refs:
                refs[policy] = reference(resp)
            row = {}
            for rm_label, reward in rms.items():
                scores, mask = _scores(config, scorer, reward, prompts, resp, memo, policy)
                row[rm_label] = compute.rm_agreement(scores, refs[policy], mask, n_boot)
                # its within-prompt spread, and that over its spread on π_SFT's samples (the
                # probe, the first set): Figure 1's collapse, per RM and sample set
                spread = compute.within_prompt_spread(scores, mask)
                base = table["probe (SFT samples)"][rm_label]["spread"] if table else spread
                row[rm_label]["spread"] = spread
                row[rm_label]["spread_normalised"] = spread / base if base else float("nan")
            table[set_label] = row
        out["rounds"][f"round{r}"] = table
    return out


def _figure1(config, rec: RunRecord, test, scorer) -> dict[str, Any]:
    """Figure 1 as the paper draws it: at each PPO checkpoint of an arm (π_SFT, then the end of
    every round), two responses per test prompt, scored by the RM that arm's PPO optimised at
    that point; the variance of r(x, y1) - r(x, y2) over the prompts. It shrinks as PPO shifts
    the policy and the RM stops telling its responses apart."""
    iters = rec.ppo_iterations
    lines = {}
    for run in rec.arms.values():
        if run.arm.schedule == ROUNDS:
            lines[run.arm.name] = [("sft", rec.rm0, 0)] + [
                (run.arm.policy(x.round), x.rm, x.round * iters) for x in run.rounds
            ]
        elif run.arm.schedule == CONTINUOUS:
            rm = run.reward(rec.rm0) or rec.rm0  # the ceiling's: r_0 (its critic's start)
            lines[run.arm.name] = [("sft", rm, 0)] + [
                (run.arm.policy(r), rm, r * iters) for r in range(1, rec.rounds + 1)
            ]
    out: dict[str, Any] = {}
    for name, points in lines.items():
        xs, vs = [], []
        for policy, rm, x in points:
            prompts, resp = test[policy]
            scores, _ = _scores(config, scorer, rm, prompts, [r[:2] for r in resp])
            xs.append(x)
            vs.append(compute.pair_variance(scores))
        out[name] = {"iteration": xs, "variance": vs}
    return out


def _figure5(rec: RunRecord, test, scorer) -> dict[str, dict[str, np.ndarray]]:
    """|Δr| on the final MetaRM policy's test samples for step-matched RMs: r_0, and the last
    round's RM of the method and of every ROUNDS arm the plan compares the method to (eta0: the
    same pairs, the same steps); raw and / std(r)."""
    final = rec.main.rounds[-1]
    prompts, resp = test[rec.main.arm.policy(final.round)]
    rms = {"vanilla RM r0": rec.rm0, f"MetaRM round {final.round}": final.rm}
    for name in rec.main.arm.compare_to:
        if name in rec.arms and rec.arms[name].arm.schedule == ROUNDS:
            rms[f"{name} RM round {final.round}"] = rec.arms[name].rounds[-1].rm
    out = {}
    for name, path in rms.items():
        scores, mask = scorer(path).score(prompts, resp)
        out[name] = compute.normalised_differences(scores, mask)
    return out
