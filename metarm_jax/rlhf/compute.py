"""The report's numbers, as pure functions of loaded data (no files, no models, no judges): each
is unit-tested on small hand-made inputs (tests/test_report_compute.py).

Every interval is a percentile bootstrap over prompts (paired where two policies are compared on
the same prompts), or a t interval over seeds (``metarm_jax/rlhf/seeds.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarm_jax.core import stats
from metarm_jax.eval.judges import JudgeResult
from metarm_jax.rlhf import plan
from metarm_jax.rlhf.plan import CONTINUOUS, ROUNDS, SINGLE, RunRecord

CLIP_FLAG = 0.10  # an arm whose PPO scores are clipped more often than this is flagged
CLIP_KEY = "rollout/reward_clip_frac"  # written by metarm_jax/train/rollout.py
GEOMETRY_KEYS = (  # the MetaRM step's geometry: core/metarm.py and the train loop write them
    "meta/ascent_norm",
    "update_norm",
    "meta/ascent_to_update",
    "meta/cos_gradJ_grad",
    "meta/J",
    "meta/J_prime",
    "meta/J_gain",
)


def comparison(res: JudgeResult, n_boot: int, seed: int = 0) -> dict[str, Any]:
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


def mean_ci(values: np.ndarray, n_boot: int) -> dict[str, Any]:
    lo, hi = stats.bootstrap_ci(values, n_resamples=n_boot)
    return {"mean": float(np.mean(values)), "ci": (lo, hi)}


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int) -> dict[str, Any]:
    """mean(a - b) over the same prompts, with its bootstrap interval."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"diff": float(d.mean()), "ci": stats.bootstrap_ci(d, n_resamples=n_boot)}


def select_best(valid: Mapping[str, Mapping]) -> str:
    """The best round: highest net win rate (win - lose) against SFT on the validation prompts;
    a tie goes to the earlier round (fewer PPO iterations)."""
    return max(valid, key=lambda k: (valid[k]["net"], -int(k.removeprefix("round"))))


def excludes_zero(ci) -> bool:
    return bool(np.isfinite(ci[0]) and (ci[0] > 0 or ci[1] < 0))


def rm_agreement(
    scores: np.ndarray, reference: np.ndarray, mask: np.ndarray, n_boot: int
) -> dict[str, Any]:
    """An RM's within-prompt ranking against a reference (gold or an independent RM): pairwise
    accuracy over the pairs whose reference differs, and Kendall τ; mean over prompts with 95%
    intervals over prompts. ``scores``/``reference``/``mask`` are [prompts, k]."""
    acc, tau = stats.ranking_agreement(scores, reference, mask)
    return {
        "accuracy": float(np.nanmean(acc)),
        "accuracy_ci": stats.bootstrap_ci(acc, n_resamples=n_boot),
        "tau": float(np.nanmean(tau)),
        "tau_ci": stats.bootstrap_ci(tau, n_resamples=n_boot),
    }


def pair_variance(scores: np.ndarray) -> float:
    """Figure 1 as the paper draws it: the variance over prompts of r(x, y1) - r(x, y2)."""
    return float(np.var(scores[:, 0] - scores[:, 1]))


def normalised_differences(scores: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Figure 5: |Δr| within prompts, raw and divided by the spread of the RM's scores."""
    raw = stats.abs_differences(scores, mask)
    spread = float(np.std(scores[mask.astype(bool)])) or 1.0
    return {"raw": raw, "normalised": raw / spread}


def length_stats(counts: Sequence[int]) -> dict[str, float]:
    n = np.asarray(counts)
    q = np.percentile(n, [10, 50, 90]) if len(n) else [0, 0, 0]
    return {"mean": float(n.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def clip_fraction(rows: list[dict]) -> dict[str, Any]:
    """The mean fraction of PPO scores the reward clip cut, flagged above CLIP_FLAG."""
    f = [r[CLIP_KEY] for r in rows if CLIP_KEY in r]
    return {"mean": float(np.mean(f)) if f else 0.0, "flag": bool(f and np.mean(f) > CLIP_FLAG)}


def geometry(rows: list[dict]) -> dict[str, float]:
    """Means over a MetaRM stage's steps of the meta step's geometry (‖θ′ − θ‖, the update, ...)."""
    out = {}
    for key in GEOMETRY_KEYS:
        v = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if v:
            out[key] = float(np.mean(v))
    return out


def budgets(rec: RunRecord) -> dict[str, dict[str, int]]:
    """Every arm's compute: RM training steps (r_0's included where the arm's reward or critic
    descends from it; every member's for an ensemble or WARM), PPO iterations, and the RM
    forwards each PPO roll-out costs (M for an ensemble; the ceiling's r_0 forward runs and is
    replaced by the gold reward); for an arm labelled by the LLM judge, the pairs it asked, the
    pairs labelled, the judgments (requests) they need, the calls this run paid (a cached
    judgment costs none) and the tokens."""
    out = {}
    for name, run in rec.arms.items():
        schedule = run.arm.schedule
        if schedule == ROUNDS:
            out[name] = {
                "rm_steps": rec.rm0_steps + sum(x.rm_steps for x in run.rounds),
                "ppo_iterations": sum(x.ppo_iterations for x in run.rounds),
                "rm_forwards_per_rollout": 1,
            }
            judged = [x.judge for x in run.rounds if x.judge]
            if judged:  # relabel: what the LLM judge cost (judgments: requests the labels need)
                for key in ("pairs", "labelled", "judgments", "calls"):
                    out[name][f"judge_{key}"] = sum(int(j.get(key, 0)) for j in judged)
                out[name]["judge_tokens"] = sum(
                    int(j.get("prompt_tokens", 0)) + int(j.get("completion_tokens", 0))
                    for j in judged
                )
        elif schedule == CONTINUOUS:
            out[name] = {
                "rm_steps": rec.rm0_steps if run.rm_steps is None else run.rm_steps,
                "ppo_iterations": rec.ppo_iterations * rec.rounds,
                "rm_forwards_per_rollout": max(len(run.rms), 1),
            }
        elif schedule == SINGLE:
            out[name] = {
                "rm_steps": 0,
                "ppo_iterations": 0,
                "rm_forwards_per_rollout": 0,
                f"{name}_steps": run.steps,
            }
    return out


def reward_sources(rec: RunRecord, ppo) -> dict[str, dict[str, Any]]:
    """What each CONTINUOUS arm's PPO optimised (``ppo``: the run's config.ppo, for λ and the
    standardisation of an ensemble): its kind (``Arm.reward``), the RM exports that scored its
    roll-outs and, for an ensemble, the aggregation."""
    out = {}
    for name, run in rec.arms.items():
        a = run.arm
        if a.schedule != CONTINUOUS:
            continue
        row: dict[str, Any] = {"reward": a.reward, "rms": list(run.rms)}
        if a.reward == "ensemble":
            row.update(members=len(run.rms), agg=a.agg, standardized=bool(ppo.ensemble_standardize))
            if a.agg in ("uwo", "mean_std"):
                row["lambda"] = float(ppo.ensemble_lambda)
        out[name] = row
    return out


SHIFTED = "held-out shifted (every arm's final policy)"  # the RM metrics' shifted sample set


def shifted_accuracy(rm_metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Every round's RMs on the held-out shifted set (``SHIFTED``): RM label (``r0``, or the
    arm's name) -> ``round<r>`` -> pairwise accuracy against the reference."""
    out: dict[str, dict[str, float]] = {}
    for rname, table in rm_metrics.get("rounds", {}).items():
        for label, v in table.get(SHIFTED, {}).items():
            arm = label if label == "r0" else label.rsplit("_r", 1)[0]
            out.setdefault(arm, {})[rname] = v["accuracy"]
    return out


def summary(res: dict) -> dict[str, Any]:
    """The numbers the stage returns (and the seed aggregation averages)."""
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
# The experiment's controls and curves (docs/synthetic.md, "Can the experiment discriminate?").
# --------------------------------------------------------------------------------------------

OVEROPTIMISED_DROP = 0.2  # vanilla PPO over-optimises when its final gold is this far below peak


def peak_round(valid_gold: Mapping[int, float]) -> int:
    """The round whose policy has the highest mean gold on the VALIDATION prompts (a tie goes to
    the earlier round); round 0 is π_SFT."""
    return max(valid_gold, key=lambda r: (valid_gold[r], -r))


def peak_and_final(
    valid_gold: Mapping[int, float], test_gold: Mapping[int, np.ndarray], n_boot: int
) -> dict[str, Any]:
    """An arm's peak (its round chosen on validation, read on test) and final (last round) gold
    on the test prompts, with bootstrap intervals, and the drop from one to the other (paired)."""
    r_peak, r_final = peak_round(valid_gold), max(test_gold)
    peak, final = test_gold[r_peak], test_gold[r_final]
    return {
        "peak_round": r_peak,
        "peak": mean_ci(peak, n_boot),
        "final_round": r_final,
        "final": mean_ci(final, n_boot),
        "drop": paired_difference(peak, final, n_boot),
    }


def overoptimised(vanilla: Mapping[str, Any], drop: float = OVEROPTIMISED_DROP) -> dict[str, Any]:
    """Does vanilla PPO over-optimise inside the budget: its final test gold at least ``drop``
    below its peak (the peak chosen on validation)?"""
    d = vanilla["drop"]["diff"]
    return {
        "peak_round": vanilla["peak_round"],
        "peak": vanilla["peak"]["mean"],
        "final": vanilla["final"]["mean"],
        "drop": d,
        "drop_ci": vanilla["drop"]["ci"],
        "threshold": drop,
        "passed": bool(d >= drop),
    }


def control_difference(
    arm_gold: Mapping[int, np.ndarray],
    arm_valid: Mapping[int, float],
    vanilla_gold: Mapping[int, np.ndarray],
    vanilla_valid: Mapping[int, float],
    n_boot: int,
) -> dict[str, Any]:
    """A positive control minus the floor arm (vanilla PPO) on the same test prompts: at the end of the budget
    (``diff``/``ci``, what ``passed`` reads) and at each one's peak chosen on validation."""
    final = paired_difference(arm_gold[max(arm_gold)], vanilla_gold[max(vanilla_gold)], n_boot)
    peak = paired_difference(
        arm_gold[peak_round(arm_valid)], vanilla_gold[peak_round(vanilla_valid)], n_boot
    )
    return {**final, "at": "final", "peak": peak, "passed": bool(final["ci"][0] > 0)}


def controls(over: Mapping[str, Any], diffs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The pre-registered checks the report opens with: the floor arm (vanilla PPO) over-optimises,
    and every positive control of the plan (``plan.CONTROLS``) beats it with an interval above 0.
    ``discriminates`` when all pass (a missing control fails: the experiment is not shown to
    discriminate without it)."""
    out: dict[str, Any] = {"overoptimised": dict(over)}
    for name in plan.CONTROLS:
        out[control_key(name)] = dict(diffs[name]) if name in diffs else None
    out["discriminates"] = bool(
        over["passed"]
        and all(
            out[control_key(n)] is not None and out[control_key(n)]["passed"] for n in plan.CONTROLS
        )
    )
    return out


def control_key(name: str) -> str:
    """The key of a positive control's check in ``controls`` (report.json)."""
    return f"{name}_minus_vanilla"


def within_prompt_spread(scores: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The mean |r_i − r_j| over pairs of real responses to the same prompt (scores [m, k])."""
    d = stats.abs_differences(np.asarray(scores, np.float64), mask)
    return float(d.mean()) if d.size else float("nan")


def ascent_effect(rm_metrics: Mapping[str, Any], arm: str, control: str) -> dict[str, Any] | None:
    """Did an arm's ascent raise its RM's accuracy, or only its spread? Per round, on the arm's own
    samples: its RM minus the control's RM (eta0: the same rounds with η = 0) in accuracy against
    the reference and in within-prompt spread normalised by each RM's spread on π_SFT's samples;
    the means over rounds, the rounds where accuracy rose, and the verdict in words."""
    rows = []
    for r, table in sorted(rm_metrics.get("rounds", {}).items(), key=lambda kv: int(kv[0][5:])):
        row = table.get(f"{arm} round {r[5:]} samples", {})
        a, c = row.get(f"{arm}_r{r[5:]}"), row.get(f"{control}_r{r[5:]}")
        if a is None or c is None or "spread_normalised" not in a:
            continue
        rows.append(
            {
                "round": int(r[5:]),
                "accuracy": a["accuracy"] - c["accuracy"],
                "spread_normalised": a["spread_normalised"] - c["spread_normalised"],
            }
        )
    if not rows:
        return None
    acc = float(np.mean([x["accuracy"] for x in rows]))
    spread = float(np.mean([x["spread_normalised"] for x in rows]))
    raised = [w for w, v in (("accuracy", acc), ("spread", spread)) if v > 0]
    verdict = {
        ("accuracy", "spread"): "raised accuracy and spread",
        ("accuracy",): "raised accuracy, not spread",
        ("spread",): "raised only spread, not accuracy",
    }.get(tuple(raised), "raised neither accuracy nor spread")
    return {
        "control": control,
        "rounds": rows,
        "accuracy": acc,
        "spread_normalised": spread,
        "rounds_accuracy_up": sum(x["accuracy"] > 0 for x in rows),
        "verdict": verdict,
    }


def gao_fit(sqrt_kl: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    """Gao et al.'s RL form R(d) = d(α − β log d) fitted by least squares to the gold gain over
    π_SFT (R = gold − gold at d = 0) against d = √KL, on the points with d > 0: R/d = α − β log d
    is linear in log d. Fewer than two such points (or one d): α = R/d averaged, β = nan."""
    d = np.asarray(sqrt_kl, np.float64)
    g = np.asarray(gold, np.float64)
    base = g[d == 0].mean() if np.any(d == 0) else 0.0
    keep = d > 0
    d, r = d[keep], g[keep] - base
    if len(d) == 0:
        return {"alpha": float("nan"), "beta": float("nan"), "points": 0}
    y = r / d
    if len(d) < 2 or np.ptp(np.log(d)) == 0:
        return {"alpha": float(y.mean()), "beta": float("nan"), "points": len(d)}
    a = np.stack([np.ones_like(d), -np.log(d)], 1)
    (alpha, beta), *_ = np.linalg.lstsq(a, y, rcond=None)
    return {"alpha": float(alpha), "beta": float(beta), "points": len(d)}


def curve_point(
    r: int, iteration: int, kl: np.ndarray, gold, proxy, valid_gold: float | None = None
) -> dict[str, Any]:
    """One point of an arm's frontier: √(mean KL) (KL clipped at 0: the sample estimate can go
    below), mean gold and mean proxy of its test samples (and the validation prompts' mean gold,
    which chooses peaks)."""
    k = float(np.mean(kl)) if len(kl) else 0.0
    return {
        "round": r,
        "iteration": iteration,
        "kl": k,
        "sqrt_kl": float(np.sqrt(max(k, 0.0))),
        "gold": float(np.mean(gold)),
        "proxy": float(np.mean(proxy)) if proxy is not None else None,
        "valid_gold": valid_gold,
    }


# --------------------------------------------------------------------------------------------
# Over seeds: the study's table (metarm_jax/rlhf/seeds.py writes it).
# --------------------------------------------------------------------------------------------


def over_seeds(values) -> dict[str, Any]:
    """mean, a 95% t interval over seeds and the per-seed values."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "ci": stats.t_interval(v), "values": v.tolist()}


def study(reports: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The experiment over seeds, from each seed's report: every arm's peak gold (its round chosen
    on validation, read on test), final gold, final √KL and its RM's accuracy against gold on its
    own policy's samples at the last round; the controls with t intervals over seeds (each
    positive control minus the floor arm in final test gold; the floor's drop from peak to
    final); and the paired differences (within a seed) the plan declares (``plan.comparisons``)."""
    if not reports or any("peak_final" not in r for r in reports):
        raise ValueError("study: every seed's report needs the experiment's keys (peak_final)")
    arms = [a for a in reports[0]["peak_final"] if all(a in r["peak_final"] for r in reports)]

    def per(arm, f):
        return [f(r, arm) for r in reports]

    table = {}
    for arm in arms:
        row = {
            "peak": over_seeds(per(arm, lambda r, a: r["peak_final"][a]["peak"]["mean"])),
            "final": over_seeds(per(arm, lambda r, a: r["peak_final"][a]["final"]["mean"])),
            "peak_rounds": per(arm, lambda r, a: r["peak_final"][a]["peak_round"]),
        }
        if all(arm in r.get("curves", {}) for r in reports):
            row["sqrt_kl_final"] = over_seeds(per(arm, lambda r, a: r["curves"][a][-1]["sqrt_kl"]))
        acc = [r.get("rm_on_policy_accuracy", {}).get(arm) for r in reports]
        if all(acc):
            last = f"round{max(int(k[5:]) for k in acc[0])}"
            row["rm_on_policy_final"] = over_seeds([a[last] for a in acc])
            row["rm_on_policy_mean"] = over_seeds([np.mean(list(a.values())) for a in acc])
        shifted = [shifted_accuracy(r.get("rm_metrics", {})).get(arm) for r in reports]
        if all(shifted):
            last = f"round{max(int(k[5:]) for k in shifted[0])}"
            row["rm_shifted_final"] = over_seeds([a[last] for a in shifted])
        budget = [r.get("budget", {}).get(arm) for r in reports]
        if all(budget):  # the arm's compute; the same in every seed, else the seeds' mean
            row["compute"] = {
                k: float(np.mean([b[k] for b in budget]))
                for k in budget[0]
                if all(isinstance(b.get(k), int | float) for b in budget)
            }
        table[arm] = row

    def diff(a, b, what):
        return over_seeds(
            [r["peak_final"][a][what]["mean"] - r["peak_final"][b][what]["mean"] for r in reports]
        )

    differences = {  # the plan's comparisons (each arm's compare_to)
        f"{a} − {b}": {"final": diff(a, b, "final"), "peak": diff(a, b, "peak")}
        for a, b in plan.comparisons(table)
    }
    needed = (plan.FLOOR, *plan.CONTROLS)
    controls: dict[str, Any] = {"note": f"needs the {', '.join(needed)} arms"}
    if set(needed) <= set(table):
        drop = over_seeds(per(plan.FLOOR, lambda r, a: r["peak_final"][a]["drop"]["diff"]))
        over = {
            **drop,
            "threshold": OVEROPTIMISED_DROP,
            "passed": bool(drop["mean"] >= OVEROPTIMISED_DROP),
        }
        controls = {"overoptimised": over}
        for name in plan.CONTROLS:
            d = differences[f"{name} − {plan.FLOOR}"]["final"]
            controls[control_key(name)] = {**d, "passed": bool(d["ci"][0] > 0)}
        controls["discriminates"] = bool(
            over["passed"] and all(controls[control_key(n)]["passed"] for n in plan.CONTROLS)
        )
    out = {"seeds": len(reports), "controls": controls, "arms": table, "differences": differences}
    out["ranking"] = {  # by the mean over seeds, best first
        what: sorted(table, key=lambda a: -table[a][what]["mean"]) for what in ("final", "peak")
    }
    out["resolved"] = [  # the paired differences whose 95% interval excludes 0
        {"difference": k, "what": what, "mean": v[what]["mean"], "ci": v[what]["ci"]}
        for k, v in differences.items()
        for what in ("final", "peak")
        if v[what]["ci"][0] > 0 or v[what]["ci"][1] < 0
    ]
    rm0 = [shifted_accuracy(r.get("rm_metrics", {})).get("r0") for r in reports]
    if all(rm0):
        out["rm0_shifted"] = over_seeds([min(a.values()) for a in rm0])  # one RM: equal rounds
    return out


def mean_curves(reports: list[Mapping[str, Any]]) -> dict[str, list[dict]]:
    """Every arm's frontier averaged over seeds, point by point (round by round)."""
    out = {}
    for arm in reports[0].get("curves", {}):
        runs = [r["curves"][arm] for r in reports if arm in r.get("curves", {})]
        if len(runs) != len(reports):
            continue
        pts = []
        for i, p in enumerate(runs[0]):
            proxy = [c[i]["proxy"] for c in runs]
            pts.append(
                {
                    "round": p["round"],
                    "iteration": p["iteration"],
                    "sqrt_kl": float(np.mean([c[i]["sqrt_kl"] for c in runs])),
                    "gold": float(np.mean([c[i]["gold"] for c in runs])),
                    "proxy": None if None in proxy else float(np.mean(proxy)),
                }
            )
        out[arm] = pts
    return out
