"""Choose a hyper-parameter of one arm on VALIDATION prompts only (test prompts are never read):

    python bench/valid_sweep.py rho    --values 1,4,16,64      --seeds 100,101 \
        [--config configs/quickstart.py:world=blind]
    python bench/valid_sweep.py lambda --values 0.1,0.3,1,3,10 --seeds 100,101 \
        --base 'runs/valid_sweep/rho/seed{seed}/4'

    rho     the calibrated ascent's ρ (meta.eta_mode='update': ‖θ' − θ‖ = ρ·‖Δθ_opt‖) of the
            MetaRM arm (docs/training.md), chosen by MetaRM's PAIRED difference from its η = 0
            control (eta0, run at the same seeds: MetaRM's peak validation gold minus eta0's,
            each at its own validation-chosen round), not by MetaRM's own gold; also reports the
            measured ascent-to-update ratio and J(θ') − J(θ) of the MetaRM steps
    lambda  λ of the ensemble_uwo arm (PPO against mean − λ·variance over the ensemble's
            members, Coste et al.; ppo.ensemble_lambda)

For each sweep seed (seeds the study does not use: 100, 101) and each value: the quickstart with
that value and the swept arm alone beside the method (which always runs), every other setting the
quickstart's. The runs of one seed share every finished step that does not depend on the value
(π_SFT, r_0, the method's rounds, the ensemble's members ...: DONE.json marks them; the first
value's run is copied into the next one's directory, the swept arm's steps and samples left out);
``--base`` (``{seed}`` is replaced) names a finished run of the same config to start each seed
from. Per value it reports the swept arm's peak validation gold (the round chosen on validation)
and its last round's validation gold, averaged over the sweep seeds; the value with the highest
mean peak validation gold (with a control: the highest mean paired difference from the control's
peak validation gold) is chosen (ties: the smaller).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

import numpy as np

from metarm_jax.config import lib as config_lib
from metarm_jax.runtime.layout import read_metrics


@dataclasses.dataclass(frozen=True)
class Sweep:
    arm: str  # the arm whose validation gold chooses the value
    flags: Callable[[float], list[str]]  # the --config flags that set the value
    owns: Callable[[str], bool]  # whether a top-level entry of the run depends on the value
    control: str = ""  # an arm run at the same seeds; the value is chosen by arm − control


SWEEPS = {
    "rho": Sweep(
        "metarm",
        lambda v: [
            "--config.meta.eta_mode=update",
            f"--config.meta.eta={v:g}",
            "--config.rlhf.baselines=('eta0',)",
        ],
        # every round after the first; round 1's meta samples come from π_SFT, so only its
        # metarm/ and ppo/ depend on ρ (``share`` copies round1/meta alone)
        lambda entry: re.fullmatch(r"round\d+", entry) is not None and entry != "round1",
        control="eta0",  # independent of ρ: shared by every value's run of a seed
    ),
    "lambda": Sweep(
        "ensemble_uwo",
        lambda v: [
            "--config.rlhf.baselines=('ensemble_uwo',)",
            f"--config.ppo.ensemble_lambda={v:g}",
        ],
        lambda entry: entry == "ensemble_uwo",
    ),
}


CONFIG = "configs/quickstart.py"


def seed_flags(offset: int, config: str = CONFIG) -> list[str]:
    """--config flags that move every seed key by ``offset``, as ``:seeds=N`` does."""
    return config_lib.seed_offset_flags(config_lib.load_config_file(config), offset)


def run(workdir: str, seed: int, flags: list[str], extra: list[str], config: str = CONFIG) -> None:
    cmd = [
        sys.executable,
        "-m",
        "metarm_jax.main",
        f"--config={config}",
        f"--workdir={workdir}",
        *seed_flags(seed, config),
        *flags,
        "--config.rlhf.diversity=",
        "--config.train.progress=False",
        *extra,
    ]
    subprocess.run(cmd, check=True)


def _policy_of(sweep: Sweep, name: str) -> bool:
    """Whether a policy (a sample file's or step's name) belongs to the swept arm."""
    return name.startswith("round") if sweep.arm == "metarm" else name.startswith(f"{sweep.arm}@")


def share(sweep: Sweep, src: str, dst: str) -> None:
    """Copy ``src``'s steps that do not depend on the swept value into ``dst`` (finished ones
    are skipped by the run, unfinished ones resume)."""
    os.makedirs(dst, exist_ok=True)
    for entry in sorted(os.listdir(src)):
        s, d = os.path.join(src, entry), os.path.join(dst, entry)
        if os.path.exists(d) or not os.path.isdir(s) or sweep.owns(entry):
            continue
        if entry == "samples":
            for split in os.listdir(s):
                for name in os.listdir(os.path.join(s, split)):
                    if _policy_of(sweep, name.removesuffix(".jsonl")):
                        continue
                    a, b = os.path.join(s, split, name), os.path.join(d, split, name)
                    os.makedirs(os.path.dirname(b), exist_ok=True)
                    (shutil.copytree if os.path.isdir(a) else shutil.copy)(a, b)
        elif sweep.arm == "metarm" and entry == "round1":  # only its meta samples are shared
            if os.path.exists(os.path.join(s, "meta", "DONE.json")):
                shutil.copytree(os.path.join(s, "meta"), os.path.join(d, "meta"))
                shutil.copy(os.path.join(s, "meta.jsonl"), os.path.join(d, "meta.jsonl"))
        else:
            shutil.copytree(s, d, symlinks=True)


def _peak(rep: dict, arm: str) -> tuple[int, float, float]:
    """(peak round, its validation gold, the last round's) of one arm, from the report's curve."""
    valid = {p["round"]: p["valid_gold"] for p in rep["curves"][arm]}
    peak = max(valid, key=lambda r: (valid[r], -r))
    return peak, valid[peak], valid[max(valid)]


def summarise(sweep: Sweep, workdir: str) -> dict:
    with open(os.path.join(workdir, "report.json")) as f:
        rep = json.load(f)
    peak, peak_gold, final_gold = _peak(rep, sweep.arm)
    out = {"peak_round": peak, "peak_valid_gold": peak_gold, "final_valid_gold": final_gold}
    if sweep.control:  # the paired criterion: the arm's peak minus the control's, same seed
        out["control_peak_valid_gold"] = _peak(rep, sweep.control)[1]
        out["paired_diff"] = peak_gold - out["control_peak_valid_gold"]
    if sweep.arm == "metarm":
        ratio, gain = [], []
        for r in range(1, max(p["round"] for p in rep["curves"][sweep.arm]) + 1):
            path = os.path.join(workdir, f"round{r}", "metarm", "metarm", "metrics.jsonl")
            rows = read_metrics(path)
            ratio += [x["meta/ascent_to_update"] for x in rows if "meta/ascent_to_update" in x]
            gain += [x["meta/J_prime"] - x["meta/J"] for x in rows if "meta/J_prime" in x]
        out["ascent_to_update"] = float(np.mean(ratio)) if ratio else float("nan")
        out["J_gain"] = float(np.mean(gain)) if gain else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("param", choices=sorted(SWEEPS))
    ap.add_argument("--values", required=True, help="comma-separated values")
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("--config", default=CONFIG, help="e.g. configs/quickstart.py:world=blind")
    ap.add_argument("--workdir", default="", help="default runs/valid_sweep/<param>")
    ap.add_argument("--base", default="", help="a finished run per seed to share steps from")
    ap.add_argument(
        "--aggregate", action="store_true", help="only read the finished runs' reports (no run)"
    )
    ap.add_argument("extra", nargs="*", help="more --config.KEY=VALUE flags for every run")
    args = ap.parse_args()
    sweep = SWEEPS[args.param]
    root = args.workdir or os.path.join("runs", "valid_sweep", args.param)
    values = [float(x) for x in args.values.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    table: dict[float, list[dict]] = {}
    for seed in seeds:
        first = args.base.format(seed=seed) if args.base else None
        for v in values:
            wd = os.path.join(root, f"seed{seed}", f"{v:g}")
            if not args.aggregate:
                if first is not None:
                    share(sweep, first, wd)
                run(wd, seed, sweep.flags(v), args.extra, args.config)
                first = first or wd
            table.setdefault(v, []).append(summarise(sweep, wd))
    criterion = "paired_diff" if sweep.control else "peak_valid_gold"
    best = max(values, key=lambda v: (np.mean([s[criterion] for s in table[v]]), -v))
    extra_cols = ["paired_diff"] if sweep.control else []
    extra_cols += ["ascent_to_update", "J_gain"] if sweep.arm == "metarm" else []
    print(
        f"| {args.param} | peak valid gold (mean over seeds) | final valid gold | peak rounds |"
        + "".join(f" {c} |" for c in extra_cols)
    )
    print("|---" * (4 + len(extra_cols)) + "|")
    for v in values:
        s = table[v]
        row = (
            f"| {v:g}{' (chosen)' if v == best else ''} | "
            f"{np.mean([x['peak_valid_gold'] for x in s]):.4f} | "
            f"{np.mean([x['final_valid_gold'] for x in s]):.4f} | {[x['peak_round'] for x in s]} |"
        )
        row += "".join(f" {np.mean([x[c] for x in s]):.3g} |" for c in extra_cols)
        print(row)
    with open(os.path.join(root, "sweep.json"), "w") as f:
        json.dump(
            {
                "param": args.param,
                "arm": sweep.arm,
                "chosen": best,
                "criterion": criterion,
                "control": sweep.control,
                "config": args.config,
                "seeds": seeds,
                "table": {f"{k:g}": v for k, v in table.items()},
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
