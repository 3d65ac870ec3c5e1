"""The report's statistics: bootstrap and t intervals cover a known value at about their level,
ranking agreement against hand-computed values and scipy, and the validation-only selection."""

import numpy as np
import pytest
import scipy.stats

from metarm_jax.core import stats
from metarm_jax.rlhf import compute, seeds


def test_bootstrap_interval_covers_a_known_rate_at_about_95_percent():
    """400 simulated experiments of 100 prompts with a true win rate of 0.3."""
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(400):
        x = (rng.random(100) < 0.3).astype(np.float64)
        lo, hi = stats.bootstrap_ci(x, n_resamples=500, seed=i)
        hits += lo <= 0.3 <= hi
    # a percentile interval on n = 100 covers a little under its level; binomial noise of 400
    # experiments is ±2.2 points (2 sd)
    assert 0.90 <= hits / 400 <= 0.98, hits / 400


def test_paired_bootstrap_of_a_difference_covers_the_true_difference():
    """Two policies scored on the same prompts, each prompt with its own difficulty: the paired
    interval of the mean difference covers the true 0.1 about 95% of the time and is much
    narrower than the spread of either score."""
    rng = np.random.default_rng(1)
    hits, widths = 0, []
    for i in range(300):
        difficulty = rng.normal(0, 1.0, 80)
        a = difficulty + 0.1 + rng.normal(0, 0.2, 80)
        b = difficulty + rng.normal(0, 0.2, 80)
        lo, hi = stats.bootstrap_ci(a - b, n_resamples=500, seed=i)
        hits += lo <= 0.1 <= hi
        widths.append(hi - lo)
    assert 0.90 <= hits / 300 <= 0.98, hits / 300
    assert np.mean(widths) < 0.2  # the shared difficulty cancels in the paired difference


def test_t_interval_covers_the_mean_over_seeds():
    rng = np.random.default_rng(2)
    hits = sum(
        (lambda lo_hi: lo_hi[0] <= 1.0 <= lo_hi[1])(stats.t_interval(rng.normal(1.0, 0.3, 5)))
        for _ in range(1000)
    )
    assert 0.93 <= hits / 1000 <= 0.97  # exact for normal data


def test_bootstrap_edge_cases():
    assert stats.bootstrap_ci(np.ones(10), n_resamples=2000) == (1.0, 1.0)  # no spread
    lo, hi = stats.bootstrap_ci(np.array([np.nan, 1.0]), n_resamples=2000)  # one usable row
    assert np.isnan(lo) and np.isnan(hi)
    lo, hi = stats.bootstrap_ci(
        np.array([0.0, 1.0, np.nan, 1.0, 0.0, 1.0]), n_resamples=2000, seed=3
    )
    assert 0.0 <= lo <= 0.6 <= hi <= 1.0  # the NaN row is dropped: mean of the rest is 0.6


def test_ranking_agreement_by_hand_and_against_scipy():
    gold = np.array([[1.0, 2.0, 3.0, 3.0], [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]])
    scores = np.array([[0.1, 0.3, 0.2, 0.9], [3.0, 2.0, 1.0, 0.0], [0.5, 0.1, 0.2, 0.3]])
    acc, tau = stats.ranking_agreement(scores, gold)
    # prompt 0: the 5 pairs whose gold differs: (0,1) ok, (0,2) ok, (0,3) ok, (1,2) wrong,
    # (1,3) ok; the tied gold pair (2,3) does not count
    assert acc[0] == pytest.approx(4 / 5)
    assert acc[1] == 0.0 and np.isnan(acc[2])  # fully reversed; no pair to rank
    assert tau[0] == pytest.approx(scipy.stats.kendalltau(scores[0], gold[0]).statistic)
    assert tau[1] == pytest.approx(-1.0) and np.isnan(tau[2])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    acc, _ = stats.ranking_agreement(scores, gold, mask)
    assert acc[0] == pytest.approx(2 / 3) and acc[1] == 0.0  # the padding sample is left out


def test_select_best_reads_only_the_validation_table():
    valid = {"round1": {"net": 0.10}, "round2": {"net": 0.25}, "round3": {"net": 0.25}}
    assert compute.select_best(valid) == "round2"  # a tie goes to the earlier round
    assert compute.select_best({"round1": {"net": -0.5}}) == "round1"


def test_seed_aggregation_lines_up_baselines_and_pairs_rounds(tmp_path):
    """Seeds whose best rounds differ: their baselines are aggregated by role ("eta0 (same
    round)"), MetaRM minus each control after the same budget is paired within a seed, and the
    t interval is scipy's."""
    gold = [
        {"round1": 1.0, "round2": 1.2, "eta0_round1": 0.9, "eta0_round2": 1.25, "vanilla_ppo@2": 1.1},
        {"round1": 1.1, "round2": 1.0, "eta0_round1": 1.0, "eta0_round2": 1.05, "vanilla_ppo@2": 1.0},
        {"round1": 0.8, "round2": 1.3, "eta0_round1": 0.9, "eta0_round2": 1.2, "vanilla_ppo@2": 1.3},
    ]  # fmt: skip
    best = ["round2", "round1", "round2"]
    per_seed = [
        {"rlhf": {
            "best_round": b,
            "net": {f"eta0 (round {b[-1]})": 0.1 * i, f"vanilla PPO (round {b[-1]} budget)": 0.0},
            "gold": g,
        }}
        for i, (b, g) in enumerate(zip(best, gold))
    ]  # fmt: skip
    text = seeds.aggregate_seeds(str(tmp_path), per_seed)
    rows = {r.split(" | ")[0].lstrip("| "): r for r in text.splitlines() if r.startswith("| ")}
    assert "net.eta0 (same round)" in rows and "net.vanilla PPO (same budget)" in rows
    assert not any("(round " in k for k in rows)
    d = np.array([g["round2"] - g["eta0_round2"] for g in gold])  # -0.05, -0.05, 0.1
    row = rows["paired_gold.round2 - eta0_round2"].split(" | ")
    lo, hi = scipy.stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=scipy.stats.sem(d))
    assert float(row[1]) == pytest.approx(d.mean(), abs=1e-4)
    assert row[3] == f"[{lo:.4g}, {hi:.4g}]"
    assert "paired_gold.round1 - vanilla_ppo@1" not in rows  # no such control in the seeds
    assert (tmp_path / "seeds.md").read_text().strip() == text.strip()
