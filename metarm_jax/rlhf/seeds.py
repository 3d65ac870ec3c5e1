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
from metarm_jax.errors import UserError
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import SINGLE


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
    per_seed = []
    for p in paths:
        with open(p) as f:
            per_seed.append({"rlhf": compute.summary(json.load(f))})
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
