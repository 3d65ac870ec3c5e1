"""Time to result of the paper's run, from the rates measured on one H200 (docs/scaling.md).

    python bench/time_to_result.py            # prints the markdown tables of docs/scaling.md

The run: Llama-2-7B, Anthropic HH-RLHF helpful + harmless (configs/hh_rlhf.py), π_SFT, the
vanilla RM r_0, then 4 rounds of meta sampling -> MetaRM -> PPO (the MetaRM arm alone; the
baselines of ``rlhf.baselines`` add their own stages). Nothing here runs a model: every time is
arithmetic on the MEASURED figures below (one H200, jax 0.11.2, the code before issue 24,
../shared/GPU.md) and the datasheet bandwidths; each assumption is named where it is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ---- measured on one H200 (../shared/GPU.md, 2026-12-04; bf16:full, T = 512) -----------------
RM_STEP_S = 1.531  # RM train step, 2n = 32 sequences x 512; 42.9% MFU
META_STEP_S = 5.187  # MetaRM first-order step, 2n + m·k = 112 sequences x 512; 44.3% MFU
TRAIN_MFU = 0.429  # the RM step's; assumed for the steps not measured (SFT, PPO, scoring)
DECODE_FRACTION = 0.312  # decode step, batch 16, cache 1024: 31.2% of the HBM roofline
DECODE_FRACTION_GOAL = 0.60  # issue 24's goal at batch 16 (70% at batch 1)

# ---- datasheets ---------------------------------------------------------------------------
H200 = dict(name="1 x H200", devices=1, flops=989e12, hbm=4.8e12, hbm_bytes=141e9, link=None)
H100x8 = dict(name="8 x H100", devices=8, flops=989e12, hbm=3.35e12, hbm_bytes=80e9, link=450e9)


@dataclasses.dataclass(frozen=True)
class Run:
    """configs/hh_rlhf.py's shapes and budgets."""

    pairs: int = 160_800  # Anthropic/hh-rlhf train: helpful-base, -online, -rejection, harmless
    sft_epochs: float = 2.0
    sft_batch: int = 32
    n: int = 16  # pairs per RM / MetaRM step
    m: int = 16  # meta prompts per MetaRM step
    k: int = 5  # samples per meta prompt
    rm_epochs: float = 1.0
    rounds: int = 4
    new_tokens: int = 256  # sampling.max_new_tokens
    prompt_tokens: int = 512  # data.max_prompt_length
    ppo_iterations: int = 200
    queries: int = 32
    rollouts: int = 16
    minibatch: int = 64


def decode_seconds(
    hw,
    rows_per_device: int,
    slots: int,
    weight_bytes: float,
    slot_bytes: float,
    fraction: float,
    fsdp_gather: bool,
) -> float:
    """One token step: the HBM roofline time of reading the weights and the cache of
    ``rows_per_device`` rows x ``slots``, divided by the fraction of the roofline reached; with
    FSDP the weights are also all-gathered every step (the sampler decodes on the training
    layout), which overlaps at best: the step is the longer of the two."""
    hbm = (weight_bytes + rows_per_device * slots * slot_bytes) / hw["hbm"] / fraction
    if not fsdp_gather or hw["devices"] == 1:
        return hbm
    gather = weight_bytes * (hw["devices"] - 1) / hw["devices"] / hw["link"]
    return max(hbm, gather)


def rows_that_fit(hw, weight_bytes, slots, slot_bytes, other_bytes) -> int:
    """Decode rows per device whose cache fits beside the weights (a power of two, <= 128)."""
    free = 0.85 * hw["hbm_bytes"] - weight_bytes - other_bytes
    rows = 128
    while rows > 1 and rows * slots * slot_bytes > free:
        rows //= 2
    return rows


def stages(hw, run: Run, fraction: float) -> list[tuple[str, float, str]]:
    """(stage, seconds, how) for the whole run on ``hw``."""
    from bench import compile_7b as C
    from metarm_jax.models import llama

    cfg = llama.preset("llama2_7b")
    d = hw["devices"]
    w_bf16 = 2.0 * cfg.num_params("lm")  # the decoding weights (bf16)
    slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # K and V, bf16, per slot
    # Train steps: the measured one-H200 time, divided by the devices (FSDP, the same MFU:
    # ASSUMED; docs/scaling.md's bounds put the 8 x H100 collectives under the compute time).
    rm_s = RM_STEP_S / d
    meta_s = META_STEP_S / d
    sft_flops = C.forward_flops(cfg, 32 * 512, 512, "lm") * 3
    sft_s = sft_flops / (hw["flops"] * TRAIN_MFU * d)
    ppo_s = C.model_flops("ppo", cfg, C.Shapes()) / (hw["flops"] * TRAIN_MFU * d)
    score_s = C.model_flops("score", cfg, C.Shapes()) / (hw["flops"] * TRAIN_MFU * d)

    sft_steps = run.pairs * run.sft_epochs / run.sft_batch
    rm_steps = run.pairs * run.rm_epochs / run.n
    slots = run.prompt_tokens + run.new_tokens
    # meta sampling: the k samples of every prompt one MetaRM epoch reads
    meta_rows = rm_steps * run.m * run.k
    rows = rows_that_fit(hw, w_bf16, slots, slot, 0.0)
    meta_s_total = (
        meta_rows
        / (rows * d)
        * run.new_tokens
        * decode_seconds(hw, rows, slots, w_bf16, slot, fraction, fsdp_gather=True)
    )
    # PPO roll-out: queries x rollouts rows, in chunks of what fits beside the PPO train state:
    # actor and critic with bf16 weights and Adam moments (6 x 13.5 GB, FSDP-sharded over d),
    # the frozen reference and RM offloaded to host memory meanwhile (ppo.offload_frozen). One
    # H200 holds no more (the config's fp32 master weights alone are 54 GB per model).
    ppo_rows = run.queries * run.rollouts
    rows_ppo = rows_that_fit(hw, w_bf16, slots, slot, 6 * w_bf16 / d)
    per_dev = min(rows_ppo, ppo_rows // d)
    gen_s = (
        (ppo_rows / (per_dev * d))
        * run.new_tokens
        * decode_seconds(hw, per_dev, slots, w_bf16, slot, fraction, fsdp_gather=True)
    )
    ppo_iter = gen_s + score_s + (ppo_rows / run.minibatch) * ppo_s
    out = [
        (
            "SFT (2 epochs, 32 x 512 per step)",
            sft_steps * sft_s,
            f"{sft_steps:,.0f} steps x {sft_s:.2f} s (FLOPs at the RM step's MFU)",
        ),
        ("vanilla RM r_0 (1 epoch)", rm_steps * rm_s, f"{rm_steps:,.0f} steps x {rm_s:.3f} s"),
    ]
    per_round = [
        (
            "meta sampling",
            meta_s_total,
            f"{meta_rows:,.0f} samples x {run.new_tokens} tokens, {rows} rows/device",
        ),
        ("MetaRM (1 epoch)", rm_steps * meta_s, f"{rm_steps:,.0f} steps x {meta_s:.3f} s"),
        (
            "PPO (200 iterations)",
            run.ppo_iterations * ppo_iter,
            f"per iteration: generation {gen_s:.1f} s ({per_dev} rows/device), scoring "
            f"{score_s:.1f} s, {ppo_rows // run.minibatch} updates x {ppo_s:.2f} s",
        ),
    ]
    for name, sec, how in per_round:
        out.append((f"{run.rounds} x {name}", run.rounds * sec, f"{run.rounds} x ({how})"))
    return out


def table(hw, fraction, label) -> str:
    rows = stages(hw, Run(), fraction)
    total = sum(s for _, s, _ in rows)
    lines = [
        f"**{hw['name']}**, decode at {fraction:.0%} of the HBM roofline ({label}):",
        "",
        "| stage | hours | how (arithmetic) |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {s / 3600:,.1f} | {h} |" for n, s, h in rows]
    lines.append(f"| **total** | **{total / 3600:,.1f}** ({total / 86400:.1f} days) | |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.parse_args(argv)
    for hw in (H200, H100x8):
        for fraction, label in (
            (DECODE_FRACTION, "measured before issue 24"),
            (DECODE_FRACTION_GOAL, "issue 24's goal"),
        ):
            print(table(hw, fraction, label) + "\n")


if __name__ == "__main__":
    main()
