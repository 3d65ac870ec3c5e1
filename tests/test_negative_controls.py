"""MetaRM's negative controls (issue 31): the sign-flipped ascent is the ascent with −η, the
random direction keeps the ascent's norm and is seeded per step, J on SFT samples reads round 1's
meta file; the arms are plan entries compared to eta0 and to MetaRM; a reward offset does not
reach PPO under the centred normalisation (so r_0 + c trains the same policy as r_0); the
per-round restart of the RM (rlhf.rm_init='restart') starts from π_SFT."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax.config import defaults
from metarm_jax.config import lib as config_lib
from metarm_jax.core import metarm
from metarm_jax.core import ppo as core
from metarm_jax.core.tree import global_norm
from metarm_jax.rlhf import plan, rm_methods
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.train import rollout
from tests.test_core_metarm import jax_reward, make_batches, make_params


def _grads(direction="ascent", eta=0.05, **kw):
    params, (pref, meta) = make_params(seed=3), make_batches(seed=3)
    return metarm.meta_grads(
        jax_reward, params, pref, meta, eta, center=0.0, direction=direction, **kw
    )


def _close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.mark.parametrize("order", ["first", "second"])
def test_descent_is_the_ascent_with_the_sign_flipped(order):
    """θ' = θ − η∇J: the gradient and every metric equal the ascent's at −η (first and second
    order), and differ from the ascent's at +η."""
    g_down, m_down = _grads("descent", 0.05, order=order)
    g_neg, m_neg = _grads("ascent", -0.05, order=order)
    g_up, m_up = _grads("ascent", 0.05, order=order)
    _close(g_down, g_neg, rtol=1e-6, atol=1e-7)
    for k in ("loss", "meta/ascent_norm", "meta/eta_effective", "meta/J_gain_linear"):
        np.testing.assert_allclose(float(m_down[k]), float(m_neg[k]), rtol=1e-6)
    assert float(m_down["meta/eta_effective"]) == pytest.approx(-0.05)
    assert float(m_down["meta/ascent_norm"]) == pytest.approx(float(m_up["meta/ascent_norm"]))
    assert not np.allclose(np.asarray(g_down["w2"]), np.asarray(g_up["w2"]), rtol=1e-4)


def test_random_direction_keeps_the_norm_and_is_seeded_per_step():
    """The random control's ‖θ' − θ‖ is the ascent's η‖∇J‖; one key gives one gradient, another
    key another, and neither is the ascent's."""
    key = jax.random.key(11)
    g_a, m_a = _grads("random", rng=key)
    g_b, _ = _grads("random", rng=key)
    g_c, _ = _grads("random", rng=jax.random.key(12))
    g_up, m_up = _grads("ascent")
    np.testing.assert_allclose(
        float(m_a["meta/ascent_norm"]), float(m_up["meta/ascent_norm"]), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(m_a["meta/ascent_norm"]), 0.05 * float(m_a["meta/grad_J_norm"]), rtol=1e-5
    )
    _close(g_a, g_b, rtol=0, atol=0)  # the same key: bit for bit
    assert not np.allclose(np.asarray(g_a["w1"]), np.asarray(g_c["w1"]))
    assert not np.allclose(np.asarray(g_a["w1"]), np.asarray(g_up["w1"]))
    assert m_a["meta/J"] == m_up["meta/J"]  # J is measured at θ as for the ascent


def test_random_like_has_the_norm_the_structure_and_the_dtypes():
    tree = {"a": jnp.ones((3, 4), jnp.bfloat16), "b": jnp.zeros((5,), jnp.float32)}
    u = metarm.random_like(jax.random.key(0), tree, jnp.float32(2.5))
    assert jax.tree.structure(u) == jax.tree.structure(tree)
    assert u["a"].dtype == jnp.bfloat16 and u["b"].dtype == jnp.float32
    np.testing.assert_allclose(float(global_norm(u)), 2.5, rtol=1e-2)  # bf16 leaf rounding
    v = metarm.random_like(jax.random.key(1), tree, jnp.float32(2.5))
    assert not np.allclose(np.asarray(u["b"]), np.asarray(v["b"]))


def test_the_random_control_is_first_order_and_needs_a_key():
    with pytest.raises(ValueError, match="direction='random' needs order='first'"):
        _grads("random", order="second", rng=jax.random.key(0))
    with pytest.raises(ValueError, match="direction='random'"):
        _grads("random")
    with pytest.raises(ValueError, match="meta.direction must be one of"):
        _grads("sideways")


def test_the_negative_controls_are_plan_entries_compared_to_eta0_and_metarm():
    assert plan.NEGATIVE_CONTROLS == ("metarm_random", "metarm_sft_j", "metarm_descent")
    for name in plan.NEGATIVE_CONTROLS:
        arm = plan.BY_NAME[name]
        assert arm.schedule == plan.ROUNDS and arm.rm_method in rm_methods.METHODS
        assert set(arm.compare_to) == {"eta0", plan.MAIN} and not arm.control
    pairs = plan.comparisons(["metarm", "eta0", "metarm_descent", "vanilla_ppo"])
    assert ("metarm_descent", "eta0") in pairs and ("metarm_descent", "metarm") in pairs
    assert ("metarm", "eta0") in pairs and ("metarm_random", "eta0") not in pairs


def test_each_negative_control_changes_only_the_ascent(tmp_path):
    """What each control's RM step is asked for, next to MetaRM's: the same stage and data but
    the direction, or (J on SFT samples) the meta file of round 1 (π_SFT's samples)."""
    asked = {}

    class Runner:
        config = config_lib.base_config()

        def step(self, name, stage, overrides):
            asked[name] = (stage, overrides)
            return {"workdir": str(tmp_path / name), "steps": 3, "export": "e"}

    layout = RunLayout(str(tmp_path))
    meta3 = str(tmp_path / "x" / "round3" / "meta.jsonl")
    for name in ("metarm", *plan.NEGATIVE_CONTROLS):
        arm = plan.BY_NAME[name]
        rm_methods.METHODS[arm.rm_method](
            rm_methods.RMRequest(Runner(), layout, arm, 3, "start", meta3)
        )
    base = asked["round3/metarm"]
    assert base == ("metarm", {"model.hf_path": "start", "data.meta_path": meta3})
    for name, direction in (("metarm_random", "random"), ("metarm_descent", "descent")):
        stage, o = asked[f"{name}/round3/metarm"]
        assert (stage, o) == ("metarm", {**base[1], "meta.direction": direction})
    stage, o = asked["metarm_sft_j/round3/metarm"]
    assert o == {**base[1], "data.meta_path": str(tmp_path / "round1" / "meta.jsonl")}


def test_config_refuses_descent_outside_its_arm_and_random_at_second_order():
    c = config_lib.base_config()
    c.meta.direction = "descent"
    with pytest.raises(ConfigError, match="add metarm_descent to config.rlhf.baselines"):
        config_lib.validate(c)
    c.meta.direction, c.meta.order = "random", "second"
    with pytest.raises(ConfigError, match="first-order control"):
        config_lib.validate(c)
    c.meta.order = "first"
    config_lib.validate(c)
    c.meta.direction = "ascent"
    c.rlhf.rm_init = "restart"
    config_lib.validate(c)
    c.ppo.reward_shaping, c.ppo.reward_fn = "par", "metarm_jax.data.synthetic:gold_monitor"
    with pytest.raises(ConfigError, match="reward_shaping='par' shapes one reward model"):
        config_lib.validate(c)


def test_par_is_a_plan_arm_on_r0_compared_to_vanilla_and_by_metarm():
    from metarm_jax.rlhf import rewards

    arm = plan.BY_NAME["par"]
    assert arm.reward == "par" and not arm.rival_reward and plan.FLOOR in arm.compare_to
    assert ("metarm", "par") in plan.comparisons(["metarm", "par", plan.FLOOR])

    class Rec:
        rm0, rm0_steps = "r0", 125

    r = rewards.SOURCES["par"](rewards.RewardRequest(None, None, arm, Rec()))
    assert (r.rm, r.rms, r.rm_steps, r.ppo) == ("r0", ("r0",), 125, {"reward_shaping": "par"})


def _shape_rewards(score_offset: float, reward_norm: str, iterations: int = 3):
    """rollout.advantages over a few iterations of the same roll-out shapes, the RM's scores
    shifted by ``score_offset``: the advantages and returns of each iteration."""
    pcfg = dict(rollout.settings(defaults.ppo()), reward_norm=reward_norm)
    rng = np.random.default_rng(0)
    q, r, t = 4, 3, 6
    moments, out = core.RunningMoments.init(), []
    edges = np.concatenate([np.linspace(0, 3, 9), [np.inf]]).astype(np.float32)
    for _ in range(iterations):
        score = jnp.asarray(rng.normal(size=q * r) * 1.7 + 0.4, jnp.float32)
        old, ref = (jnp.asarray(rng.normal(size=(q * r, t)) * 0.1, jnp.float32) for _ in "ab")
        values = jnp.asarray(rng.normal(size=(q * r, t)), jnp.float32)
        mask = jnp.asarray((np.arange(t)[None] < rng.integers(2, t + 1, q * r)[:, None]), jnp.int32)
        moments, shaped, _ = rollout.advantages(
            pcfg, moments, score + score_offset, old, ref, values, mask, q, edges
        )
        out.append(shaped)
    return out


def test_a_reward_offset_does_not_reach_ppo_under_standard_normalisation():
    """Vanilla PPO against r_0 + c is vanilla PPO against r_0 (its critic starts from r_0 in both):
    the centred running normalisation removes any offset, to float rounding, iteration after
    iteration. Scaling by the running std alone does not (the test can fail)."""
    for a, b in zip(_shape_rewards(0.0, "standard"), _shape_rewards(7.3, "standard")):
        _close(a, b, rtol=1e-4, atol=2e-5)
    a, b = _shape_rewards(0.0, "scale")[-1], _shape_rewards(7.3, "scale")[-1]
    assert not np.allclose(np.asarray(a["returns"]), np.asarray(b["returns"]), atol=1e-2)
