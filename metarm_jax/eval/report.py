"""The run report of iterative RLHF: the paper's tables and figures, with the controls and the
intervals that let them be read.

    Selection  the best MetaRM round, chosen on VALIDATION prompts (round r vs SFT)
    Table 1    each round of each arm vs π_SFT on TEST prompts (win / tie / lose, 95% intervals)
    Table 2    the best round r* vs SFT, the eta0 arm at r*, vanilla PPO after the same number of
               PPO iterations (and at the end), DPO, the oracle arm at r*
    Gold       mean gold reward of every policy (synthetic world), 95% intervals, and paired
               differences for Table 2
    RM metrics within-prompt pairwise accuracy and Kendall τ of each round's RMs (r_0, eta0,
               MetaRM, oracle) against gold, on each arm's round-r policy samples and on a fixed
               probe set (π_SFT's samples), 95% intervals over prompts
    Figure 1   variance of within-prompt reward differences over PPO, per arm
    Figure 4   RM validation accuracy per round
    Figure 5   |Δr| on the final policy's samples, raw and normalised, step-matched RMs
    Checks     every arm's RM and PPO step counts, the fraction of PPO scores the reward clip
               cut (flagged above 10%), the MetaRM step's geometry

Every interval is a percentile bootstrap over prompts (paired where two policies are compared on
the same prompts). Everything goes to the workdir: ``report.md``, ``report.json``, ``fig*.png``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import jax
import numpy as np

from metarm_jax import data as D
from metarm_jax import faults
from metarm_jax.core import stats
from metarm_jax.data import synthetic
from metarm_jax.errors import UserError
from metarm_jax.eval import diversity, human, judges, llm_judge, plots
from metarm_jax.scoring import RewardScorer

CLIP_FLAG = 0.10  # an arm whose PPO scores are clipped more often than this is flagged


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (missing file: no rows)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_samples(path: str) -> tuple[list[str], list[list[str]]]:
    recs = D.load_meta_examples(path, on_bad_record="error")
    return [r.prompt for r in recs], [list(r.responses) for r in recs]


def _same_prompts(texts: dict[str, tuple[list[str], list]], what: str) -> list[str]:
    prompts = next(iter(texts.values()))[0]
    for name, (p, _) in texts.items():
        if p != prompts:
            raise RuntimeError(f"report: the {what} prompts of {name} differ from the others'.")
    return prompts


# --------------------------------------------------------------------------------------------
# Comparisons with intervals.
# --------------------------------------------------------------------------------------------


def comparison(res: judges.JudgeResult, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """win / tie / lose of A vs B with paired-bootstrap 95% intervals over prompts."""
    o = np.asarray(res.outcomes, np.float64)
    out = {
        "win": res.win,
        "tie": res.tie,
        "lose": res.lose,
        "n": res.n,
        "win_rate": res.win_rate,
        "lose_rate": res.lose_rate,
        "net": (res.win - res.lose) / res.n if res.n else 0.0,
    }
    out["win_ci"] = stats.bootstrap_ci(o > 0, n_resamples=n_boot, seed=seed)
    out["lose_ci"] = stats.bootstrap_ci(o < 0, n_resamples=n_boot, seed=seed)
    out["net_ci"] = stats.bootstrap_ci(o, n_resamples=n_boot, seed=seed)
    return out


def _mean_ci(values: np.ndarray, n_boot: int) -> dict[str, Any]:
    lo, hi = stats.bootstrap_ci(values, n_resamples=n_boot)
    return {"mean": float(np.mean(values)), "ci": (lo, hi)}


def select_best(valid: dict[str, dict]) -> str:
    """The best round: highest net win rate (win - lose) against SFT on the validation prompts;
    a tie goes to the earlier round (fewer PPO iterations)."""
    return max(valid, key=lambda k: (valid[k]["net"], -int(k.removeprefix("round"))))


def _excludes_zero(ci) -> bool:
    return bool(np.isfinite(ci[0]) and (ci[0] > 0 or ci[1] < 0))


# --------------------------------------------------------------------------------------------
# The report.
# --------------------------------------------------------------------------------------------


def build(
    ctx,
    *,
    arms: dict[str, list[dict]],
    baselines: dict,
    test_samples: dict[str, str],
    valid_samples: dict[str, str],
    rm0: str,
    rm0_steps: int,
    sft_workdir: str | None,
    rm0_workdir: str | None,
) -> dict[str, Any]:
    """Judge, tabulate and plot; write report.md / report.json / fig*.png into ctx.workdir."""
    config, mesh, workdir = ctx.config, ctx.mesh, ctx.workdir
    rc = config.rlhf
    n_boot = int(rc.bootstrap)
    lead = jax.process_index() == 0
    rounds = int(rc.rounds)

    test = {name: _load_samples(path) for name, path in test_samples.items()}
    valid = {name: _load_samples(path) for name, path in valid_samples.items()}
    prompts, vprompts = _same_prompts(test, "test"), _same_prompts(valid, "validation")
    if set(prompts) & set(vprompts):
        raise RuntimeError(
            f"report: {len(set(prompts) & set(vprompts))} validation prompts are also test "
            "prompts; the best round must be chosen on prompts it is not compared on."
        )
    first = {name: [r[0] for r in resp] for name, (_, resp) in test.items()}
    vfirst = {name: [r[0] for r in resp] for name, (_, resp) in valid.items()}

    use_gold = rc.judge == "gold" or (rc.judge == "auto" and rc.world)
    world = synthetic.World(config.world) if use_gold else None
    scorers: dict[str, RewardScorer] = {}

    def scorer(path: str) -> RewardScorer:
        if path not in scorers:
            scorers[path] = RewardScorer(config, mesh, path)
        return scorers[path]

    if rc.judge not in ("auto", "gold", "rm", "llm"):
        raise ValueError(f"config.rlhf.judge={rc.judge!r}; expected auto, gold, rm or llm.")
    if rc.judge == "llm":
        judge = llm_judge.from_config(config.judge, workdir=workdir)
        judge_name = judge.describe()
    elif world is not None:
        judge = judges.GoldJudge(world, tie_margin=rc.tie_margin)
        judge_name = "gold reward (synthetic world)"
    else:
        ref = rc.judge_rm_path or rm0
        judge = judges.RewardModelJudge(scorer(ref).score_fn, tie_margin=rc.tie_margin)
        judge_name = f"reward model {ref}" + (
            "" if rc.judge_rm_path else " (the vanilla RM: not independent of training)"
        )

    def vs(a, b, texts=first, ps=prompts):
        return comparison(judge.compare(ps, texts[a], texts[b]), n_boot)

    # Selection on validation prompts only; Tables 1 and 2 on test prompts only.
    meta_names = [f"round{x['round']}" for x in arms["metarm"]]
    selection = {name: vs(name, "sft", vfirst, vprompts) for name in meta_names}
    best = select_best(selection)
    r_best = int(best.removeprefix("round"))
    table1 = {}
    for arm, rs in arms.items():
        prefix = "" if arm == "metarm" else f"{arm}_"
        for x in rs:
            table1[f"{prefix}round{x['round']}"] = vs(f"{prefix}round{x['round']}", "sft")
    opponents = {"sft": "sft"}
    for arm in ("eta0", "oracle"):
        if arm in arms:
            opponents[f"{arm} (round {r_best})"] = f"{arm}_round{r_best}"
    if "vanilla_ppo" in baselines:
        opponents[f"vanilla PPO (round {r_best} budget)"] = f"vanilla_ppo@{r_best}"
        if r_best != rounds:
            opponents[f"vanilla PPO (full budget, round {rounds})"] = f"vanilla_ppo@{rounds}"
    if "dpo" in baselines:
        opponents["dpo"] = "dpo"
    table2 = {label: vs(best, name) for label, name in opponents.items()}
    # Every round against vanilla PPO after the same PPO iterations (Figure 3 in the OOD setting)
    rounds_vs_vanilla = (
        {n: vs(n, f"vanilla_ppo@{n.removeprefix('round')}") for n in meta_names}
        if "vanilla_ppo" in baselines
        else {}
    )

    # Rewards of every policy's test samples (the judge reads the first sample of each prompt).
    gold: dict[str, dict] = {}
    gold_diff: dict[str, dict] = {}
    if world is not None:
        g = {
            name: np.asarray(world.gold(prompts, resp), np.float64) for name, resp in first.items()
        }
        gold = {name: _mean_ci(v, n_boot) for name, v in g.items()}
        for label, name in opponents.items():
            d = g[best] - g[name]
            gold_diff[label] = {
                "diff": float(d.mean()),
                "ci": stats.bootstrap_ci(d, n_resamples=n_boot),
            }
    last_rm = arms["metarm"][-1]["rm"]
    proxies = {
        name: {
            "vanilla_rm": float(np.mean(scorer(rm0).score_fn(prompts, resp))),
            "last_metarm": float(np.mean(scorer(last_rm).score_fn(prompts, resp))),
        }
        for name, resp in first.items()
    }

    rm_metrics = _rm_metrics(arms, test, prompts, world, scorer, rm0, rc, n_boot)
    fig1 = _figure1(arms, baselines, test, scorer, rm0, int(config.ppo.iterations), rounds)
    lengths = _lengths(config, test)
    div = _diversity(config, first, rc.diversity)
    human_eval = _human(config, workdir, prompts, first, best, n_boot, lead)
    fig5 = _figure5(arms, test, scorer, rm0)

    # Curves, step counts, clipping and the meta step's geometry, from the stages' metrics.
    ppo_rows, rm_rows, clip, geometry, budget = {}, {}, {}, {}, {}
    if rm0_workdir:
        rm_rows["vanilla_rm"] = read_metrics(os.path.join(rm0_workdir, "rm", "metrics.jsonl"))
    for arm, rs in arms.items():
        prefix = "" if arm == "metarm" else f"{arm}_"
        rows = []
        for x in rs:
            rows += read_metrics(os.path.join(x["ppo_workdir"], "ppo", "metrics.jsonl"))
            kind = "rm" if arm == "oracle" else "metarm"
            rrows = read_metrics(os.path.join(x["rm_workdir"], kind, "metrics.jsonl"))
            rm_rows[f"{prefix}round{x['round']}"] = rrows
            if arm == "metarm":
                geometry[f"round{x['round']}"] = _geometry(rrows)
        ppo_rows[arm] = rows
        budget[arm] = {
            "rm_steps": rm0_steps + sum(x["rm_steps"] for x in rs),
            "ppo_iterations": sum(x["ppo_iterations"] for x in rs),
        }
    if "vanilla_ppo" in baselines:
        ppo_rows["vanilla_ppo"] = read_metrics(
            os.path.join(baselines["vanilla_ppo"]["ppo_workdir"], "ppo", "metrics.jsonl")
        )
        budget["vanilla_ppo"] = {
            "rm_steps": rm0_steps,
            "ppo_iterations": int(config.ppo.iterations) * rounds,
        }
    if "dpo" in baselines:
        budget["dpo"] = {"rm_steps": 0, "ppo_iterations": 0, "dpo_steps": baselines["dpo"]["steps"]}
    for name, rows in ppo_rows.items():
        f = [r["rollout/reward_clip_frac"] for r in rows if "rollout/reward_clip_frac" in r]
        clip[name] = {
            "mean": float(np.mean(f)) if f else 0.0,
            "flag": bool(f and np.mean(f) > CLIP_FLAG),
        }

    d = config.data
    result = {
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
        "fig5": {
            k: {"mean": float(v["raw"].mean()), "normalised_mean": float(v["normalised"].mean())}
            for k, v in fig5.items()
        },
        "budget": budget,
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
        figs = {
            "fig1": plots.shift_variance(workdir, ppo_rows),
            "fig1_paper": plots.checkpoint_variance(workdir, fig1),
            "fig3": plots.win_rates(
                workdir,
                {"vs SFT": {k: table1[k] for k in meta_names}, "vs vanilla PPO": rounds_vs_vanilla},
                "Figure 3: MetaRM rounds on OOD prompts"
                if rc.meta_prompts == "ood"
                else "MetaRM rounds: win / tie / lose on the test prompts",
            ),
            "fig4": plots.rm_accuracy(workdir, rm_rows),
            "fig5": plots.reward_differences(workdir, fig5),
            "rewards": plots.rewards(
                workdir, {k: (v["mean"], *v["ci"]) for k, v in gold.items()}, ppo_rows
            ),
        }
        with open(os.path.join(workdir, "report.md"), "w") as f:
            f.write(_markdown(result, figs))
        with open(os.path.join(workdir, "report.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(_console(result))
    return {"report": os.path.join(workdir, "report.md"), **_summary(result)}


def _geometry(rows: list[dict]) -> dict[str, float]:
    out = {}
    for key in (
        "meta/ascent_norm",
        "update_norm",
        "meta/ascent_to_update",
        "meta/cos_gradJ_grad",
        "meta/J",
        "meta/J_prime",
    ):
        v = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if v:
            out[key] = float(np.mean(v))
    return out


def _rm_metrics(arms, test, prompts, world, scorer, rm0, rc, n_boot) -> dict[str, Any]:
    """For each round r: the RMs of that round (r_0, eta0, MetaRM, oracle) on the probe set
    (π_SFT's samples) and on each arm's round-r policy samples, against the reference."""
    if world is not None:
        ref_name = "gold"

        def reference(resp):
            return np.asarray(
                [world.gold([p] * len(r), r) for p, r in zip(prompts, resp)], np.float64
            )
    elif rc.judge_rm_path:
        ref_name = f"independent RM {rc.judge_rm_path}"

        def reference(resp):
            return scorer(rc.judge_rm_path).score(prompts, resp)[0]
    else:
        return {"reference": None, "note": "no gold and no rlhf.judge_rm_path: not measured"}
    refs: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"reference": ref_name, "rounds": {}}
    for r in range(1, int(rc.rounds) + 1):
        rms = {"r0": rm0}
        sets = {"probe (SFT samples)": "sft"}
        for arm, rs in arms.items():
            label = "metarm" if arm == "metarm" else arm
            rms[f"{label}_r{r}"] = rs[r - 1]["rm"]
            sets[f"{arm} round {r} samples"] = ("" if arm == "metarm" else f"{arm}_") + f"round{r}"
        table = {}
        for set_label, policy in sets.items():
            resp = test[policy][1]
            if policy not in refs:
                refs[policy] = reference(resp)
            row = {}
            for rm_label, path in rms.items():
                scores, mask = scorer(path).score(prompts, resp)
                acc, tau = stats.ranking_agreement(scores, refs[policy], mask)
                row[rm_label] = {
                    "accuracy": float(np.nanmean(acc)),
                    "accuracy_ci": stats.bootstrap_ci(acc, n_resamples=n_boot),
                    "tau": float(np.nanmean(tau)),
                    "tau_ci": stats.bootstrap_ci(tau, n_resamples=n_boot),
                }
            table[set_label] = row
        out["rounds"][f"round{r}"] = table
    return out


def _figure1(arms, baselines, test, scorer, rm0, iters, rounds) -> dict[str, Any]:
    """Figure 1 as the paper draws it: at each PPO checkpoint of an arm (π_SFT, then the end of
    every round), two responses per test prompt, scored by the RM that arm's PPO optimised at
    that point; the variance of r(x, y1) - r(x, y2) over the prompts. It shrinks as PPO shifts
    the policy and the RM stops telling its responses apart."""
    out: dict[str, Any] = {}
    lines = {}
    for arm, rs in arms.items():
        prefix = "" if arm == "metarm" else f"{arm}_"
        lines[arm] = [("sft", rm0, 0)] + [
            (f"{prefix}round{x['round']}", x["rm"], x["round"] * iters) for x in rs
        ]
    if "vanilla_ppo" in baselines:
        lines["vanilla_ppo"] = [("sft", rm0, 0)] + [
            (f"vanilla_ppo@{r}", rm0, r * iters) for r in range(1, rounds + 1)
        ]
    for name, points in lines.items():
        xs, vs = [], []
        for policy, rm, x in points:
            prompts, resp = test[policy]
            pairs = [r[:2] for r in resp]
            scores, _ = scorer(rm).score(prompts, pairs)
            xs.append(x)
            vs.append(float(np.var(scores[:, 0] - scores[:, 1])))
        out[name] = {"iteration": xs, "variance": vs}
    return out


def _lengths(config, test) -> dict[str, dict[str, float]]:
    """Response length in tokens (the RM's tokenizer) of every policy's test samples: PPO's
    length drift is the first thing to check next to a win rate."""
    tok = D.load_tokenizer(config.data.tokenizer_path)
    out = {}
    for name, (_, resp) in test.items():
        texts = [r for rs in resp for r in rs]
        n = np.asarray([len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts])
        q = np.percentile(n, [10, 50, 90]) if len(n) else [0, 0, 0]
        out[name] = {
            "mean": float(n.mean()),
            "p10": float(q[0]),
            "median": float(q[1]),
            "p90": float(q[2]),
        }
    return out


def _diversity(config, first, mode: str) -> dict[str, Any]:
    """Table 3: Self-BLEU (and with mode 'all' embedding similarity) of one response per test
    prompt for every policy, and of the data's chosen responses (lower = more diverse)."""
    if not mode:
        return {}
    if mode not in ("self_bleu", "all"):
        raise ValueError(f"config.rlhf.diversity={mode!r}; expected '', 'self_bleu' or 'all'.")
    d = config.data
    rows = {}
    try:
        tok = D.load_tokenizer(d.tokenizer_path) if d.tokenizer_path else None  # chat templates
        pairs = D.load_records("preference", d, tok, split=d.eval_split)
        rows["chosen (data)"] = [p.chosen for p in pairs][: len(next(iter(first.values())))]
    except Exception as e:
        rows_note = f"chosen responses unavailable: {str(e).splitlines()[0][:200]}"
    else:
        rows_note = ""
    rows.update(first)
    out = {"rows": diversity.table(rows, embeddings=mode == "all")}
    if rows_note:
        out["note"] = rows_note
    return out


def _human(config, workdir, prompts, first, best, n_boot, lead) -> dict[str, Any]:
    """Blind pairs for people (best round vs SFT) and, when filled in, their verdicts."""
    rc = config.rlhf
    out: dict[str, Any] = {}
    folder = os.path.join(workdir, "human_eval")
    if rc.human_export and lead:
        out["export"] = human.export_pairs(
            folder, prompts, first[best], first["sft"], name_a=best, name_b="sft",
            seed=int(config.seed),
        )  # fmt: skip
    if rc.human_verdicts:
        res = human.import_verdicts(rc.human_verdicts, os.path.join(folder, "key.json"))
        out["verdicts"] = comparison(res, n_boot)
    return out


def _figure5(arms, test, scorer, rm0) -> dict[str, dict[str, np.ndarray]]:
    """|Δr| on the final MetaRM policy's test samples for step-matched RMs: r_0, and the last
    round's eta0 RM (the same BT steps as MetaRM) and MetaRM; raw and / std(r)."""
    final = arms["metarm"][-1]
    prompts, resp = test[f"round{final['round']}"]
    rms = {"vanilla RM r0": rm0, f"MetaRM round {final['round']}": final["rm"]}
    if "eta0" in arms:
        rms[f"eta0 RM round {final['round']}"] = arms["eta0"][-1]["rm"]
    out = {}
    for name, path in rms.items():
        scores, mask = scorer(path).score(prompts, resp)
        raw = stats.abs_differences(scores, mask)
        spread = float(np.std(scores[mask.astype(bool)])) or 1.0
        out[name] = {"raw": raw, "normalised": raw / spread}
    return out


# --------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def _ci(ci, pct=True) -> str:
    f = _pct if pct else (lambda v: f"{v:+.3f}")
    return f"[{f(ci[0])}, {f(ci[1])}]" if np.isfinite(ci[0]) else "[n/a]"


def _cmp_table(rows: dict, header: str) -> list[str]:
    out = [
        f"| {header} | win | tie | lose | win rate (95% CI) | lose rate (95% CI) | win - lose (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, v in rows.items():
        out.append(
            f"| {k} | {v['win']} | {v['tie']} | {v['lose']} | {_pct(v['win_rate'])} "
            f"{_ci(v['win_ci'])} | {_pct(v['lose_rate'])} {_ci(v['lose_ci'])} | "
            f"{_pct(v['net'])} {_ci(v['net_ci'])} |"
        )
    return out


def _plain_words(res: dict) -> list[str]:
    best = res["best_round"]
    out = [
        f"The best MetaRM round on the {res['valid_prompts']} validation prompts is {best} "
        f"(win - lose vs SFT there: {_pct(res['selection'][best]['net'])})."
    ]
    for label, v in res["table2"].items():
        if _excludes_zero(v["net_ci"]):
            word = "beats" if v["net"] > 0 else "loses to"
            out.append(
                f"On the test prompts {best} {word} {label}: win - lose {_pct(v['net'])} "
                f"{_ci(v['net_ci'])}, an interval that excludes 0."
            )
        else:
            out.append(
                f"On the test prompts {best} and {label} cannot be told apart: win - lose "
                f"{_pct(v['net'])} {_ci(v['net_ci'])} includes 0."
            )
    oracle = next((k for k in res["gold_diff"] if k.startswith("oracle")), None)
    vanilla = next((k for k in res["gold_diff"] if k.startswith("vanilla PPO (round")), None)
    if oracle and vanilla:
        o = res["gold"].get(f"oracle_round{best.removeprefix('round')}", {}).get("mean")
        v = res["gold"].get(f"vanilla_ppo@{best.removeprefix('round')}", {}).get("mean")
        if o is not None and v is not None and o <= v:
            out.append(
                f"The oracle arm (an RM trained on gold-labelled on-policy pairs) does not reach "
                f"a higher mean gold than vanilla PPO at the same budget ({o:.3f} vs {v:.3f}): "
                "this world and budget cannot reward a better RM, so no RM method can win here."
            )
    for name, c in res["reward_clip"].items():
        if c["flag"]:
            out.append(
                f"Warning: {_pct(c['mean'])} of {name}'s PPO scores were clipped (more than "
                f"{_pct(CLIP_FLAG)}): the reward is flat where the clip cuts it."
            )
    return out


def _clip_text(text: str, limit: int, keep: str) -> str:
    """``text`` cut to ``limit`` characters, keeping its ``keep`` end ("start" or "end")."""
    if len(text) <= limit:
        return text
    return text[:limit] + " ..." if keep == "start" else "... " + text[-limit:]


def _markdown(res: dict, figs: dict[str, str]) -> str:
    best = res["best_round"]
    lines = [
        "# Iterative RLHF with MetaRM: report"
        + (" (OOD setting, the paper's Figure 3)" if res["setting"] == "ood" else ""),
        "",
        f"Meta samples and PPO prompts: `{res['train_prompts']}`; validation and test prompts: "
        f"`{res['eval_prompts']}`.",
        "",
        f"Judge: {res['judge']}"
        + ("" if res.get("judge_stats") else f"; tie margin {res['tie_margin']}")
        + f"; {res['prompts']} test prompts "
        f"({res['samples_per_prompt']} samples each; the judge reads the first), "
        f"{res['valid_prompts']} validation prompts; 95% intervals from {res['bootstrap']} "
        "paired bootstrap resamples of the prompts.",
        "",
        "## In plain words",
        "",
        *[f"- {line}" for line in _plain_words(res)],
        "",
        "## Selection (validation prompts): each MetaRM round vs SFT",
        "",
        *_cmp_table(res["selection"], "round vs SFT"),
        "",
        "## Table 1 (test prompts): each round of each arm vs SFT",
        "",
        *_cmp_table(res["table1"], "policy vs SFT"),
        "",
        f"## Table 2 (test prompts): the best round ({best}) vs the baselines",
        "",
        *_cmp_table(res["table2"], f"{best} vs"),
        "",
    ]
    if res["rounds_vs_vanilla"]:
        lines += [
            "## Each MetaRM round vs vanilla PPO after the same PPO iterations (test prompts)",
            "",
            *_cmp_table(res["rounds_vs_vanilla"], "round vs vanilla PPO"),
            "",
        ]
    if res["gold"]:
        lines += [
            "## Mean gold reward of the test samples",
            "",
            "| policy | gold (95% CI) | proxy: vanilla RM | proxy: last MetaRM |",
            "|---|---|---|---|",
        ]
        for name, v in res["gold"].items():
            p = res["proxy"][name]
            lines.append(
                f"| {name} | {v['mean']:.4f} {_ci(v['ci'], pct=False)} | "
                f"{p['vanilla_rm']:+.4f} | {p['last_metarm']:+.4f} |"
            )
        lines += ["", f"Paired differences, {best} minus each opponent:", ""]
        lines += ["| opponent | gold difference (95% CI) |", "|---|---|"]
        lines += [
            f"| {k} | {v['diff']:+.4f} {_ci(v['ci'], pct=False)} |"
            for k, v in res["gold_diff"].items()
        ]
        lines += [""]
    rm = res["rm_metrics"]
    lines += ["## RM metrics: ranking agreement within prompts", ""]
    if rm.get("reference") is None:
        lines += [rm.get("note", "not measured"), ""]
    else:
        lines += [
            f"Against {rm['reference']}: pairwise accuracy (pairs whose reference differs) and "
            "Kendall τ, mean over prompts, 95% intervals over prompts.",
            "",
        ]
        for rname, table in rm["rounds"].items():
            rms = list(next(iter(table.values())))
            lines += [
                f"### {rname}",
                "",
                "| samples | " + " | ".join(f"{k} acc / τ" for k in rms) + " |",
                "|---" * (len(rms) + 1) + "|",
            ]
            for set_label, row in table.items():
                cells = [
                    f"{v['accuracy']:.3f} {_ci(v['accuracy_ci'], pct=False)} / {v['tau']:.3f}"
                    for v in row.values()
                ]
                lines.append(f"| {set_label} | " + " | ".join(cells) + " |")
            lines += [""]
    lines += [
        "## Response length (tokens) of the test samples",
        "",
        "| policy | mean | p10 | median | p90 |",
        "|---|---|---|---|---|",
        *[
            f"| {k} | {v['mean']:.1f} | {v['p10']:.0f} | {v['median']:.0f} | {v['p90']:.0f} |"
            for k, v in res["lengths"].items()
        ],
        "",
    ]
    if res["diversity"]:
        lines += [
            "## Table 3: diversity (one response per test prompt; lower = more diverse)",
            "",
            diversity.markdown(res["diversity"]["rows"]),
            "",
        ]
        if res["diversity"].get("note"):
            lines += [res["diversity"]["note"], ""]
    if res["human"].get("export"):
        folder = os.path.dirname(res["human"]["export"]["html"])
        lines += [
            f"Human evaluation: blind pairs ({res['best_round']} vs SFT) in `{folder}` "
            "(open pairs.html; the key is in key.json).",
            "",
        ]
    if res["human"].get("verdicts"):
        rows = {"best round vs SFT": res["human"]["verdicts"]}
        lines += ["## Human verdicts", "", *_cmp_table(rows, "people"), ""]
    if res.get("judge_stats"):
        js = res["judge_stats"]
        lines += ["## LLM judge accounting", "", "| " + " | ".join(js) + " |"]
        lines += [
            "|---" * len(js) + "|",
            "| "
            + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in js.values())
            + " |",
            "",
        ]
    lines += [
        "## Budgets, clipping and the meta step",
        "",
        "| arm | RM steps | PPO iterations | scores clipped |",
        "|---|---|---|---|",
    ]
    for name, b in res["budget"].items():
        c = res["reward_clip"].get(name, {"mean": 0.0, "flag": False})
        flag = " (flagged)" if c["flag"] else ""
        lines.append(
            f"| {name} | {b['rm_steps']} | {b['ppo_iterations']} | {_pct(c['mean'])}{flag} |"
        )
    lines += ["", "MetaRM step geometry (means over each round's steps):", ""]
    keys = sorted({k for g in res["geometry"].values() for k in g})
    lines += ["| round | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r, g in res["geometry"].items():
        lines.append(f"| {r} | " + " | ".join(f"{g.get(k, float('nan')):.4g}" for k in keys) + " |")
    if res.get("examples"):
        lines += [
            "",
            f"## Example responses: the first {len(res['examples'])} test prompts, each "
            "policy's first sample",
            "",
        ]
        for i, ex in enumerate(res["examples"], 1):
            lines += [
                f"**Prompt {i}.**",
                "",
                "```",
                _clip_text(ex["prompt"], 800, "end"),
                "```",
                "",
            ]
            for name, text in ex["responses"].items():
                lines += [f"- `{name}`: {_clip_text(text, 400, 'start')!r}"]
            lines += [""]
    lines += ["", "## Figures", ""]
    fig5 = res["fig5"]
    lines += [
        "Figure 5, mean |Δr| on the final policy's samples (raw / divided by the spread of r): "
        + "; ".join(f"{k} {v['mean']:.4f} / {v['normalised_mean']:.4f}" for k, v in fig5.items())
        + ".",
        "",
    ]
    for key, title in (
        (
            "fig1_paper",
            "Figure 1 as the paper draws it: variance of r(x, y1) - r(x, y2) at each checkpoint",
        ),
        ("fig1", "Figure 1, every PPO iteration's roll-outs: variance of within-prompt |Δr|"),
        (
            "fig3",
            "Figure 3 (OOD setting) / win-tie-lose per round: vs SFT and vs vanilla PPO at the same budget",
        ),
        ("fig4", "Figure 4: RM validation accuracy"),
        ("fig5", "Figure 5: |Δr| raw and normalised"),
        ("rewards", "Rewards by policy and over PPO"),
    ):
        lines += [f"### {title}", "", f"![{key}]({figs[key]})", ""]
    return "\n".join(lines)


def _console(res: dict) -> str:
    lines = [f"Judge: {res['judge']}; best round on validation: {res['best_round']}"]
    lines += ["Table 1 (test): vs SFT, win/tie/lose  win-lose [95% CI]"]
    lines += [
        f"  {k:16s} {v['win']} / {v['tie']} / {v['lose']}  {_pct(v['net'])} {_ci(v['net_ci'])}"
        for k, v in res["table1"].items()
    ]
    lines += [f"Table 2 (test): {res['best_round']} vs"]
    lines += [
        f"  {k:34s} {v['win']} / {v['tie']} / {v['lose']}  {_pct(v['net'])} {_ci(v['net_ci'])}"
        for k, v in res["table2"].items()
    ]
    if res["gold"]:
        lines += ["Mean gold of test samples [95% CI]:"]
        lines += [
            f"  {k:16s} {v['mean']:.4f} {_ci(v['ci'], pct=False)}" for k, v in res["gold"].items()
        ]
    lines += [f"  {line}" for line in _plain_words(res)]
    return "\n".join(lines)


def _summary(res: dict) -> dict[str, Any]:
    """The numbers the stage returns (and aggregate_seeds averages)."""
    return {
        "best_round": res["best_round"],
        "table1": {k: [v["win"], v["tie"], v["lose"]] for k, v in res["table1"].items()},
        "table2": {k: [v["win"], v["tie"], v["lose"]] for k, v in res["table2"].items()},
        "net": {k: v["net"] for k, v in res["table2"].items()},
        "gold": {k: v["mean"] for k, v in res["gold"].items()},
        "gold_diff": {k: v["diff"] for k, v in res["gold_diff"].items()},
        "fig5": res["fig5"],
        "rm_accuracy": {
            r: {s: {k: v["accuracy"] for k, v in row.items()} for s, row in t.items()}
            for r, t in res["rm_metrics"].get("rounds", {}).items()
        },
    }


# --------------------------------------------------------------------------------------------
# Seeds.
# --------------------------------------------------------------------------------------------


def _flatten(prefix: str, x, out: dict) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(x, list | tuple) and len(x) == 3 and ("table1" in prefix or "table2" in prefix):
        for k, v in zip(("win", "tie", "lose"), x):
            out[f"{prefix}.{k}"] = v
    elif isinstance(x, int | float) and not isinstance(x, bool):
        out[prefix] = float(x)


def _same_round(key: str) -> str:
    key = re.sub(r"\(round \d+\)", "(same round)", key)
    key = re.sub(r"\(round \d+ budget\)", "(same budget)", key)
    return re.sub(r"\(full budget, round \d+\)", "(full budget)", key)


def aggregate_reports(workdir: str) -> str:
    """aggregate_seeds from the seed<i>/report.json files already written (no stage reruns):
    ``python -m metarm_jax.eval.report --aggregate runs/study``."""
    paths = sorted(
        glob.glob(os.path.join(workdir, "seed*", "report.json")),
        key=lambda p: int(re.sub(r"\D", "", os.path.basename(os.path.dirname(p))) or 0),
    )
    if not paths:
        raise UserError(f"{workdir}: no seed*/report.json to aggregate; run the seeds first.")
    per_seed = []
    for p in paths:
        with open(p) as f:
            per_seed.append({"rlhf": _summary(json.load(f))})
    return aggregate_seeds(workdir, per_seed)


def aggregate_seeds(workdir: str, per_seed: list[dict]) -> str:
    """mean ± std and a t interval over seeds of every number in the rlhf stage's summary ->
    seeds.md (+ the text)."""
    flat = []
    for run in per_seed:
        f: dict = {}
        _flatten("", {k: v for k, v in run.get("rlhf", {}).items() if k != "report"}, f)
        # The best round differs between seeds: its baselines are named by their role, so the
        # paired comparison of each seed's best round with its eta0 etc. lines up across seeds.
        f = {_same_round(k): v for k, v in f.items()}
        gold = run.get("rlhf", {}).get("gold", {})
        for r in sorted(k for k in gold if re.fullmatch(r"round\d+", k)):
            n = r.removeprefix("round")
            for ctl in (f"eta0_round{n}", f"oracle_round{n}", f"vanilla_ppo@{n}"):
                if ctl in gold:  # MetaRM round r minus a control after the same budget
                    f[f"paired_gold.{r} - {ctl}"] = float(gold[r]) - float(gold[ctl])
        flat.append(f)
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    best = [run.get("rlhf", {}).get("best_round") for run in per_seed]
    lines = [
        f"# Over {len(per_seed)} seeds: mean ± std, 95% t interval of the mean",
        "",
        f"Best round per seed (chosen on validation prompts): {best}.",
        "",
        "| quantity | mean | std | 95% CI of the mean | per seed |",
        "|---|---|---|---|---|",
    ]
    for k in keys:
        v = np.asarray([f[k] for f in flat])
        lo, hi = stats.t_interval(v)
        lines.append(
            f"| {k} | {v.mean():.4g} | {v.std(ddof=1):.3g} | [{lo:.4g}, {hi:.4g}] | "
            + ", ".join(f"{x:.4g}" for x in v)
            + " |"
        )
    text = "\n".join(lines)
    with open(os.path.join(workdir, "seeds.md"), "w") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Re-aggregate a multi-seed run's reports.")
    ap.add_argument("--aggregate", required=True, metavar="WORKDIR", help="holds seed*/report.json")
    try:
        print(aggregate_reports(ap.parse_args().aggregate))
    except UserError as e:
        sys.exit(f"error: {e}")
