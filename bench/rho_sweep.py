"""Choose the calibrated ascent's ρ (meta.eta_mode='update': ‖θ' − θ‖ = ρ·‖Δθ_opt‖) on
VALIDATION prompts only, as docs/training.md describes.

    python bench/rho_sweep.py --workdir runs/rho_sweep --rhos 0.25,1,4 --seeds 100,101

For each sweep seed (seeds the study does not use) and each ρ: the quickstart's MetaRM arm alone
(its rounds, no baselines), every other setting the quickstart's. The runs of one seed share π_SFT,
r_0 and round 1's meta samples (identical by construction: the same seed and config; the first
run's steps are reused, not copied). Per ρ it reports the MetaRM arm's peak validation gold (the
round chosen on validation) and its last round's validation gold, averaged over the sweep seeds,
and the measured ascent-to-update ratio and J(θ') − J(θ) of the MetaRM steps; ρ with the highest
mean peak validation gold is chosen (ties: the smaller ρ). Test prompts are never read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from metarm_jax import config_lib
from metarm_jax.layout import read_metrics


def seed_flags(offset: int) -> list[str]:
    """--config flags that move every seed key by ``offset``, as ``:seeds=N`` does."""
    return config_lib.seed_offset_flags(
        config_lib.load_config_file("configs/quickstart.py"), offset
    )


def run(workdir: str, seed: int, rho: float, extra: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "metarm_jax.main",
        "--config=configs/quickstart.py",
        f"--workdir={workdir}",
        *seed_flags(seed),
        "--config.meta.eta_mode=update",
        f"--config.meta.eta={rho}",
        "--config.rlhf.baselines=()",
        "--config.rlhf.diversity=",
        "--config.train.progress=False",
        *extra,
    ]
    subprocess.run(cmd, check=True)


def share(src: str, dst: str) -> None:
    """Reuse the finished steps every ρ of a seed has in common (DONE.json marks them)."""
    for step in ("world", "sft", "rm", os.path.join("round1", "meta")):
        s, d = os.path.join(src, step), os.path.join(dst, step)
        done = os.path.exists(os.path.join(s, "DONE.json")) or step == "world"
        if done and not os.path.exists(d):
            shutil.copytree(s, d, symlinks=True)
    meta = os.path.join(src, "round1", "meta.jsonl")
    if os.path.exists(meta) and not os.path.exists(os.path.join(dst, "round1", "meta.jsonl")):
        shutil.copy(meta, os.path.join(dst, "round1", "meta.jsonl"))


def summarise(workdir: str) -> dict:
    with open(os.path.join(workdir, "report.json")) as f:
        rep = json.load(f)
    pts = rep["curves"]["metarm"]
    valid = {p["round"]: p["valid_gold"] for p in pts}
    peak = max(valid, key=lambda r: (valid[r], -r))
    ratio, gain = [], []
    for r in range(1, max(valid) + 1):
        rows = read_metrics(os.path.join(workdir, f"round{r}", "metarm", "metarm", "metrics.jsonl"))
        ratio += [x["meta/ascent_to_update"] for x in rows if "meta/ascent_to_update" in x]
        gain += [x["meta/J_prime"] - x["meta/J"] for x in rows if "meta/J_prime" in x]
    return {
        "peak_round": peak,
        "peak_valid_gold": valid[peak],
        "final_valid_gold": valid[max(valid)],
        "ascent_to_update": float(np.mean(ratio)) if ratio else float("nan"),
        "J_gain": float(np.mean(gain)) if gain else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/rho_sweep")
    ap.add_argument("--rhos", default="0.25,1,4")
    ap.add_argument("--seeds", default="100,101")
    ap.add_argument("extra", nargs="*", help="more --config.KEY=VALUE flags for every run")
    args = ap.parse_args()
    rhos = [float(x) for x in args.rhos.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    table = {}
    for seed in seeds:
        first = None
        for rho in rhos:
            wd = os.path.join(args.workdir, f"seed{seed}", f"rho{rho:g}")
            if first is not None:
                os.makedirs(wd, exist_ok=True)
                share(first, wd)
            run(wd, seed, rho, args.extra)
            first = first or wd
            table.setdefault(rho, []).append(summarise(wd))
    print(
        "| ρ | peak valid gold (mean over seeds) | final valid gold | peak rounds | ascent / update | J(θ') − J(θ) |"
    )
    print("|---|---|---|---|---|---|")
    best = max(rhos, key=lambda r: (np.mean([s["peak_valid_gold"] for s in table[r]]), -r))
    for rho in rhos:
        s = table[rho]
        print(
            f"| {rho:g}{' (chosen)' if rho == best else ''} | "
            f"{np.mean([x['peak_valid_gold'] for x in s]):.4f} | "
            f"{np.mean([x['final_valid_gold'] for x in s]):.4f} | "
            f"{[x['peak_round'] for x in s]} | {np.mean([x['ascent_to_update'] for x in s]):.3g} | "
            f"{np.mean([x['J_gain'] for x in s]):.3g} |"
        )
    with open(os.path.join(args.workdir, "sweep.json"), "w") as f:
        json.dump({"chosen": best, "table": {str(k): v for k, v in table.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
