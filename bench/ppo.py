"""Time of one PPO iteration, split into generation, scoring and training.

    .venv/bin/python bench/ppo.py                      # the "tiny" preset, 1 device
    .venv/bin/python bench/ppo.py --iterations 8 --queries 8 --rollouts 16

The synthetic world's prompts and tokenizer; policy, reference, critic and RM are random models of
the preset (vocab cut to the world's 54 tokens), loaded from HF directories as the stage does.
Generation = sampling.generate of queries x rollouts responses (max_new_tokens new tokens);
scoring = one jitted forward each of actor, reference, critic and RM, plus rewards/GAE;
training = the iteration's optimizer steps (ppo_epochs x minibatches) of the one train loop.
Medians over the iterations after the first two (which compile).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--queries", type=int, default=8)
    ap.add_argument("--rollouts", type=int, default=16)
    ap.add_argument("--minibatch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--offload", type=int, default=0)
    args = ap.parse_args()

    import jax

    from metarm_jax import sharding
    from metarm_jax.config import defaults, stages
    from metarm_jax.config import lib as config_lib
    from metarm_jax.data.world_files import write_world
    from metarm_jax.models import hf, llama
    from metarm_jax.train import ppo

    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {len(jax.devices())} devices), "
        f"load average {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory() as root:
        wc = defaults.world()
        for key in (
            "num_sft",
            "num_train_pairs",
            "num_test_pairs",
            "num_eval_prompts",
            "num_ood_prompts",
        ):
            wc[key] = 8
        paths = write_world(os.path.join(root, "world"), wc)
        cfg = llama.preset(args.preset, vocab_size=54)
        hf.save_hf(llama.create(cfg, "lm", seed=1), os.path.join(root, "policy"))
        hf.save_hf(llama.create(cfg, "reward", seed=2), os.path.join(root, "rm"))

        c = config_lib.base_config()
        c.model.hf_path = os.path.join(root, "policy")
        d = c.data
        d.prompt_dataset, d.prompt_path, d.prompt_split = "prompts", paths["prompts_train"], "train"
        d.tokenizer_path = paths["tokenizer"]
        d.max_length, d.bucket_lengths, d.max_prompt_length = 64, (16, 32), 16
        c.train.progress = False
        c.sampling.min_new_tokens = args.new_tokens  # fixed-length responses: comparable timings
        p = c.ppo
        p.rm_path = os.path.join(root, "rm")
        p.iterations, p.queries_per_iteration, p.rollouts_per_query = (
            args.iterations,
            args.queries,
            args.rollouts,
        )
        p.minibatch_size, p.ppo_epochs, p.max_new_tokens = (
            args.minibatch,
            args.epochs,
            args.new_tokens,
        )
        p.save_every, p.export, p.offload_frozen = 0, False, bool(args.offload)
        mesh = sharding.make_mesh(dict(c.mesh))
        timer: dict = {}
        workdir = os.path.join(root, "run")
        t0 = time.perf_counter()
        ppo.run_ppo(stages.StageContext(config=c, mesh=mesh, workdir=workdir), timer=timer)
        total = time.perf_counter() - t0
        with open(os.path.join(workdir, "ppo", "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    roll = [r for r in rows if "rollout/iteration" in r]
    # a roll-out row is written when its iteration's first step is drained, i.e. one step later;
    # iteration wall time = the gap between consecutive roll-out rows
    starts = np.array([r["time"] for r in roll])
    wall = np.diff(starts)
    gen, score = np.array(timer["generate"][1:-1]), np.array(timer["score"][1:-1])
    wall = wall[1:]
    train = wall - gen[: len(wall)] - score[: len(wall)]
    n = args.queries * args.rollouts
    print(
        f"preset {args.preset}: {args.queries} queries x {args.rollouts} roll-outs = {n} "
        f"responses of {args.new_tokens} tokens; {n // args.minibatch * args.epochs} optimizer "
        f"steps per iteration; offload_frozen={bool(args.offload)}"
    )
    print(
        f"run {total:.1f}s for {args.iterations} iterations (first two compile: generation "
        f"{timer['generate'][0]:.2f}s, scoring {timer['score'][0]:.2f}s)"
    )
    med = lambda x: float(np.median(x))
    it = med(wall)
    print(
        f"one iteration (median of {len(wall)}): {it:.3f}s = generation {med(gen):.3f}s "
        f"({100 * med(gen) / it:.0f}%) + scoring {med(score):.3f}s ({100 * med(score) / it:.0f}%)"
        f" + training {med(train):.3f}s ({100 * med(train) / it:.0f}%)"
    )


if __name__ == "__main__":
    main()
