"""The report's numbers without a run: every function of metarm_jax/rlhf/compute.py on small
hand-made inputs whose answers are computed by hand here (or by numpy/scipy independently)."""

import numpy as np
import pytest

from metarm_jax.eval.judges import JudgeResult
from metarm_jax.rlhf import compute, plan
from metarm_jax.rlhf.plan import ArmRun, Round, RunRecord


def test_comparison_counts_and_its_interval_holds_the_estimate():
    res = JudgeResult(3, 1, 1, outcomes=np.array([1, 1, 1, 0, -1]))
    c = compute.comparison(res, n_boot=200)
    assert (c["win"], c["tie"], c["lose"], c["n"]) == (3, 1, 1, 5)
    assert c["net"] == pytest.approx(0.4) and c["win_rate"] == pytest.approx(0.6)
    assert c["net_ci"][0] <= 0.4 <= c["net_ci"][1]


def test_paired_difference_and_mean_ci():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 2.0, 2.0, 3.5])
    d = compute.paired_difference(a, b, n_boot=200)
    assert d["diff"] == pytest.approx(0.5)
    assert d["ci"][0] <= 0.5 <= d["ci"][1]
    assert compute.mean_ci(a, 200)["mean"] == pytest.approx(2.5)


def test_select_best_and_peak_round_break_ties_towards_the_earlier_round():
    assert compute.select_best({"round1": {"net": 0.1}, "round2": {"net": 0.1}}) == "round1"
    assert compute.peak_round({0: 1.0, 1: 1.2, 2: 1.2, 3: 0.9}) == 1


def test_clip_fraction_geometry_and_lengths():
    rows = [{compute.CLIP_KEY: 0.05}, {compute.CLIP_KEY: 0.25}, {"other": 1.0}]
    assert compute.clip_fraction(rows) == {"mean": pytest.approx(0.15), "flag": True}
    assert compute.clip_fraction([]) == {"mean": 0.0, "flag": False}
    g = compute.geometry([{"meta/ascent_norm": 1.0, "update_norm": 2.0}, {"meta/ascent_norm": 3.0}])
    assert g == {"meta/ascent_norm": 2.0, "update_norm": 2.0}
    s = compute.length_stats([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert s["mean"] == 5.5 and s["median"] == 5.5
    assert s["p10"] == pytest.approx(np.percentile(np.arange(1, 11), 10))


def test_pair_variance_and_normalised_differences():
    scores = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
    assert compute.pair_variance(scores) == pytest.approx(np.var([1.0, 0.0, 1.0]))
    out = compute.normalised_differences(scores, np.ones_like(scores))
    np.testing.assert_allclose(out["raw"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(out["normalised"], out["raw"] / np.std(scores))


def test_rm_agreement_on_a_hand_ranked_prompt():
    ref = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])  # right on prompt 0, reversed on 1
    out = compute.rm_agreement(scores, ref, np.ones_like(ref), n_boot=100)
    assert out["accuracy"] == pytest.approx(0.5) and out["tau"] == pytest.approx(0.0)


def _record():
    a = {n: plan.BY_NAME[n] for n in ("metarm", "eta0", "vanilla_ppo", "dpo")}
    rounds = [Round(r, f"p{r}", f"rm{r}", "m", "x", 10, "y", 3) for r in (1, 2)]
    arms = {
        "metarm": ArmRun(a["metarm"], rounds=rounds),
        "eta0": ArmRun(a["eta0"], rounds=rounds),
        "vanilla_ppo": ArmRun(a["vanilla_ppo"], at_round={1: "v1", 2: "v2"}, final="v2"),
        "dpo": ArmRun(a["dpo"], final="d", steps=7),
    }
    return RunRecord("sft", "rm0", 5, "", 3, 2, arms)


def test_budgets_count_each_arms_rm_steps_and_ppo_iterations():
    b = compute.budgets(_record())
    one = {"rm_forwards_per_rollout": 1}
    assert b["metarm"] == {"rm_steps": 5 + 20, "ppo_iterations": 6, **one} == b["eta0"]
    assert b["vanilla_ppo"] == {"rm_steps": 5, "ppo_iterations": 6, **one}
    assert b["dpo"] == {
        "rm_steps": 0, "ppo_iterations": 0, "rm_forwards_per_rollout": 0, "dpo_steps": 7
    }  # fmt: skip


def test_the_plan_names_every_policy_once():
    rec = _record()
    assert list(rec.policies()) == [
        "sft", "round1", "round2", "eta0_round1", "eta0_round2", "vanilla_ppo@1",
        "vanilla_ppo@2", "dpo",
    ]  # fmt: skip
    assert plan.BY_NAME["vanilla_ppo"].opponents(1, 2) == {
        "vanilla PPO (round 1 budget)": "vanilla_ppo@1",
        "vanilla PPO (full budget, round 2)": "vanilla_ppo@2",
    }
    assert plan.BY_NAME["eta0"].opponents(2, 2) == {"eta0 (round 2)": "eta0_round2"}


def test_peak_and_final_read_the_peak_on_validation_and_report_it_on_test():
    valid = {0: 1.0, 1: 1.5, 2: 1.2}
    test = {0: np.array([1.0, 1.0]), 1: np.array([1.4, 1.6]), 2: np.array([1.0, 1.2])}
    pf = compute.peak_and_final(valid, test, n_boot=100)
    assert pf["peak_round"] == 1 and pf["peak"]["mean"] == pytest.approx(1.5)
    assert pf["final_round"] == 2 and pf["final"]["mean"] == pytest.approx(1.1)
    assert pf["drop"]["diff"] == pytest.approx(0.4)
    over = compute.overoptimised(pf)
    assert over["passed"] and over["drop"] == pytest.approx(0.4)
    assert not compute.overoptimised(pf, drop=0.5)["passed"]


def test_controls_discriminate_only_when_every_check_passes():
    v_test = {0: np.zeros(4), 1: np.full(4, 1.0), 2: np.full(4, 0.5)}
    v_valid = {0: 0.0, 1: 1.0, 2: 0.5}
    over = compute.overoptimised(compute.peak_and_final(v_valid, v_test, 100))
    up = {0: np.zeros(4), 1: np.full(4, 1.0), 2: np.array([1.1, 1.3, 1.2, 1.4])}
    good = compute.control_difference(up, {0: 0, 1: 1, 2: 1.2}, v_test, v_valid, 100)
    assert good["diff"] == pytest.approx(1.25 - 0.5) and good["passed"]
    assert good["peak"]["diff"] == pytest.approx(1.25 - 1.0)
    flat = compute.control_difference(v_test, v_valid, v_test, v_valid, 100)
    assert not flat["passed"]  # equal to vanilla: an interval of [0, 0] does not exclude 0
    assert compute.controls(over, {"ceiling": good, "oracle": good})["discriminates"]
    assert not compute.controls(over, {"ceiling": good, "oracle": flat})["discriminates"]
    assert not compute.controls(over, {"ceiling": good})["discriminates"]  # oracle missing


def test_gao_fit_recovers_the_coefficients_of_its_own_form():
    d = np.array([0.0, 0.5, 1.0, 2.0, 3.0])
    alpha, beta = 0.8, 0.3
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = np.where(d > 0, d * (alpha - beta * np.log(d)), 0.0)
    fit = compute.gao_fit(d, 1.0 + gain)  # gold at d = 0 is the baseline
    assert fit["alpha"] == pytest.approx(alpha) and fit["beta"] == pytest.approx(beta)
    assert fit["points"] == 4
    assert np.isnan(compute.gao_fit([0.0, 1.0], [1.0, 1.5])["beta"])


def test_curve_point_clips_a_negative_kl_estimate():
    p = compute.curve_point(2, 60, np.array([-0.1, 0.05]), [1.0, 2.0], [0.5])
    assert p["sqrt_kl"] == 0.0 and p["gold"] == 1.5 and p["proxy"] == 0.5
    assert compute.curve_point(1, 30, np.array([0.25]), [1.0], None)["sqrt_kl"] == 0.5


def _seed_report(shift: float) -> dict:
    """A seed's experiment keys: vanilla drops 0.4 from peak to final, the ceiling and the oracle
    end 0.5 and 0.3 above it, the method ends ``shift`` above eta0."""

    def pf(peak, final, r_peak=1):
        return {"peak_round": r_peak, "peak": {"mean": peak}, "final": {"mean": final},
                "drop": {"diff": peak - final}}  # fmt: skip

    def curve(g):
        return [{"round": r, "iteration": 30 * r, "sqrt_kl": float(r), "gold": g + 0.1 * r,
                 "proxy": 0.5 * r} for r in (0, 1, 2)]  # fmt: skip

    return {
        "peak_final": {
            "metarm": pf(1.3, 1.1 + shift),
            "eta0": pf(1.3, 1.1),
            "oracle": pf(1.2, 1.0, 2),
            "ceiling": pf(1.4, 1.2, 2),
            "vanilla_ppo": pf(1.1, 0.7),
        },
        "curves": {a: curve(1.0 + shift) for a in ("metarm", "vanilla_ppo")},
        "rm_on_policy_accuracy": {"metarm": {"round1": 0.6, "round2": 0.7}},
        "budget": {
            "metarm": {"rm_steps": 30, "ppo_iterations": 6, "rm_forwards_per_rollout": 1},
            "vanilla_ppo": {"rm_steps": 10, "ppo_iterations": 6, "rm_forwards_per_rollout": 1},
        },
        "rm_metrics": {
            "rounds": {
                f"round{r}": {
                    "probe (SFT samples)": {"r0": {"accuracy": 0.9}},
                    compute.SHIFTED: {
                        "r0": {"accuracy": 0.55},
                        f"metarm_r{r}": {"accuracy": 0.6 + 0.1 * r + shift},
                        f"metarm2_r{r}": {"accuracy": 0.5},
                    },
                }
                for r in (1, 2)
            }
        },
    }


def test_study_over_seeds_against_hand_computed_t_intervals():
    import scipy.stats

    shifts = [0.1, 0.2, 0.3]
    res = compute.study([_seed_report(s) for s in shifts])
    d = res["differences"]["metarm − eta0"]["final"]
    assert d["mean"] == pytest.approx(0.2) and d["values"] == pytest.approx(shifts)
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=0.2, scale=scipy.stats.sem(shifts))
    assert d["ci"] == pytest.approx((lo, hi))
    c = res["controls"]
    assert c["overoptimised"]["mean"] == pytest.approx(0.4) and c["overoptimised"]["passed"]
    assert c["ceiling_minus_vanilla"]["mean"] == pytest.approx(0.5)
    # every seed's difference is the same: a zero-width interval, not above 0 by rounding alone
    assert c["oracle_minus_vanilla"]["mean"] == pytest.approx(0.3)
    assert res["arms"]["metarm"]["rm_on_policy_final"]["mean"] == pytest.approx(0.7)
    assert res["arms"]["metarm"]["rm_on_policy_mean"]["mean"] == pytest.approx(0.65)
    assert res["arms"]["oracle"]["peak_rounds"] == [2, 2, 2]
    # held-out shifted pairs: the last round's RM of each arm, r_0 once (the same RM every round)
    got = compute.shifted_accuracy(_seed_report(0.1)["rm_metrics"])
    assert {a: {r: round(v, 9) for r, v in x.items()} for a, x in got.items()} == {
        "r0": {"round1": 0.55, "round2": 0.55},
        "metarm": {"round1": 0.8, "round2": 0.9},
        "metarm2": {"round1": 0.5, "round2": 0.5},
    }
    assert res["arms"]["metarm"]["rm_shifted_final"]["mean"] == pytest.approx(0.8 + 0.2)
    assert "rm_shifted_final" not in res["arms"]["eta0"]  # no RM of its own in these reports
    assert res["rm0_shifted"]["values"] == pytest.approx([0.55] * 3)
    # each arm's compute from its reports' budget; the ranking; what the intervals resolve
    assert res["arms"]["metarm"]["compute"] == {
        "rm_steps": 30, "ppo_iterations": 6, "rm_forwards_per_rollout": 1,
    }  # fmt: skip
    assert "compute" not in res["arms"]["eta0"]  # no budget in these reports
    # final: metarm 1.1 + 0.2, ceiling 1.2, eta0 1.1, oracle 1.0, vanilla 0.7
    assert res["ranking"]["final"] == ["metarm", "ceiling", "eta0", "oracle", "vanilla_ppo"]
    assert res["ranking"]["peak"] == ["ceiling", "metarm", "eta0", "oracle", "vanilla_ppo"]
    resolved = {(d["difference"], d["what"]) for d in res["resolved"]}
    # metarm − vanilla: 0.5, 0.6, 0.7 (t interval 0.6 ± 0.248): resolved; metarm − eta0 (0.2 ±
    # 0.248) and the peaks' zero differences are not
    assert ("metarm − vanilla_ppo", "final") in resolved
    assert ("metarm − eta0", "final") not in resolved
    assert ("metarm − eta0", "peak") not in resolved
    curves = compute.mean_curves([_seed_report(s) for s in shifts])
    assert set(curves) == {"metarm", "vanilla_ppo"}
    assert curves["metarm"][2]["gold"] == pytest.approx(1.2 + 0.2)  # mean of 1 + s + 0.2
    with pytest.raises(ValueError, match="peak_final"):
        compute.study([{"gold": {}}])


def test_within_prompt_spread_is_the_mean_absolute_difference_of_real_pairs():
    scores = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 9.0]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    # prompt 0: |1-3|, |1-0|, |3-0| = 2, 1, 3; prompt 1: |2-2| = 0 (the third is padding)
    assert compute.within_prompt_spread(scores, mask) == pytest.approx(6 / 4)


def test_the_gate_passes_only_when_all_four_checks_pass():
    from metarm_jax.rlhf import gate

    over = {"drop": 0.31, "drop_ci": [0.2, 0.4], "passed": True}
    better = {"diff": 0.12, "ci": [0.03, 0.2]}
    g = gate.gate(0.63, 0.4, 1.0, over, better)
    assert g["passed"] and g["r0_spread_ratio"]["value"] == pytest.approx(0.4)
    assert g["r0_saturated_accuracy"]["range"] == [0.58, 0.68]
    fails = {
        "r0_saturated_accuracy": gate.gate(0.70, 0.4, 1.0, over, better),  # too strong
        "r0_spread_ratio": gate.gate(0.60, 0.51, 1.0, over, better),  # no collapse
        "vanilla_overoptimises": gate.gate(
            0.60, 0.4, 1.0, {"drop": 0.19, "drop_ci": [0, 1], "passed": False}, better
        ),
        "oracle_minus_eta0_peak": gate.gate(
            0.60, 0.4, 1.0, over, {"diff": 0.1, "ci": [-0.01, 0.2]}
        ),
    }
    for key, g in fails.items():
        assert not g["passed"] and not g[key]["passed"], key
        assert all(v["passed"] for k, v in g.items() if k not in (key, "passed")), key
    missing = gate.gate(None, None, None, None, None)
    assert not missing["passed"] and missing["r0_spread_ratio"]["value"] is None
    assert gate.gate(0.58, 0.5, 1.0, over, better)["passed"]  # the bounds are inclusive


def test_the_gates_saturated_accuracy_reads_gold_ordered_held_out_pairs():
    """A scorer that returns the gold reward ranks every pair rightly, its negation none; the
    pairs are drawn on prompts outside the held-out set and repeat for one world seed."""
    from metarm_jax.config import defaults
    from metarm_jax.data import synthetic
    from metarm_jax.rlhf import gate

    c = defaults.world()
    c.fine_size, c.w_fine = 4, 0.7
    world = synthetic.World(c)

    def gold(sign):
        return lambda ps, ys: (
            sign * np.asarray([world.gold([p, p], [a, b]) for p, (a, b) in zip(ps, ys)])
        )

    assert gate.saturated_accuracy(world, gold(1.0), set()) == 1.0
    assert gate.saturated_accuracy(world, gold(-1.0), set()) == 0.0
    seen = []
    gate.saturated_accuracy(world, lambda ps, ys: seen.extend(ps) or np.zeros((len(ps), 2)), set())
    held = {world.render(world.parse(p, junk=False)) for p in seen[:50]}
    again = []
    gate.saturated_accuracy(world, lambda ps, ys: again.extend(ps) or np.zeros((len(ps), 2)), held)
    assert not held & {world.render(world.parse(p, junk=False)) for p in again}
    assert len(seen) > 900  # ties are rare: about SATURATED_PAIRS pairs


def test_ascent_effect_compares_each_round_with_eta0_on_the_arms_own_samples():
    def row(acc, spread):
        return {"accuracy": acc, "spread_normalised": spread}

    rm_metrics = {
        "rounds": {
            "round1": {
                "metarm round 1 samples": {"metarm_r1": row(0.60, 0.9), "eta0_r1": row(0.55, 1.0)}
            },
            "round2": {
                "metarm round 2 samples": {"metarm_r2": row(0.50, 1.2), "eta0_r2": row(0.52, 0.8)}
            },
        }
    }
    e = compute.ascent_effect(rm_metrics, "metarm", "eta0")
    assert [r["round"] for r in e["rounds"]] == [1, 2]
    assert e["accuracy"] == pytest.approx((0.05 - 0.02) / 2)
    assert e["spread_normalised"] == pytest.approx((-0.1 + 0.4) / 2)
    assert e["rounds_accuracy_up"] == 1 and e["verdict"] == "raised accuracy and spread"
    rm_metrics["rounds"]["round1"]["metarm round 1 samples"]["metarm_r1"] = row(0.50, 0.9)
    assert compute.ascent_effect(rm_metrics, "metarm", "eta0")["verdict"] == (
        "raised only spread, not accuracy"
    )
    assert compute.ascent_effect(rm_metrics, "metarm2", "eta0") is None
