"""The blind world's pre-registered gate, measured in a run (``report.json["gate"]``): does
MetaRM's premise hold in this world before any MetaRM number is read? ``gate`` computes the
verdict from the four values (pure); ``measure`` gathers them from a run (docs/synthetic.md, "The
blind world").

    r_0's accuracy on held-out coarse-saturated pairs   SATURATED_PAIRS pairs of fresh prompts
        (none of the validation or test prompts), both responses coarse-saturated
        (world.saturated_good_frac, the fine part over world.saturated_fine_frac), ordered by
        gold, ties dropped; drawn from ``default_rng([world.seed, STREAM])``
    r_0's spread ratio     its mean within-prompt |Δr| on the floor arm's (vanilla PPO's) final
        test samples over the same on π_SFT's test samples: the collapse of the paper's Figure 1
    vanilla over-optimises the controls' check (report.json ``controls.overoptimised``)
    oracle − eta0 at peak  paired over the test prompts, each arm at its round chosen on
        validation prompts

The gate is defined on the quickstart's arms ``oracle`` and ``eta0``; a run without them reports
the missing values as not measured, which fails the gate. It needs the synthetic world.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from metarm_jax.data import world_files
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import RunRecord

# The blind world's gate (docs/synthetic.md, "The blind world"; fixed on 2026-12-08, before any
# MetaRM number of that world was read): MetaRM's premise holds in a run's world when r_0 ranks
# coarse-saturated pairs rightly but weakly, its within-prompt spread collapses on the shifted
# policy's samples, vanilla PPO over-optimises, and a better RM (the oracle) can win.
GATE_ACCURACY = (0.58, 0.68)  # r_0's accuracy on held-out coarse-saturated pairs
GATE_SPREAD_RATIO = 0.5  # r_0's spread on the shifted policy's samples / on π_SFT's, at most
SATURATED_PAIRS = 1000
STREAM = 31  # the held-out saturated pairs' random stream, beside the world's own
ORACLE, ETA0 = "oracle", plan.NULL_ASCENT  # the gate's better RM; the method with η = 0


def saturated_accuracy(world, score_pairs, exclude: set[str]) -> float:
    """An RM's accuracy on held-out gold-ordered coarse-saturated pairs; ``score_pairs(prompts,
    [[chosen, rejected], ...])`` returns scores [n, 2]."""
    rng = np.random.default_rng([int(world.cfg.seed), STREAM])
    rows = world_files.saturated_pairs(world, rng, SATURATED_PAIRS, set(exclude))
    prompts, chosen, rejected = world_files.pair_texts(rows)
    s = np.asarray(score_pairs(prompts, [[c, r] for c, r in zip(chosen, rejected)]))
    return float(np.mean(s[:, 0] > s[:, 1]))


def measure(
    rec: RunRecord, test: dict, valid: dict, world, score, controls: dict, oracle_vs_eta0
) -> dict[str, Any]:
    """The gate of one run. ``score(rm_path, prompts, responses) -> (scores [n, k], mask)``;
    ``controls``: the report's controls (their ``overoptimised``); ``oracle_vs_eta0``: the
    oracle minus eta0 in test gold at each one's peak, paired over prompts (the report's own
    comparison of the two arms), or None when either arm did not run."""
    held = {world.render(world.parse(p, junk=False)) for p in [*test["sft"][0], *valid["sft"][0]]}
    acc = saturated_accuracy(world, lambda ps, ys: score(rec.rm0, ps, ys)[0], held)

    def spread(policy: str) -> float:  # r_0's within-prompt spread on a policy's test samples
        ps, resp = test[policy]
        return compute.within_prompt_spread(*score(rec.rm0, ps, resp))

    floor = rec.arms.get(plan.FLOOR)
    shifted = spread(floor.arm.policy(rec.rounds)) if floor is not None else None
    base = spread("sft") if floor is not None else None
    return gate(acc, shifted, base, controls.get("overoptimised"), oracle_vs_eta0)


def gate(
    r0_saturated_accuracy: float | None,
    spread_shifted: float | None,
    spread_base: float | None,
    over: Mapping[str, Any] | None,
    oracle_minus_eta0_peak: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The gate's four checks and ``passed`` (all four; a value not measured fails its check):
    r_0's accuracy on held-out coarse-saturated pairs in GATE_ACCURACY; r_0's within-prompt
    spread on the shifted policy's samples over its spread on π_SFT's at most GATE_SPREAD_RATIO;
    vanilla PPO over-optimises (``overoptimised``); the oracle beats eta0 at each one's peak (the
    round chosen on validation) with a 95% interval above 0."""
    lo, hi = GATE_ACCURACY
    acc = r0_saturated_accuracy
    ratio = None
    if spread_shifted is not None and spread_base:
        ratio = float(spread_shifted / spread_base)
    out = {
        "r0_saturated_accuracy": {
            "value": acc,
            "range": [lo, hi],
            "passed": acc is not None and lo <= acc <= hi,
        },
        "r0_spread_ratio": {
            "value": ratio,
            "shifted": spread_shifted,
            "base": spread_base,
            "max": GATE_SPREAD_RATIO,
            "passed": ratio is not None and ratio <= GATE_SPREAD_RATIO,
        },
        "vanilla_overoptimises": {
            "value": None if over is None else over["drop"],
            "ci": None if over is None else over["drop_ci"],
            "threshold": compute.OVEROPTIMISED_DROP,
            "passed": bool(over is not None and over["drop"] >= compute.OVEROPTIMISED_DROP),
        },
        "oracle_minus_eta0_peak": {
            "value": None if oracle_minus_eta0_peak is None else oracle_minus_eta0_peak["diff"],
            "ci": None if oracle_minus_eta0_peak is None else oracle_minus_eta0_peak["ci"],
            "passed": bool(
                oracle_minus_eta0_peak is not None and oracle_minus_eta0_peak["ci"][0] > 0
            ),
        },
    }
    out["passed"] = all(v["passed"] for v in out.values())
    return out
