"""The report's text and figures: markdown (``report.md``), the console summary and the PNG
figures, from the numbers ``compute`` made (nothing here computes a statistic)."""

from __future__ import annotations

import os

import numpy as np

from metarm_jax.eval import diversity, plots
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import ROUNDS, RunRecord


def figures(workdir, res: dict, ppo_rows, rm_rows, fig5, meta_names) -> dict[str, str]:
    """Draw every figure into ``workdir``; returns {key: file name}."""
    return {
        "fig1": plots.shift_variance(workdir, ppo_rows),
        "fig1_paper": plots.checkpoint_variance(workdir, res["fig1"]),
        "fig3": plots.win_rates(
            workdir,
            {
                "vs SFT": {k: res["table1"][k] for k in meta_names},
                "vs vanilla PPO": res["rounds_vs_vanilla"],
            },
            "Figure 3: MetaRM rounds on OOD prompts"
            if res["setting"] == "ood"
            else "MetaRM rounds: win / tie / lose on the test prompts",
        ),
        "fig4": plots.rm_accuracy(workdir, rm_rows),
        "fig5": plots.reward_differences(workdir, fig5),
        "rewards": plots.rewards(
            workdir, {k: (v["mean"], *v["ci"]) for k, v in res["gold"].items()}, ppo_rows
        ),
        **(
            {"frontier": plots.frontier(workdir, res["curves"], res["frontier_fit"])}
            if res.get("curves")
            else {}
        ),
    }


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


def _plain_words(res: dict, rec: RunRecord) -> list[str]:
    best = res["best_round"]
    out = [
        f"The best MetaRM round on the {res['valid_prompts']} validation prompts is {best} "
        f"(win - lose vs SFT there: {_pct(res['selection'][best]['net'])})."
    ]
    for other, d in res.get("method_differences", {}).items():
        p = d["peak"]
        out.append(
            f"MetaRM − {other} in test gold, each at its own peak (its round chosen on "
            f"validation): {p['diff']:+.3f} {_ci(p['ci'], pct=False)}; at the final round: "
            f"{d['diff']:+.3f} {_ci(d['ci'], pct=False)}"
            + (" (an interval that excludes 0)." if compute.excludes_zero(p["ci"]) else ".")
        )
    for label, v in res["table2"].items():
        if compute.excludes_zero(v["net_ci"]):
            word = "beats" if v["net"] > 0 else "loses to"
            out.append(
                f"Same round (the paper's protocol): on the test prompts {best} {word} {label}: "
                f"win - lose {_pct(v['net'])} "
                f"{_ci(v['net_ci'])}, an interval that excludes 0."
            )
        else:
            out.append(
                f"Same round (the paper's protocol): on the test prompts {best} and {label} "
                "cannot be told apart: win - lose "
                f"{_pct(v['net'])} {_ci(v['net_ci'])} includes 0."
            )
    r_best = int(best.removeprefix("round"))
    floor = rec.arms.get(plan.FLOOR)
    for run in rec.of(ROUNDS):  # a positive control that is an RM of its own: the oracle
        if not run.arm.control or floor is None:
            continue
        o = res["gold"].get(run.arm.policy(r_best), {}).get("mean")
        v = res["gold"].get(floor.arm.policy(r_best), {}).get("mean")
        if o is not None and v is not None and o <= v:
            out.append(
                f"The {run.arm.title} arm (a positive control: an RM trained on gold-labelled "
                f"on-policy pairs) does not reach a higher mean gold than {floor.arm.title} at "
                f"the same budget ({o:.3f} vs {v:.3f}): this world and budget cannot reward a "
                "better RM, so no RM method can win here."
            )
    for name, e in res.get("ascent_effect", {}).items():
        out.append(
            f"The ascent of {name} {e['verdict']}: on its own samples its RM ranks "
            f"{e['accuracy']:+.3f} against the reference compared with {e['control']}'s RM (mean "
            f"over rounds; higher in {e['rounds_accuracy_up']} of {len(e['rounds'])}), with "
            f"within-prompt spread {e['spread_normalised']:+.3f} (normalised by each RM's "
            "spread on π_SFT's samples)."
        )
    for name, c in res["reward_clip"].items():
        if c["flag"]:
            out.append(
                f"Warning: {_pct(c['mean'])} of {name}'s PPO scores were clipped (more than "
                f"{_pct(compute.CLIP_FLAG)}): the reward is flat where the clip cuts it."
            )
    return out


def _clip_text(text: str, limit: int, keep: str) -> str:
    """``text`` cut to ``limit`` characters, keeping its ``keep`` end ("start" or "end")."""
    if len(text) <= limit:
        return text
    return text[:limit] + " ..." if keep == "start" else "... " + text[-limit:]


def _unreadable(res: dict) -> str:
    """The mark a MetaRM table carries when the controls did not pass."""
    c = res.get("controls") or {}
    if "discriminates" in c and not c["discriminates"]:
        return " — not readable: the positive controls failed"
    return ""


def _gate_section(res: dict) -> list[str]:
    """MetaRM's premise in this world: the blind world's pre-registered gate (docs/synthetic.md),
    read before any MetaRM number."""
    g = res.get("gate")
    if not g or "r0_saturated_accuracy" not in g:
        return []

    def val(v, fmt="{:.3f}"):
        return "not measured" if v is None else fmt.format(v)

    def word(check):
        return "passed" if check["passed"] else "FAILED"

    a, s = g["r0_saturated_accuracy"], g["r0_spread_ratio"]
    o, d = g["vanilla_overoptimises"], g["oracle_minus_eta0_peak"]
    ci = f" {_ci(d['ci'], pct=False)}" if d["ci"] else ""
    return [
        "## Does MetaRM's premise hold here? (the blind world's gate, read first)",
        "",
        f"- r_0 ranks held-out coarse-saturated pairs rightly but weakly (accuracy in "
        f"[{a['range'][0]}, {a['range'][1]}]): {val(a['value'])} — **{word(a)}**",
        f"- r_0's within-prompt spread collapses on vanilla PPO's final samples (at most "
        f"{s['max']} of its spread on π_SFT's): {val(s['value'])} — **{word(s)}**",
        f"- vanilla PPO over-optimises (final at least {o['threshold']} below its peak): drop "
        f"{val(o['value'], '{:+.3f}')} — **{word(o)}**",
        f"- the oracle beats eta0 at each one's peak (interval above 0): "
        f"{val(d['value'], '{:+.3f}')}{ci} — **{word(d)}**",
        "",
        "The premise holds: a MetaRM comparison here tests the paper's claim."
        if g["passed"]
        else "**The premise does not hold in this world: a MetaRM null here does not test the "
        "paper's claim.**",
        "",
    ]


def _controls_section(res: dict) -> list[str]:
    """ "Can this experiment discriminate?": the pre-registered positive controls, read before
    any MetaRM number (docs/synthetic.md)."""
    c = res.get("controls") or {}
    lines = ["## Can this experiment discriminate? (positive controls, read first)", ""]
    if "overoptimised" not in c:
        return lines + [f"Not measured: {c.get('note', 'no controls in this run')}.", ""]
    o = c["overoptimised"]
    lines += [
        f"- **Vanilla PPO over-optimises inside the budget** (final gold at least "
        f"{o['threshold']} below its peak, the peak chosen on validation): peak {o['peak']:.3f} "
        f"(round {o['peak_round']}), final {o['final']:.3f}, drop {o['drop']:+.3f} "
        f"{_ci(o['drop_ci'], pct=False)} — **{'passed' if o['passed'] else 'FAILED'}**.",
    ]
    floor = plan.BY_NAME[plan.FLOOR].title
    for name in plan.CONTROLS:
        label = plan.BY_NAME[name].title
        d = c.get(compute.control_key(name))
        if d is None:
            lines.append(f"- **{label} beats {floor}**: not run — **FAILED**.")
            continue
        lines.append(
            f"- **{label} beats {floor}** at the end of the budget: "
            f"{d['diff']:+.3f} {_ci(d['ci'], pct=False)} in test gold (at each one's peak: "
            f"{d['peak']['diff']:+.3f} {_ci(d['peak']['ci'], pct=False)}) — "
            f"**{'passed' if d['passed'] else 'FAILED'}**."
        )
    if c["discriminates"]:
        lines += ["", "Every control passed: a better reward model can win here.", ""]
    else:
        lines += [
            "",
            "**At least one control failed: this experiment cannot tell a better reward model "
            "from a worse one, so the MetaRM comparisons below cannot be read as evidence either "
            "way (every MetaRM table is marked so).**",
            "",
        ]
    if res.get("peak_final"):
        lines += [
            "| arm | peak gold (round, chosen on validation) | final gold | peak − final |",
            "|---|---|---|---|",
        ]
        for arm, v in res["peak_final"].items():
            lines.append(
                f"| {arm} | {v['peak']['mean']:.3f} {_ci(v['peak']['ci'], pct=False)} (round "
                f"{v['peak_round']}) | {v['final']['mean']:.3f} "
                f"{_ci(v['final']['ci'], pct=False)} | {v['drop']['diff']:+.3f} |"
            )
        lines += [""]
    if res.get("curves"):
        lines += [
            "Frontier (test prompts): √KL(π‖π_SFT) / gold / proxy at each round's export, and "
            "the fitted R = d(α − β log d):",
            "",
            "| arm | "
            + " | ".join(f"round {p['round']}" for p in next(iter(res["curves"].values())))
            + " | α, β |",
            "|---" * (len(next(iter(res["curves"].values()))) + 2) + "|",
        ]
        for arm, pts in res["curves"].items():
            f = res["frontier_fit"][arm]
            cells = [
                f"{p['sqrt_kl']:.2f} / {p['gold']:.3f} / "
                + ("gold" if p["proxy"] is None else f"{p['proxy']:+.2f}")
                for p in pts
            ]
            lines.append(
                f"| {arm} | " + " | ".join(cells) + f" | {f['alpha']:.3f}, {f['beta']:.3f} |"
            )
        lines += [""]
    if res.get("rm_on_policy_accuracy"):
        acc = res["rm_on_policy_accuracy"]
        rounds = sorted({r for v in acc.values() for r in v}, key=lambda r: int(r[5:]))
        lines += [
            "Each arm's RM against gold on its own policy's test samples (within-prompt pairwise "
            "accuracy; the mechanism the paper claims):",
            "",
            "| arm | " + " | ".join(rounds) + " |",
            "|---" * (len(rounds) + 1) + "|",
        ]
        for arm, v in acc.items():
            lines.append(
                f"| {arm} | " + " | ".join(f"{v.get(r, float('nan')):.3f}" for r in rounds) + " |"
            )
        lines += [""]
    return lines


def markdown(res: dict, figs: dict[str, str], rec: RunRecord) -> str:
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
        *_controls_section(res),
        *_gate_section(res),
        "## In plain words",
        "",
        *[f"- {line}" for line in _plain_words(res, rec)],
        "",
        "## Selection (validation prompts): each MetaRM round vs SFT" + _unreadable(res),
        "",
        *_cmp_table(res["selection"], "round vs SFT"),
        "",
        "## Table 1 (test prompts): each round of each arm vs SFT" + _unreadable(res),
        "",
        *_cmp_table(res["table1"], "policy vs SFT"),
        "",
        f"## Table 2 (test prompts): the best round ({best}) vs the baselines at the same round "
        "(the paper's protocol; each arm at its own peak: 'In plain words')" + _unreadable(res),
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
        "| arm | RM steps | PPO iterations | RM forwards per roll-out | scores clipped |",
        "|---|---|---|---|---|",
    ]
    for name, b in res["budget"].items():
        c = res["reward_clip"].get(name, {"mean": 0.0, "flag": False})
        flag = " (flagged)" if c["flag"] else ""
        lines.append(
            f"| {name} | {b['rm_steps']} | {b['ppo_iterations']} | "
            f"{b.get('rm_forwards_per_rollout', 1)} | {_pct(c['mean'])}{flag} |"
        )
    for name, b in res["budget"].items():
        if "judge_pairs" in b:
            lines.append(
                f"\n{name}: the LLM judge was asked {b['judge_pairs']} pairs in both orders "
                f"({b['judge_judgments']} judgments, {b['judge_calls']} calls paid by this run, "
                f"{b['judge_tokens']} tokens) and labelled {b['judge_labelled']} (ties and "
                "order flips dropped)."
            )
    for name, src in res.get("reward_sources", {}).items():
        if src["reward"] == "ensemble":
            lam = f", λ = {src['lambda']:g}" if "lambda" in src else ""
            std = "standardised members" if src["standardized"] else "raw scores"
            lines.append(
                f"\n{name}: PPO against the {src['agg']} of {src['members']} RMs ({std}{lam}); "
                "its RM steps count every member's."
            )
        elif src["reward"] == "warm":
            lines.append(f"\n{name}: PPO against the weight average of the ensemble's RMs (WARM).")
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
        ("frontier", "Gold and proxy against √KL (Gao et al.'s frontier), every arm"),
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
        if key in figs:
            lines += [f"### {title}", "", f"![{key}]({figs[key]})", ""]
    return "\n".join(lines)


def console(res: dict, rec: RunRecord) -> str:
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
    lines += [f"  {line}" for line in _plain_words(res, rec)]
    return "\n".join(lines)
