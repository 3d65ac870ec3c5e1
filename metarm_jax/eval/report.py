"""The run report of iterative RLHF: the paper's tables and figures, computed from the run.

    Table 1   each MetaRM round's policy vs π_SFT (win / tie / lose)
    Table 2   the best round vs π_SFT, vanilla PPO and DPO
    Rewards   gold (synthetic world) and proxy rewards of every policy's held-out samples
    Figure 1  variance of within-prompt reward differences over PPO time, per round and vanilla
    Figure 4  RM validation accuracy over training, vanilla RM and each round's MetaRM
    Figure 5  histogram of |Δr| on the final policy's samples: vanilla RM vs the last MetaRM
    Curves    proxy score over PPO iterations (and gold, where the world logs it)

Everything goes to the workdir: ``report.md``, ``fig*.png``, ``report.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import matplotlib
import numpy as np

from metarm_jax import data as D
from metarm_jax.core.stats import abs_differences
from metarm_jax.data import synthetic
from metarm_jax.eval import judges
from metarm_jax.scoring import RewardScorer

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SHIFT_VAR = "shift/absdiff_var"  # logged by the ppo stage every iteration
PPO_X = "rollout/iteration"
PROXY, GOLD = "rollout/score_mean", "rollout/monitor_mean"


def read_metrics(path: str) -> list[dict]:
    """Rows of a metrics.jsonl (missing file: no rows)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r.get(x, i), r[key]) for i, r in enumerate(rows) if isinstance(r.get(key), (int, float))
    ]
    if not pts:
        return np.zeros(0), np.zeros(0)
    s, v = zip(*pts)
    return np.asarray(s, float), np.asarray(v, float)


def _load_samples(path: str) -> tuple[list[str], list[list[str]]]:
    recs = D.load_meta_examples(path, on_bad_record="error")
    return [r.prompt for r in recs], [list(r.responses) for r in recs]


def _fmt_result(res) -> str:
    return f"{res.win} / {res.tie} / {res.lose}"


def build(
    ctx,
    *,
    rounds: list[dict],
    baselines: dict,
    samples: dict[str, str],
    multi_samples: str,
    rm0: str,
    sft_path: str,
    sft_workdir: str | None,
    rm0_workdir: str | None,
) -> dict[str, Any]:
    """Judge, tabulate and plot; write report.md / report.json / fig*.png into ctx.workdir."""
    config, mesh, workdir = ctx.config, ctx.mesh, ctx.workdir
    rc = config.rlhf
    lead = jax.process_index() == 0
    texts = {name: _load_samples(path) for name, path in samples.items()}
    prompts = texts["sft"][0]
    for name, (p, _) in texts.items():
        if p != prompts:
            raise RuntimeError(f"report: the held-out prompts of {name} differ from SFT's.")
    first = {name: [r[0] for r in resp] for name, (_, resp) in texts.items()}

    use_gold = rc.judge == "gold" or (rc.judge == "auto" and rc.world)
    world = None
    rm0_scorer = RewardScorer(config, mesh, rm0)
    last_rm = RewardScorer(config, mesh, rounds[-1]["rm"])
    if use_gold:
        world = synthetic.World(config.world)
        judge = judges.GoldJudge(world, tie_margin=rc.tie_margin)
        judge_name = "gold reward (synthetic world)"
    else:
        scorer = RewardScorer(config, mesh, rc.judge_rm_path) if rc.judge_rm_path else rm0_scorer
        judge = judges.RewardModelJudge(scorer.score_fn, tie_margin=rc.tie_margin)
        judge_name = f"reward model {rc.judge_rm_path or rm0}" + (
            "" if rc.judge_rm_path else " (the vanilla RM: not independent of training)"
        )

    def vs(a, b):
        return judge.compare(prompts, first[a], first[b])

    table1 = {f"round{x['round']}": vs(f"round{x['round']}", "sft") for x in rounds}
    best = max(table1, key=lambda k: (table1[k].win - table1[k].lose, k))
    table2 = {"sft": vs(best, "sft")}
    for name in baselines:
        table2[name] = vs(best, name)

    # Mean rewards of each policy's held-out samples.
    rewards = {}
    for name, resp in first.items():
        row = {
            "proxy_vanilla_rm": float(np.mean(rm0_scorer.score_fn(prompts, resp))),
            "proxy_last_metarm": float(np.mean(last_rm.score_fn(prompts, resp))),
        }
        if world is not None:
            row["gold"] = float(np.mean(world.gold(prompts, resp)))
        rewards[name] = row

    # Figure 5: |Δr| on the final policy's k samples per prompt, vanilla RM vs last MetaRM.
    mp, mr = _load_samples(multi_samples)
    r0, m0 = rm0_scorer.score(mp, mr)
    rl, ml = last_rm.score(mp, mr)
    d_vanilla, d_meta = abs_differences(r0, m0), abs_differences(rl, ml)
    fig5 = {
        "vanilla_rm": {"mean": float(d_vanilla.mean()), "var": float(d_vanilla.var())},
        "metarm": {"mean": float(d_meta.mean()), "var": float(d_meta.var())},
    }

    # Curves from the stages' metrics.
    ppo_rows = {
        f"round{x['round']}": read_metrics(os.path.join(x["ppo_workdir"], "ppo", "metrics.jsonl"))
        for x in rounds
    }
    if "vanilla_ppo" in baselines:
        ppo_rows["vanilla_ppo"] = read_metrics(
            os.path.join(baselines["vanilla_ppo"]["ppo_workdir"], "ppo", "metrics.jsonl")
        )
    rm_rows = {
        f"round{x['round']}": read_metrics(
            os.path.join(x["metarm_workdir"], "metarm", "metrics.jsonl")
        )
        for x in rounds
    }
    if rm0_workdir:
        rm_rows["vanilla_rm"] = read_metrics(os.path.join(rm0_workdir, "rm", "metrics.jsonl"))

    result = {
        "judge": judge_name,
        "tie_margin": rc.tie_margin,
        "prompts": len(prompts),
        "best_round": best,
        "table1": {
            k: v.as_metrics("") | {"counts": [v.win, v.tie, v.lose]} for k, v in table1.items()
        },
        "table2": {
            k: v.as_metrics("") | {"counts": [v.win, v.tie, v.lose]} for k, v in table2.items()
        },
        "rewards": rewards,
        "fig5": fig5,
    }
    if lead:
        figs = _plots(workdir, ppo_rows, rm_rows, d_vanilla, d_meta, rewards)
        _write(workdir, result, table1, table2, rewards, fig5, figs, judge_name, best)
        print(_console_tables(table1, table2, rewards, best, judge_name))
    return {
        "report": os.path.join(workdir, "report.md"),
        "best_round": best,
        "table1": {k: [v.win, v.tie, v.lose] for k, v in table1.items()},
        "table2": {k: [v.win, v.tie, v.lose] for k, v in table2.items()},
        "rewards": rewards,
        "fig5": fig5,
    }


def _plots(workdir, ppo_rows, rm_rows, d_vanilla, d_meta, rewards) -> dict[str, str]:
    figs = {}
    # Rounds run one after another: put round r's PPO iterations after round r-1's.
    offsets, total = {}, 0.0
    for name in ppo_rows:
        if name.startswith("round"):
            offsets[name] = total
            x, _ = series(ppo_rows[name], SHIFT_VAR, PPO_X)
            total += (x.max() + 1) if len(x) else 0
    shift = lambda name, s: s + offsets.get(name, 0.0)
    # Figure 1
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in ppo_rows.items():
        s, v = series(rows, SHIFT_VAR, PPO_X)
        if len(s):
            ax.plot(shift(name, s), v, label=name, ls="--" if name == "vanilla_ppo" else "-")
    ax.set_xlabel("PPO iteration (rounds back to back)")
    ax.set_ylabel("var of within-prompt reward differences")
    ax.set_title("Figure 1: reward-difference variance over PPO")
    ax.legend()
    figs["fig1"] = _save(fig, workdir, "fig1_reward_diff_variance.png")
    # Figure 4
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows in rm_rows.items():
        s, v = series(rows, "eval/accuracy")
        if len(s):
            ax.plot(s, v, marker="o", label=name, ls="--" if name == "vanilla_rm" else "-")
    ax.set_xlabel("RM training step")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Figure 4: RM accuracy per round")
    ax.legend()
    figs["fig4"] = _save(fig, workdir, "fig4_rm_accuracy.png")
    # Figure 5
    fig, ax = plt.subplots(figsize=(6, 4))
    hi = float(max(d_vanilla.max(initial=0), d_meta.max(initial=0))) or 1.0
    bins = np.linspace(0, hi, 31)
    ax.hist(d_vanilla, bins=bins, alpha=0.6, label="vanilla RM")
    ax.hist(d_meta, bins=bins, alpha=0.6, label="MetaRM (last round)")
    ax.set_xlabel("|r(x, s_i) - r(x, s_j)| on final-policy samples")
    ax.set_ylabel("pairs")
    ax.set_title("Figure 5: reward differences on the shifted distribution")
    ax.legend()
    figs["fig5"] = _save(fig, workdir, "fig5_reward_diff_hist.png")
    # Proxy (and gold) reward by policy; proxy score over PPO iterations.
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rewards)
    x = np.arange(len(names))
    keys = [k for k in ("gold", "proxy_vanilla_rm", "proxy_last_metarm") if k in rewards[names[0]]]
    for i, k in enumerate(keys):
        a1.bar(x + i * 0.8 / len(keys), [rewards[n][k] for n in names], 0.8 / len(keys), label=k)
    a1.set_xticks(x + 0.4 - 0.4 / len(keys), names, rotation=30)
    a1.set_title("mean reward of held-out samples")
    a1.legend()
    for name, rows in ppo_rows.items():
        s, v = series(rows, PROXY, PPO_X)
        line = a2.plot(shift(name, s), v, label=f"{name} proxy")[0] if len(s) else None
        s, v = series(rows, GOLD, PPO_X)
        if len(s):
            a2.plot(
                shift(name, s),
                v,
                ls=":",
                color=line.get_color() if line else None,
                label=f"{name} gold",
            )
    a2.set_xlabel("PPO iteration")
    a2.set_title("reward over PPO (proxy: the RM PPO optimises)")
    a2.legend(fontsize=7)
    figs["rewards"] = _save(fig, workdir, "fig_rewards.png")
    return figs


def _save(fig, workdir, name) -> str:
    path = os.path.join(workdir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return name


def _table(rows: dict, header: str) -> list[str]:
    out = [f"| {header} | win | tie | lose | win rate | lose rate |", "|---|---|---|---|---|---|"]
    for k, v in rows.items():
        out.append(f"| {k} | {v.win} | {v.tie} | {v.lose} | {v.win_rate:.1%} | {v.lose_rate:.1%} |")
    return out


def _verdict(res) -> str:
    if res.win > res.lose:
        return "wins more often than it loses"
    if res.win < res.lose:
        return "loses more often than it wins"
    return "wins as often as it loses"


def _verdicts(table1, table2, best) -> list[str]:
    out = [
        f"{name} {_verdict(res)} against SFT ({res.win} / {res.tie} / {res.lose})."
        for name, res in table1.items()
    ]
    out += [
        f"The best round, {best}, {_verdict(res)} against {name} "
        f"({res.win} / {res.tie} / {res.lose})."
        for name, res in table2.items()
        if name != "sft"
    ]
    return out


def _console_tables(table1, table2, rewards, best, judge_name) -> str:
    lines = [f"Table 1: MetaRM rounds vs SFT (judge: {judge_name})"]
    lines += [f"  {k:12s} win/tie/lose {_fmt_result(v)}" for k, v in table1.items()]
    lines += [f"Table 2: {best} vs baselines"]
    lines += [f"  vs {k:12s} win/tie/lose {_fmt_result(v)}" for k, v in table2.items()]
    lines += ["Mean rewards of held-out samples:"]
    lines += [
        f"  {k:12s} " + "  ".join(f"{kk} {vv:+.3f}" for kk, vv in v.items())
        for k, v in rewards.items()
    ]
    return "\n".join(lines)


def _write(workdir, result, table1, table2, rewards, fig5, figs, judge_name, best):
    lines = [
        "# Iterative RLHF with MetaRM: report",
        "",
        f"Judge: {judge_name}; tie margin {result['tie_margin']}; "
        f"{result['prompts']} held-out prompts; one sample per prompt per policy.",
        "",
    ]
    lines += ["## In plain words", ""] + [f"- {line}" for line in _verdicts(table1, table2, best)]
    lines += ["", "## Table 1: each MetaRM round vs SFT", ""] + _table(table1, "policy vs SFT")
    lines += ["", f"## Table 2: best round ({best}) vs baselines", ""]
    lines += _table(table2, f"{best} vs") + ["", "## Mean rewards of held-out samples", ""]
    keys = list(next(iter(rewards.values())))
    lines += ["| policy | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [
        f"| {k} | " + " | ".join(f"{v[kk]:.4f}" for kk in keys) + " |" for k, v in rewards.items()
    ]
    lines += [
        "",
        "Gold is the synthetic world's hidden reward (where there is one); the proxies "
        "are the vanilla RM and the last round's MetaRM. A proxy that rises while gold "
        "does not is over-optimisation.",
        "",
        "## Figure 5: |Δr| on the final policy's samples",
        "",
        f"vanilla RM: mean {fig5['vanilla_rm']['mean']:.4f}, var {fig5['vanilla_rm']['var']:.4f}; "
        f"MetaRM: mean {fig5['metarm']['mean']:.4f}, var {fig5['metarm']['var']:.4f}.",
        "",
    ]
    for key, title in (
        ("fig1", "Figure 1: variance of reward differences over PPO"),
        ("fig4", "Figure 4: RM validation accuracy"),
        ("fig5", "Figure 5: histogram of |Δr|"),
        ("rewards", "Rewards by policy and over PPO"),
    ):
        lines += [f"### {title}", "", f"![{key}]({figs[key]})", ""]
    with open(os.path.join(workdir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(result, f, indent=1)


def _flatten(prefix: str, x, out: dict) -> None:
    if isinstance(x, dict):
        for k, v in x.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif (
        isinstance(x, (list, tuple)) and len(x) == 3 and ("table1" in prefix or "table2" in prefix)
    ):
        for k, v in zip(("win", "tie", "lose"), x):
            out[f"{prefix}.{k}"] = v
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out[prefix] = float(x)


def aggregate_seeds(workdir: str, per_seed: list[dict]) -> str:
    """mean ± std over seeds of every number in the rlhf stage's summary -> seeds.md (+ text)."""
    flat = []
    for run in per_seed:
        f: dict = {}
        _flatten(
            "",
            {
                k: v
                for k, v in run.get("rlhf", {}).items()
                if k in ("table1", "table2", "rewards", "fig5")
            },
            f,
        )
        flat.append(f)
    keys = [k for k in flat[0] if all(k in f for f in flat)]
    best = [run.get("rlhf", {}).get("best_round") for run in per_seed]
    lines = [
        f"# Quickstart over {len(per_seed)} seeds: mean ± std",
        "",
        f"Best round per seed: {best} (Table 2 compares each seed's own best round).",
        "",
        "| quantity | mean | std | per seed |",
        "|---|---|---|---|",
    ]
    for k in keys:
        v = np.asarray([f[k] for f in flat])
        lines.append(
            f"| {k} | {v.mean():.4g} | {v.std(ddof=1):.3g} | "
            + ", ".join(f"{x:.4g}" for x in v)
            + " |"
        )
    text = "\n".join(lines)
    with open(os.path.join(workdir, "seeds.md"), "w") as f:
        f.write(text + "\n")
    return text
