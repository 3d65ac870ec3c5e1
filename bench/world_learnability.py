"""Can a reward model of the quickstart's size learn the world's subtle part, and does r_0?

    python bench/world_learnability.py [--workdir runs/learnability] [world.w_fine=0.5 ...]

With the quickstart's config (plus ``key=value`` overrides of any config key), on one seed:

1. the world, π_SFT and r_0 exactly as the rlhf stage makes them (its own steps, resumable);
2. coarse-saturated pairs (good fraction ~ U(world.saturated_good_frac), the fine part drawn over
   world.saturated_fine_frac), ordered exactly by gold (ties dropped): train and held-out test;
3. ``rm_sat``: an RM trained with r_0's recipe (from π_SFT, the same steps, lr and batch) on the
   saturated train pairs -- the learnability probe;
4. held-out pairwise accuracy against gold of r_0 and rm_sat on the saturated test pairs and on
   the world's base test pairs, and the spread of every gold component on base and saturated
   samples (the shift premise).

Prints one table; the figures go to docs/synthetic.md. The test ``test_subtle_part_is_learnable``
(tests/test_synthetic_world.py) pins the same property at a smaller size.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from metarm_jax import sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.config import stages
from metarm_jax.data import synthetic, world_files
from metarm_jax.generation.scoring import RewardScorer
from metarm_jax.rlhf import driver
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.runner import Runner, export_of
from metarm_jax.runtime import fileio


def read_pairs(path):
    """(prompts, chosen, rejected) of an hh_rlhf file whose chosen side has the higher gold."""
    return world_files.pair_texts(_jsonl(path))


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def accuracy(scorer, pairs) -> float:
    ps, cs, rs = pairs
    s = scorer.score(ps, [[c, r] for c, r in zip(cs, rs)])[0]
    return float(np.mean(s[:, 0] > s[:, 1]))


def spread(world, rng, n, **kw):
    prompts = world.sample_prompts(rng, n)
    comp = world.components(prompts, world.sample_responses(rng, prompts, **kw))
    c = world.cfg
    return {
        "coarse": c.w_coarse * comp.coarse.std(),
        "fine": c.w_fine * comp.fine.std(),
        "order": c.w_order * comp.order.std(),
        "norep": c.w_norep * comp.norep.std(),
        "length": c.w_length * comp.length.std(),
        "gold_mean": comp.gold.mean(),
        "gold_std": comp.gold.std(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/learnability")
    ap.add_argument("--pairs", type=int, default=2000, help="saturated train pairs")
    ap.add_argument("--config", default="configs/quickstart.py", help="e.g. ...:world=blind")
    ap.add_argument(
        "--seed-offset", type=int, default=0, help="move every seed key (sweep seeds: 100, 101)"
    )
    ap.add_argument("overrides", nargs="*", help="config key=value (python literals)")
    args = ap.parse_args()
    config = config_lib.load_config_file(args.config)
    over = {}
    for kv in args.overrides:
        k, _, v = kv.partition("=")
        try:
            import ast

            over[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            over[k] = v
    config = config_lib.derive(config, {**over, "workdir": args.workdir})
    if args.seed_offset:
        config = config_lib.with_seed_offset(config, args.seed_offset)
        args.workdir = config.workdir
    mesh = sharding.make_mesh(dict(config.mesh))
    ctx = stages.StageContext(config, mesh, args.workdir)
    layout = RunLayout(args.workdir)
    ctx = driver._prepare(ctx, layout)
    runner = Runner(ctx)
    sft = export_of(runner.step(layout.sft, "sft", {}), "sft")
    rm0 = export_of(runner.step(layout.rm0, "rm", {"model.hf_path": sft}), "rm")

    world = synthetic.World(ctx.config.world)
    sat_dir = layout.path("saturated")
    if not os.path.exists(os.path.join(sat_dir, "test.jsonl")):
        rng = np.random.default_rng([int(ctx.config.world.seed), 101])
        held = set()
        for f in ("valid", "test"):
            held |= {r["prompt"] for r in _jsonl(layout.path("world", "prompts", f + ".jsonl"))}
        fileio.write_jsonl(
            os.path.join(sat_dir, "train.jsonl"),
            world_files.saturated_pairs(world, rng, args.pairs, held),
        )
        fileio.write_jsonl(
            os.path.join(sat_dir, "test.jsonl"), world_files.saturated_pairs(world, rng, 500, held)
        )
    rm_sat = export_of(
        runner.step(
            "rm_sat", "rm", {"model.hf_path": sft, "data.path": sat_dir, "data.split": "train"}
        ),
        "rm",
    )
    sets = {
        "saturated test": read_pairs(os.path.join(sat_dir, "test.jsonl")),
        "base test": read_pairs(layout.path("world", "pairs", "test.jsonl")),
    }
    out = {}
    for name, path in (("r0", rm0), ("rm_sat", rm_sat)):
        scorer = RewardScorer(ctx.config, mesh, path)
        out[name] = {k: accuracy(scorer, v) for k, v in sets.items()}
    rng = np.random.default_rng(6)
    c = world.cfg
    prem = {
        "base": spread(world, rng, 2000),
        "saturated": spread(
            world,
            rng,
            2000,
            good_frac=tuple(c.saturated_good_frac),
            fine_frac=tuple(c.saturated_fine_frac),
        ),
    }
    print(json.dumps({"accuracy": out, "weighted_std": prem, "overrides": over}, indent=1))
    print("| RM | saturated test acc | base test acc |\n|---|---|---|")
    for name, v in out.items():
        print(f"| {name} | {v['saturated test']:.3f} | {v['base test']:.3f} |")
    keys = list(prem["base"])
    print("\n| samples | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 1))
    for name, v in prem.items():
        print(f"| {name} | " + " | ".join(f"{v[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
