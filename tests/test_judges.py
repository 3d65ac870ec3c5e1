"""Judges: win / tie / lose against an opponent on the same prompts, with a tie margin."""

import numpy as np
import pytest

from metarm_jax.data.synthetic import World
from metarm_jax.eval import GoldJudge, JudgeResult, RewardModelJudge


@pytest.fixture(scope="module")
def world():
    return World()


def _policies(world, n, seed):
    rng = np.random.default_rng(seed)
    prompts = world.sample_prompts(rng, n)
    a = world.sample_responses(rng, prompts, good_frac=(0.5, 1.0))  # a better policy than B
    b = world.sample_responses(rng, prompts)
    return (
        [world.render(x) for x in prompts],
        [world.render(y) for y in a],
        [world.render(y) for y in b],
    )


@pytest.mark.parametrize("margin", [0.0, 0.05, 0.3])
def test_gold_judge_agrees_with_direct_gold_comparison(world, margin):
    prompts, a, b = _policies(world, 150, 0)
    res = GoldJudge(world, tie_margin=margin).compare(prompts, a, b)
    d = world.gold(prompts, a) - world.gold(prompts, b)
    assert (res.win, res.tie, res.lose) == (
        int((d > margin).sum()),
        int((np.abs(d) <= margin).sum()),
        int((d < -margin).sum()),
    )
    assert res.win + res.tie + res.lose == res.n == 150
    assert res.win_rate + res.tie_rate + res.lose_rate == pytest.approx(1.0)
    np.testing.assert_allclose(res.margins, d)
    assert res.win > res.lose  # A samples more of the good set
    swapped = GoldJudge(world, tie_margin=margin).compare(prompts, b, a)
    assert (swapped.win, swapped.tie, swapped.lose) == (res.lose, res.tie, res.win)


def test_gold_judge_on_identical_responses_is_all_ties(world):
    prompts, a, _ = _policies(world, 40, 1)
    res = GoldJudge(world, tie_margin=0.0).compare(prompts, a, a)
    assert (res.win, res.tie, res.lose) == (0, 40, 0)


def test_tie_margin_is_respected_at_its_edge():
    # exact binary fractions, so d = +-margin is exactly at the edge: a tie
    score = {"a": 0.0, "b": -0.125, "c": -0.126, "d": 0.25, "e": 0.125, "ref": 0.0}
    fn = lambda prompts, responses: np.array([score[r] for r in responses])
    res = RewardModelJudge(fn, tie_margin=0.125).compare(["p"] * 5, list("abcde"), ["ref"] * 5)
    assert (res.win, res.tie, res.lose) == (1, 3, 1)  # d: 0, -m, <-m, >m, +m
    res0 = RewardModelJudge(fn).compare(["p"] * 5, list("abcde"), ["ref"] * 5)
    assert (res0.win, res0.tie, res0.lose) == (2, 1, 2)


def test_reward_model_judge_with_a_fake_score_fn():
    calls = []

    def score_fn(prompts, responses):  # a "reward model" that likes long responses
        calls.append((list(prompts), list(responses)))
        return np.array([len(r.split()) for r in responses], np.float32)

    prompts = ["w01 w02", "w03 w04", "w05 w06", "w07 w08"]
    a = ["w01 w02 w03", "w01", "w01 w02", "w01 w02 w03 w04"]
    b = ["w01", "w01 w02", "w01 w02", "w01 w02 w03"]
    res = RewardModelJudge(score_fn).compare(prompts, a, b)
    assert (res.win, res.tie, res.lose) == (2, 1, 1)
    assert res.as_metrics("vs_sft") == {
        "vs_sft/win": 0.5,
        "vs_sft/tie": 0.25,
        "vs_sft/lose": 0.25,
        "vs_sft/n": 4.0,
    }
    assert calls == [(prompts, a), (prompts, b)]  # same prompts, each policy scored once
    assert "win 2 (50.0%)" in str(res)


def test_judge_errors_are_loud():
    ok = lambda p, r: np.zeros(len(r))
    with pytest.raises(ValueError, match="one response of A and one of B"):
        RewardModelJudge(ok).compare(["p", "q"], ["a"], ["b", "c"])
    with pytest.raises(ValueError, match="non-finite"):
        RewardModelJudge(lambda p, r: np.array([np.nan] * len(r))).compare(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="scores for"):
        RewardModelJudge(lambda p, r: np.zeros(3)).compare(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="tie_margin"):
        RewardModelJudge(ok, tie_margin=-1)


def test_empty_result_rates_are_zero():
    res = JudgeResult(0, 0, 0)
    assert res.n == 0 and res.win_rate == res.tie_rate == res.lose_rate == 0.0
