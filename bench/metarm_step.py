"""Time per optimizer step: vanilla RM vs MetaRM (first / second order), side by side.

    python bench/metarm_step.py                      # tiny (T=64) and llama_100m (T=128)
    python bench/metarm_step.py --presets=tiny --reps=20

Paper batch shapes: n = 16 preference pairs (2n = 32 sequences), m = 16 meta prompts x k = 5
responses (80 sequences). Each step is the loop's full jitted train step (grads, clipping, AdamW,
NaN guard). The FLOP ratio of a MetaRM step to a vanilla one is (2n + m·k) / 2n = 3.5: one
forward+backward over the meta batch, one over the pairs. Peak memory is XLA's compiled memory
analysis (arguments + outputs + temporaries, minus aliased donations) and the process's max RSS.
GFLOP is XLA's cost analysis of each compiled step; the second-order step is timed in each of
its forms (``metarm.SECOND_ORDER``: the same gradient), its time ratio to the first-order step
printed beside its FLOP ratio.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import numpy as np

from metarm_jax import models, sharding
from metarm_jax.config import defaults
from metarm_jax.config import lib as config_lib
from metarm_jax.core import metarm
from metarm_jax.models import llama
from metarm_jax.train import loop, optim, rm


def _meta(**overrides):
    """The meta block of the paper's step (η = 5e-6) with ``overrides``."""
    return config_lib.derive(defaults.meta(), {"eta": 5e-6, **overrides})


def random_batches(n: int, m: int, k: int, seq_len: int, vocab: int, seed: int = 0):
    """n preference pairs and m meta prompts x k responses of random tokens, right-padded to
    random lengths (the step's cost depends only on the shapes)."""
    rng = np.random.default_rng(seed)

    def seqs(*shape):
        ids = rng.integers(3, vocab, (*shape, seq_len), dtype=np.int32)
        lengths = rng.integers(seq_len // 2, seq_len + 1, shape)
        mask = (np.arange(seq_len) < lengths[..., None]).astype(np.int32)
        return ids * mask, mask

    cid, cm = seqs(n)
    rid, rmask = seqs(n)
    mid, mm = seqs(m, k)
    pref = {"chosen_ids": cid, "chosen_mask": cm, "rejected_ids": rid, "rejected_mask": rmask}
    meta = {"input_ids": mid, "attention_mask": mm, "sample_mask": np.ones((m, k), np.int32)}
    return pref, meta


def time_steps(compiled, state, batch, reps: int, warmup: int = 1):
    """Median seconds of ``reps`` calls of a compiled train step after ``warmup`` calls (each
    call's outputs waited for); returns (seconds, the last state)."""
    for _ in range(warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), state


def time_train_step(step_fn, batch, params, opt, sched, shard, mesh, reps: int, warmup: int = 1):
    """The loop's full jitted train step of ``step_fn`` on ``batch``, compiled once and timed:
    {step_s (median of reps), gflop (XLA cost analysis), compile_s, peak_bytes (XLA memory
    analysis: arguments + outputs + temporaries - aliased)}."""
    state = loop.init_state(params, opt, 0, shard)
    step = loop.jit_train_step(loop.make_train_step(step_fn, opt, sched), mesh, shard, batch)
    gb = sharding.global_batch(mesh, batch)
    t0 = time.perf_counter()
    compiled = step.lower(state, gb).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = float("nan")
    if mem is not None:
        peak = (
            mem.argument_size_in_bytes
            + mem.output_size_in_bytes
            + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes
        )
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    step_s, state = time_steps(compiled, state, gb, reps, warmup)
    del state
    return dict(step_s=step_s, gflop=flops / 1e9, compile_s=compile_s, peak_bytes=peak)


def bench(preset: str, seq_len: int, n: int, m: int, k: int, reps: int, warmup: int):
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    cfg = config_lib.base_config().train
    pref, meta = random_batches(n, m, k, seq_len, llama.preset(preset).vocab_size)
    rows = {}
    with jax.set_mesh(mesh):
        model = llama.create(llama.preset(preset), "reward", seed=0, mesh=mesh)
        reward_fn, params, *_ = models.split(model)
        opt, sched = optim.optimizer(cfg, 1000)
        shard = loop.state_shardings(mesh, params, opt)
        both = {"pref": pref, "meta": meta}
        steps = [
            ("vanilla", rm.rm_step(reward_fn, 0.0), {"pref": pref}),
            ("meta-1st", rm.metarm_step(reward_fn, _meta(order="first"), 0.0), both),
        ] + [
            (
                f"2nd-{form}",
                rm.metarm_step(reward_fn, _meta(order="second", second_order=form), 0.0),
                both,
            )
            for form in metarm.SECOND_ORDER
        ]
        for name, step_fn, batch in steps:
            rows[name] = time_train_step(
                step_fn, batch, params, opt, sched, shard, mesh, reps, warmup
            )
    return rows, llama.count_params(model)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--presets", default="tiny:64,llama_100m:128", help="preset:seq_len,...")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--reps", type=int, default=0, help="timed steps (0: 20 tiny, 2 others)")
    args = p.parse_args()
    flop_ratio = (2 * args.n + args.m * args.k) / (2 * args.n)
    print(
        f"device: {jax.devices()[0].device_kind} x1 ({jax.device_count()} visible); "
        f"n={args.n} pairs, m={args.m} prompts x k={args.k}; FLOP ratio (2n+mk)/2n = {flop_ratio:.2f}"
    )
    for spec in args.presets.split(","):
        preset, seq_len = spec.split(":")
        reps = args.reps or (20 if preset == "tiny" else 2)
        rows, nparams = bench(
            preset, int(seq_len), args.n, args.m, args.k, reps, warmup=2 if preset == "tiny" else 1
        )
        van = rows["vanilla"]["step_s"]
        first, first_flops = rows["meta-1st"]["step_s"], rows["meta-1st"]["gflop"]
        print(f"\n{preset} ({nparams / 1e6:.1f}M params), T={seq_len}, median of {reps} steps:")
        print(
            f"  {'step':14s} {'s/step':>9s} {'/vanilla':>8s} {'/1st':>6s} {'GFLOP':>8s} "
            f"{'FLOP /1st':>9s} {'time/FLOP':>9s} {'peak MiB':>9s} {'compile s':>9s}"
        )
        for name, r in rows.items():
            t1, f1 = r["step_s"] / first, r["gflop"] / first_flops
            print(
                f"  {name:14s} {r['step_s']:9.4f} {r['step_s'] / van:8.2f} {t1:6.2f} "
                f"{r['gflop']:8.2f} {f1:9.2f} {t1 / f1:9.2f} "
                f"{r['peak_bytes'] / 2**20:9.1f} {r['compile_s']:9.1f}"
            )
        print(
            f"  goal: meta-1st / vanilla <= 1.1 x (2n+mk)/2n: {first / van:.2f} <= "
            f"{1.1 * flop_ratio:.2f} -> {'met' if first / van <= 1.1 * flop_ratio else 'MISSED'}"
        )
        for form in metarm.SECOND_ORDER:
            r = rows[f"2nd-{form}"]
            t1, f1 = r["step_s"] / first, r["gflop"] / first_flops
            print(
                f"  goal: 2nd-{form} / 1st time within 1.1 x its FLOP ratio: {t1:.2f} vs "
                f"{f1:.2f} (x{t1 / f1:.2f}) -> {'met' if t1 <= 1.1 * f1 else 'MISSED'}; peak "
                f"{r['peak_bytes'] / rows['2nd-reverse']['peak_bytes']:.2f} x reverse's"
            )
    print(
        f"\nmax RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB"
    )


if __name__ == "__main__":
    main()
