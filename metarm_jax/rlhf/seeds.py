"""Several seeds of one run: every number of the rlhf stage's summary as mean ± std with a 95% t
interval over seeds (``seeds.md``), and paired differences of the method's rounds with each
control after the same budget.

    python -m metarm_jax.rlhf.seeds --aggregate runs/study    # from seed*/report.json, no reruns
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from metarm_jax.core import stats
from metarm_jax.eval import plots
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import SINGLE
from metarm_jax.runtime.errors import UserError


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
    ``python -m metarm_jax.rlhf.seeds --aggregate runs/study``."""
    paths = sorted(
        glob.glob(os.path.join(workdir, "seed*", "report.json")),
        key=lambda p: int(re.sub(r"\D", "", os.path.basename(os.path.dirname(p))) or 0),
    )
    if not paths:
        raise UserError(f"{workdir}: no seed*/report.json to aggregate; run the seeds first.")
    reports = []
    for p in paths:
        with open(p) as f:
            reports.append(json.load(f))
    text = aggregate_seeds(workdir, [{"rlhf": compute.summary(r)} for r in reports])
    if all("peak_final" in r and r["peak_final"] for r in reports):
        head = study_section(workdir, reports)
        text = head + "\n\n" + text
        with open(os.path.join(workdir, "seeds.md"), "w") as f:
            f.write(text + "\n")
    return text


def _ci(x) -> str:
    lo, hi = x["ci"]
    return f"{x['mean']:.3f} [{lo:+.3f}, {hi:+.3f}]"


def study_section(workdir: str, reports: list[dict]) -> str:
    """The experiment over seeds (``compute.study``) as markdown, ``seeds.json`` and the mean
    frontier figure ``fig_frontier_seeds.png``; returns the markdown."""
    res = compute.study(reports)
    curves = compute.mean_curves(reports)
    fits = {
        a: compute.gao_fit([p["sqrt_kl"] for p in c], [p["gold"] for p in c])
        for a, c in curves.items()
    }
    res["mean_curves"], res["mean_frontier_fit"] = curves, fits
    with open(os.path.join(workdir, "seeds.json"), "w") as f:
        json.dump(res, f, indent=1)
    fig = plots.frontier(workdir, curves, fits, file_name="fig_frontier_seeds.png")
    n = res["seeds"]
    lines = [f"# The experiment over {n} seeds (95% t intervals over seeds)", ""]
    c = res["controls"]
    if "overoptimised" in c:
        o = c["overoptimised"]
        lines += [
            "## Can this experiment discriminate? (positive controls, read first)",
            "",
            f"- vanilla PPO's drop from its peak (chosen on validation) to its final test gold: "
            f"{_ci(o)} (threshold {o['threshold']}) — **{'passed' if o['passed'] else 'FAILED'}**",
        ]
        for name in plan.CONTROLS:
            d = c[compute.control_key(name)]
            lines.append(
                f"- {name} − {plan.FLOOR}, final test gold: {_ci(d)} — "
                f"**{'passed' if d['passed'] else 'FAILED'}**"
            )
        lines += [
            "",
            "Every control passed: the comparison below can be read."
            if c["discriminates"]
            else "**A control failed: the MetaRM comparison below cannot be read as evidence.**",
            "",
        ]
    lines += [
        "## Arms",
        "",
        "| arm | peak gold (test, round chosen on validation) | final gold (test) | final √KL | "
        "RM accuracy on own samples, last round | RM accuracy on held-out shifted pairs, last "
        "round | compute: RM steps; RM forwards per roll-out |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(row, key):
        return _ci(row[key]) if key in row else "—"

    for arm, row in res["arms"].items():
        lines.append(
            f"| {arm} | {_ci(row['peak'])} (rounds {row['peak_rounds']}) | {_ci(row['final'])} "
            f"| {cell(row, 'sqrt_kl_final')} | {cell(row, 'rm_on_policy_final')} "
            f"| {cell(row, 'rm_shifted_final')} | {_compute(row)} |"
        )
    if "rm0_shifted" in res:
        lines += [
            "",
            f"r₀ on the held-out shifted pairs: {_ci(res['rm0_shifted'])} (the RM of vanilla PPO; "
            "the set pools, per test prompt, the samples of every arm's final policy).",
        ]
    lines += ["", "## Paired differences (within each seed)", ""]
    lines += ["| difference | final gold | peak gold |", "|---|---|---|"]
    for k, v in res["differences"].items():
        lines.append(f"| {k} | {_ci(v['final'])} | {_ci(v['peak'])} |")
    lines += ["", "## Ranking, and what the intervals resolve", ""]
    for what in ("final", "peak"):
        ranked = ", ".join(f"{a} {res['arms'][a][what]['mean']:.3f}" for a in res["ranking"][what])
        lines.append(f"- By mean {what} gold: {ranked}.")
    if res["resolved"]:
        lines.append("- Paired differences whose 95% interval excludes 0 (no multiplicity "
                     "correction): " + "; ".join(f"{d['difference']} ({d['what']}) "
                     f"{d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                     for d in res["resolved"]) + ".")  # fmt: skip
    else:
        lines.append("- No paired difference has a 95% interval that excludes 0.")
    lines.append("- Every other difference above is unresolved: its interval includes 0.")
    lines += ["", f"![frontier over seeds]({fig})", ""]
    return "\n".join(lines)


def _compute(row) -> str:
    c = row.get("compute")
    if not c:
        return "—"
    return f"{c.get('rm_steps', 0):.0f}; {c.get('rm_forwards_per_rollout', 0):.0f}"


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
            for ctl in [a.policy(int(n)) for a in plan.ARMS if not a.main and a.schedule != SINGLE]:
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
