"""The blind world's pre-registered gate, measured in a run (``report.json["gate"]``): does
MetaRM's premise hold in this world before any MetaRM number is read? The numbers are
``compute.gate``'s; this module gathers what it reads (docs/synthetic.md, "The blind world").

    r_0's accuracy on held-out coarse-saturated pairs   SATURATED_PAIRS pairs of fresh prompts
        (none of the validation or test prompts), both responses coarse-saturated
        (world.saturated_good_frac, the fine part over world.saturated_fine_frac), ordered by
        gold, ties dropped; drawn from ``default_rng([world.seed, STREAM])``
    r_0's spread ratio     its mean within-prompt |Δr| on the floor arm's (vanilla PPO's) final
        test samples over the same on π_SFT's test samples: the collapse of the paper's Figure 1
    vanilla over-optimises the controls' check (report.json ``controls.overoptimised``)
    oracle − eta0 at peak  paired over the test prompts, each arm at its round chosen on
        validation prompts

The gate is defined on the quickstart's arms ``oracle`` and ``eta0``; a run without them (or
without the synthetic world) reports the missing values as not measured, which fails the gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from metarm_jax.data import world_files
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import RunRecord

SATURATED_PAIRS = 1000
STREAM = 31  # the held-out saturated pairs' random stream, beside the world's own
ORACLE, ETA0 = "oracle", "eta0"  # the gate's better RM and the method's η = 0 control


def saturated_accuracy(world, score_pairs, exclude: set[str]) -> float:
    """An RM's accuracy on held-out gold-ordered coarse-saturated pairs; ``score_pairs(prompts,
    [[chosen, rejected], ...])`` returns scores [n, 2]."""
    rng = np.random.default_rng([int(world.cfg.seed), STREAM])
    rows = world_files.saturated_pairs(world, rng, SATURATED_PAIRS, set(exclude))
    prompts, chosen, rejected = world_files.pair_texts(rows)
    s = np.asarray(score_pairs(prompts, [[c, r] for c, r in zip(chosen, rejected)]))
    return float(np.mean(s[:, 0] > s[:, 1]))


def _gold_by_round(world, rec: RunRecord, run, test, valid) -> tuple[dict, dict]:
    """Per-prompt test gold (mean over the k samples) and mean validation gold of each round's
    policy of one arm, round 0 being π_SFT."""
    names = {0: "sft", **{r: run.arm.policy(r) for r in range(1, rec.rounds + 1)}}
    test_gold, valid_gold = {}, {}
    for r, name in names.items():
        ps, resp = test[name]
        test_gold[r] = np.asarray([np.mean(world.gold([p] * len(y), y)) for p, y in zip(ps, resp)])
        vps, vresp = valid[name]
        valid_gold[r] = float(np.mean(world.gold(vps, [y[0] for y in vresp])))
    return test_gold, valid_gold


def measure(
    rec: RunRecord,
    test: dict,
    valid: dict,
    world,
    score,
    controls: dict[str, Any],
    n_boot: int,
) -> dict[str, Any]:
    """The gate of one run. ``score(rm_path, prompts, responses) -> (scores [n, k], mask)``;
    ``controls``: the report's controls (their ``overoptimised``)."""
    if world is None:
        return {"note": "needs the synthetic world's gold reward", "passed": False}
    held = {world.render(world.parse(p, junk=False)) for p in [*test["sft"][0], *valid["sft"][0]]}
    acc = saturated_accuracy(world, lambda ps, ys: score(rec.rm0, ps, ys)[0], held)
    floor = rec.arms.get(plan.FLOOR)
    shifted = base = None
    if floor is not None:
        for policy, slot in ((floor.arm.policy(rec.rounds), "shifted"), ("sft", "base")):
            ps, resp = test[policy]
            s, mask = score(rec.rm0, ps, resp)
            value = compute.within_prompt_spread(s, mask)
            shifted, base = (value, base) if slot == "shifted" else (shifted, value)
    diff = None
    if ORACLE in rec.arms and ETA0 in rec.arms:
        o_test, o_valid = _gold_by_round(world, rec, rec.arms[ORACLE], test, valid)
        e_test, e_valid = _gold_by_round(world, rec, rec.arms[ETA0], test, valid)
        diff = compute.control_difference(o_test, o_valid, e_test, e_valid, n_boot)["peak"]
    return compute.gate(acc, shifted, base, controls.get("overoptimised"), diff)
