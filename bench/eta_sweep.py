"""Calibrate MetaRM's η: for each η on a log grid, run round 1's MetaRM stage of a finished
quickstart run (the same start r_0, the same pairs and meta samples, the same steps), and print
the size of the ascent next to the optimizer's step and the RM's ranking agreement with gold on
validation prompts.

    .venv/bin/python -m metarm_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
    .venv/bin/python bench/eta_sweep.py --workdir=runs/quickstart --etas=0,1e-4,1e-3,1e-2,1e-1,1
    .venv/bin/python bench/eta_sweep.py --workdir=runs/quickstart --mode=param_fraction \\
        --etas=1e-5,1e-4,1e-3,1e-2

Per η: ‖θ' − θ‖ / ‖optimizer update‖ (mean over the steps), cos(∇J, g), and within-prompt
pairwise accuracy and Kendall τ against gold (95% bootstrap intervals over prompts) on k samples
per validation prompt from π_SFT (what the meta samples came from) and from π_1 (round 1's
policy, the shifted distribution). η = 0 is the control: the RM with the same steps and data.
Writes into <workdir>/eta_sweep/.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import ml_collections
import numpy as np

from metarm_jax import sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.config import stages
from metarm_jax.core import stats
from metarm_jax.data import DataSource, load, synthetic
from metarm_jax.generation.scoring import RewardScorer


def _stage(config, mesh, workdir, name, overrides):
    done = os.path.join(workdir, "DONE.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    cfg = config_lib.derive(config, {**overrides, "workdir": workdir})
    summary = stages.get(name)(stages.StageContext(cfg, mesh, workdir))
    os.makedirs(workdir, exist_ok=True)
    with open(done, "w") as f:
        json.dump(summary, f, default=str)
    return summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a finished quickstart run")
    ap.add_argument("--etas", default="0,1e-4,1e-3,1e-2,1e-1,1")
    ap.add_argument("--mode", default="absolute", choices=("absolute", "param_fraction"))
    ap.add_argument("--k", type=int, default=4, help="samples per validation prompt")
    ap.add_argument("--prompts", type=int, default=100, help="validation prompts")
    args = ap.parse_args()
    run = pathlib.Path(args.workdir)
    base_file = run / "round1" / "metarm" / "config.json"
    if not base_file.exists():
        sys.exit(f"{base_file}: not found; run the quickstart into --workdir first.")
    config = ml_collections.ConfigDict(json.loads(base_file.read_text()))
    config.train.progress = False
    mesh = sharding.make_mesh(dict(config.mesh))
    out = run / "eta_sweep"
    world = synthetic.World(config.world)
    with open(run / "world" / "paths.json") as f:
        valid_dir = os.path.dirname(json.load(f)["prompts_valid"])

    samples = {}
    for name, policy in (
        ("SFT", run / "sft" / "export" / "sft"),
        ("pi_1", run / "round1" / "ppo" / "export" / "ppo"),
    ):
        path = out / "samples" / f"{name}.jsonl"
        _stage(
            config,
            mesh,
            str(out / "samples" / name),
            "build_meta",
            {
                "build_meta.policy_path": str(policy),
                "build_meta.k": args.k,
                "build_meta.round": 0,
                "build_meta.output_path": str(path),
                "build_meta.prompt_dataset": "prompts",
                "build_meta.prompt_path": valid_dir,
                "build_meta.prompt_split": "valid",
                "build_meta.skip_prompts": 0,
                "build_meta.max_prompts": args.prompts,
            },
        )
        recs = load("meta", DataSource.of("meta", str(path)))
        prompts, resp = [r.prompt for r in recs], [list(r.responses) for r in recs]
        gold = np.asarray([world.gold([p] * len(r), r) for p, r in zip(prompts, resp)])
        samples[name] = (prompts, resp, gold)

    def agreement(rm_path):
        scorer = RewardScorer(config, mesh, rm_path)
        cells = []
        for prompts, resp, gold in samples.values():
            scores, mask = scorer.score(prompts, resp)
            acc, tau = stats.ranking_agreement(scores, gold, mask)
            lo, hi = stats.bootstrap_ci(acc, n_resamples=int(config.rlhf.bootstrap))
            cells.append(f"{np.nanmean(acc):.3f} [{lo:.3f}, {hi:.3f}] / {np.nanmean(tau):+.3f}")
        return cells

    header = f"{'eta':>8} {'|θ′-θ|/|Δθ|':>12} {'cos(∇J,g)':>10} " + " ".join(
        f"{'acc / τ on ' + n:>32}" for n in samples
    )
    print(
        f"mode {args.mode}; round-1 MetaRM from r0, {config.train.steps} steps; jax "
        f"{jax.__version__}, {jax.device_count()} device(s)"
    )
    print(header)
    print(
        f"{'r0':>8} {'':>12} {'':>10} "
        + " ".join(f"{c:>32}" for c in agreement(str(run / "rm" / "export" / "rm")))
    )
    for eta in (float(e) for e in args.etas.split(",")):
        t0 = time.time()
        wd = out / f"{args.mode}_eta{eta:g}"
        summary = _stage(
            config, mesh, str(wd), "metarm", {"meta.eta": eta, "meta.eta_mode": args.mode}
        )
        rows = [json.loads(line) for line in (wd / "metarm" / "metrics.jsonl").open()]
        steps = [r for r in rows if "loss" in r]
        ratio = np.mean([r.get("meta/ascent_to_update", 0.0) for r in steps])
        cos = [r["meta/cos_gradJ_grad"] for r in steps if "meta/cos_gradJ_grad" in r]
        cos_s = f"{np.mean(cos):.3f}" if cos else "n/a"
        cells = agreement(summary["export"])
        print(
            f"{eta:>8g} {ratio:>12.3g} {cos_s:>10} "
            + " ".join(f"{c:>32}" for c in cells)
            + f"   ({time.time() - t0:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
