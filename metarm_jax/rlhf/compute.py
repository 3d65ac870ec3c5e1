"""The report's numbers, as pure functions of loaded data (no files, no models, no judges): each
is unit-tested on small hand-made inputs (tests/test_report_compute.py).

Every interval is a percentile bootstrap over prompts (paired where two policies are compared on
the same prompts), or a t interval over seeds (``metarm_jax/rlhf/seeds.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metarm_jax.core import stats
from metarm_jax.eval.judges import JudgeResult
from metarm_jax.rlhf.plan import CONTINUOUS, ROUNDS, SINGLE, RunRecord

CLIP_FLAG = 0.10  # an arm whose PPO scores are clipped more often than this is flagged
CLIP_KEY = "rollout/reward_clip_frac"  # written by metarm_jax/train/rollout.py
GEOMETRY_KEYS = (  # the MetaRM step's geometry: core/metarm.py and the train loop write them
    "meta/ascent_norm",
    "update_norm",
    "meta/ascent_to_update",
    "meta/cos_gradJ_grad",
    "meta/J",
    "meta/J_prime",
)


def comparison(res: JudgeResult, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """win / tie / lose of A vs B with paired-bootstrap 95% intervals over prompts."""
    o = np.asarray(res.outcomes, np.float64)
    out = {
        "win": res.win,
        "tie": res.tie,
        "lose": res.lose,
        "n": res.n,
        "win_rate": res.win_rate,
        "lose_rate": res.lose_rate,
        "net": (res.win - res.lose) / res.n if res.n else 0.0,
    }
    out["win_ci"] = stats.bootstrap_ci(o > 0, n_resamples=n_boot, seed=seed)
    out["lose_ci"] = stats.bootstrap_ci(o < 0, n_resamples=n_boot, seed=seed)
    out["net_ci"] = stats.bootstrap_ci(o, n_resamples=n_boot, seed=seed)
    return out


def mean_ci(values: np.ndarray, n_boot: int) -> dict[str, Any]:
    lo, hi = stats.bootstrap_ci(values, n_resamples=n_boot)
    return {"mean": float(np.mean(values)), "ci": (lo, hi)}


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int) -> dict[str, Any]:
    """mean(a - b) over the same prompts, with its bootstrap interval."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return {"diff": float(d.mean()), "ci": stats.bootstrap_ci(d, n_resamples=n_boot)}


def select_best(valid: Mapping[str, Mapping]) -> str:
    """The best round: highest net win rate (win - lose) against SFT on the validation prompts;
    a tie goes to the earlier round (fewer PPO iterations)."""
    return max(valid, key=lambda k: (valid[k]["net"], -int(k.removeprefix("round"))))


def excludes_zero(ci) -> bool:
    return bool(np.isfinite(ci[0]) and (ci[0] > 0 or ci[1] < 0))


def rm_agreement(
    scores: np.ndarray, reference: np.ndarray, mask: np.ndarray, n_boot: int
) -> dict[str, Any]:
    """An RM's within-prompt ranking against a reference (gold or an independent RM): pairwise
    accuracy over the pairs whose reference differs, and Kendall τ; mean over prompts with 95%
    intervals over prompts. ``scores``/``reference``/``mask`` are [prompts, k]."""
    acc, tau = stats.ranking_agreement(scores, reference, mask)
    return {
        "accuracy": float(np.nanmean(acc)),
        "accuracy_ci": stats.bootstrap_ci(acc, n_resamples=n_boot),
        "tau": float(np.nanmean(tau)),
        "tau_ci": stats.bootstrap_ci(tau, n_resamples=n_boot),
    }


def pair_variance(scores: np.ndarray) -> float:
    """Figure 1 as the paper draws it: the variance over prompts of r(x, y1) - r(x, y2)."""
    return float(np.var(scores[:, 0] - scores[:, 1]))


def normalised_differences(scores: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Figure 5: |Δr| within prompts, raw and divided by the spread of the RM's scores."""
    raw = stats.abs_differences(scores, mask)
    spread = float(np.std(scores[mask.astype(bool)])) or 1.0
    return {"raw": raw, "normalised": raw / spread}


def length_stats(counts: Sequence[int]) -> dict[str, float]:
    n = np.asarray(counts)
    q = np.percentile(n, [10, 50, 90]) if len(n) else [0, 0, 0]
    return {"mean": float(n.mean()), "p10": float(q[0]), "median": float(q[1]), "p90": float(q[2])}


def clip_fraction(rows: list[dict]) -> dict[str, Any]:
    """The mean fraction of PPO scores the reward clip cut, flagged above CLIP_FLAG."""
    f = [r[CLIP_KEY] for r in rows if CLIP_KEY in r]
    return {"mean": float(np.mean(f)) if f else 0.0, "flag": bool(f and np.mean(f) > CLIP_FLAG)}


def geometry(rows: list[dict]) -> dict[str, float]:
    """Means over a MetaRM stage's steps of the meta step's geometry (‖θ′ − θ‖, the update, ...)."""
    out = {}
    for key in GEOMETRY_KEYS:
        v = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if v:
            out[key] = float(np.mean(v))
    return out


def budgets(rec: RunRecord) -> dict[str, dict[str, int]]:
    """Every arm's RM steps (r_0's included where the arm's reward descends from it) and PPO
    iterations."""
    out = {}
    for name, run in rec.arms.items():
        schedule = run.arm.schedule
        if schedule == ROUNDS:
            out[name] = {
                "rm_steps": rec.rm0_steps + sum(x.rm_steps for x in run.rounds),
                "ppo_iterations": sum(x.ppo_iterations for x in run.rounds),
            }
        elif schedule == CONTINUOUS:
            out[name] = {
                "rm_steps": rec.rm0_steps,
                "ppo_iterations": rec.ppo_iterations * rec.rounds,
            }
        elif schedule == SINGLE:
            out[name] = {"rm_steps": 0, "ppo_iterations": 0, f"{name}_steps": run.steps}
    return out


def summary(res: dict) -> dict[str, Any]:
    """The numbers the stage returns (and the seed aggregation averages)."""
    return {
        "best_round": res["best_round"],
        "table1": {k: [v["win"], v["tie"], v["lose"]] for k, v in res["table1"].items()},
        "table2": {k: [v["win"], v["tie"], v["lose"]] for k, v in res["table2"].items()},
        "net": {k: v["net"] for k, v in res["table2"].items()},
        "gold": {k: v["mean"] for k, v in res["gold"].items()},
        "gold_diff": {k: v["diff"] for k, v in res["gold_diff"].items()},
        "fig5": res["fig5"],
        "rm_accuracy": {
            r: {s: {k: v["accuracy"] for k, v in row.items()} for s, row in t.items()}
            for r, t in res["rm_metrics"].get("rounds", {}).items()
        },
    }
