"""The rival arms of issue 26 without a run: the ensemble's aggregations, reward centring's loss and
WARM's weight average against values computed by hand (numpy) here; the ensemble's PPO scoring
against each member's own scoring; the WARM stage's export against the numpy mean of its members;
and the plan's rival arms as the driver runs them (their steps, overrides and compute)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metarm_jax import sharding
from metarm_jax.config import lib as config_lib
from metarm_jax.config import stages
from metarm_jax.core import ensemble, losses, metarm
from metarm_jax.models import factory, hf, llama
from metarm_jax.rlhf import compute, driver, plan
from metarm_jax.rlhf.layout import RunLayout
from metarm_jax.rlhf.plan import RunRecord

# --------------------------------------------------------------------------------------------
# The ensemble's aggregations.

# 3 members x 2 roll-outs
SCORES = np.array([[1.0, -2.0], [3.0, 0.0], [2.0, 4.0]])


def test_aggregations_against_hand_computed_values():
    # roll-out 0: members 1, 3, 2 -> mean 2, min 1, population variance ((-1)² + 1² + 0²)/3 = 2/3
    # roll-out 1: members -2, 0, 4 -> mean 2/3, min -2, variance (64/9 + 4/9 + 100/9)/3 = 56/9
    mean = np.array([2.0, 2.0 / 3.0])
    var = np.array([2.0 / 3.0, 56.0 / 9.0])
    got = lambda agg, lam=0.0: np.asarray(ensemble.aggregate(jnp.asarray(SCORES), agg, lam))
    np.testing.assert_allclose(got("mean"), mean, rtol=1e-6)
    np.testing.assert_allclose(got("min"), [1.0, -2.0], rtol=1e-6)
    np.testing.assert_allclose(got("uwo", 0.5), mean - 0.5 * var, rtol=1e-6)
    np.testing.assert_allclose(got("mean_std", 2.0), mean - 2.0 * np.sqrt(var), rtol=1e-6)
    np.testing.assert_allclose(got("uwo", 0.0), mean, rtol=1e-6)  # λ = 0: the mean
    np.testing.assert_allclose(np.asarray(ensemble.spread(jnp.asarray(SCORES))), np.sqrt(var))
    z = ensemble.standardize(
        jnp.asarray(SCORES), jnp.array([1.0, 0.0, 2.0]), jnp.array([2.0, 1.0, 4.0])
    )
    np.testing.assert_allclose(np.asarray(z), [[0.0, -1.5], [3.0, 0.0], [0.0, 0.5]])
    with pytest.raises(ValueError, match="one of"):
        ensemble.aggregate(jnp.asarray(SCORES), "max", 0.0)


def test_ensemble_scoring_aggregates_each_members_own_score():
    """The ensemble's roll-out scoring (unpacked and packed rows) equals each member scored
    alone by the one-RM scoring, standardised and aggregated by hand."""
    from metarm_jax.train import ensemble_reward, rollout_scoring
    from tests.test_shared_prompt import _rollout_rows

    cfg = llama.preset("tiny", vocab_size=64)
    lm_apply, actor, *_ = factory.split(llama.create(cfg, "lm", seed=1))
    value_apply, critic, *_ = factory.split(llama.create(cfg, "value", seed=2))
    members = [factory.split(llama.create(cfg, "reward", seed=s)) for s in (3, 4)]
    ids, mask, tn = _rollout_rows()
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def alone(m):
        fn = rollout_scoring.make_score_fn(lm_apply, lm_apply, value_apply, m.apply)
        return np.asarray(fn(actor, actor, critic, m.params, ids, mask, tn)["score"], np.float64)

    raw = np.stack([alone(m) for m in members])
    mean, std = (0.5, -0.25), (2.0, 0.5)
    z = (raw - np.array(mean)[:, None]) / np.array(std)[:, None]
    want = z.mean(0) - 0.7 * z.var(0)  # UWO, population variance
    ens = ensemble_reward.Ensemble("uwo", 0.7, mean, std)
    applies, params = tuple(m.apply for m in members), tuple(m.params for m in members)
    for kw in ({}, {"per_prompt": 4, "cfg": cfg, "group": 2}):
        fn = rollout_scoring.make_score_fn(
            lm_apply, lm_apply, value_apply, applies, ensemble_reward=ens, **kw
        )
        out = fn(actor, actor, critic, params, ids, mask, tn)
        np.testing.assert_allclose(np.asarray(out["score"]), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.asarray(out["members"]), z, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Reward centring.


def _toy_reward_fn(params, ids, mask):
    return params["w"] * jnp.sum(ids * mask, axis=-1).astype(jnp.float32) + params["b"]


def _pairs():
    chosen = jnp.array([[1, 2, 0], [3, 1, 1]], jnp.int32)
    rejected = jnp.array([[2, 0, 0], [1, 1, 0]], jnp.int32)
    return {
        "chosen_ids": chosen,
        "chosen_mask": (chosen > 0).astype(jnp.int32),
        "rejected_ids": rejected,
        "rejected_mask": (rejected > 0).astype(jnp.int32),
    }


def test_centring_adds_eta_times_the_mean_squared_pair_sum():
    params = {"w": jnp.float32(0.5), "b": jnp.float32(0.25)}
    # sums of tokens: chosen 3, 5; rejected 2, 2 -> r_w = 1.75, 2.75; r_l = 1.25, 1.25
    r_w, r_l = np.array([1.75, 2.75]), np.array([1.25, 1.25])
    bt = -np.mean(np.log(1.0 / (1.0 + np.exp(-(r_w - r_l)))))
    pen = np.mean((r_w + r_l) ** 2)  # (3² + 4²) / 2 = 12.5
    assert pen == 12.5
    np.testing.assert_allclose(float(losses.centering_penalty(r_w, r_l)), 12.5)
    loss, aux = metarm.preference_loss(_toy_reward_fn, params, _pairs(), 0.01)
    np.testing.assert_allclose(float(loss), bt + 0.01 * 12.5, rtol=1e-6)
    np.testing.assert_allclose(float(aux["center_penalty"]), 12.5, rtol=1e-6)
    # 0.0 is today's loss exactly, and logs nothing new
    plain, aux0 = metarm.preference_loss(_toy_reward_fn, params, _pairs(), 0.0)
    assert float(plain) == float(losses.bt_loss(jnp.asarray(r_w), jnp.asarray(r_l)))
    assert "center_penalty" not in aux0
    # the gradient: d/db of η·mean((r_w + r_l)²) = η·mean(2·2(r_w + r_l)) = 4η·mean(r_w + r_l)
    g0, _ = metarm.vanilla_grads(_toy_reward_fn, params, _pairs(), 0.0)
    g1, _ = metarm.vanilla_grads(_toy_reward_fn, params, _pairs(), 0.01)
    np.testing.assert_allclose(float(g1["b"] - g0["b"]), 4 * 0.01 * np.mean(r_w + r_l), rtol=1e-5)
    # MetaRM's L takes it too (η = 0 returns the vanilla gradient of the centred loss)
    meta = {
        "input_ids": jnp.ones((1, 2, 3), jnp.int32),
        "attention_mask": jnp.ones((1, 2, 3), jnp.int32),
    }
    gm, _ = metarm.meta_grads(_toy_reward_fn, params, _pairs(), meta, 0.0, center=0.01)
    assert float(gm["b"]) == float(g1["b"])


# --------------------------------------------------------------------------------------------
# WARM.


def test_average_is_the_numpy_mean_and_exact_for_identical_members():
    rng = np.random.default_rng(0)
    trees = [
        {"a": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(i)}
        for i in range(3)
    ]
    avg = ensemble.average(trees)
    np.testing.assert_allclose(
        np.asarray(avg["a"]), np.mean([np.asarray(t["a"], np.float64) for t in trees], 0), rtol=1e-6
    )
    assert float(avg["b"]) == 1.0 and avg["a"].dtype == jnp.float32
    same = ensemble.average([trees[0]] * 3)
    assert np.array_equal(np.asarray(same["a"]), np.asarray(trees[0]["a"]))


def _params(path):
    return nnx.split(hf.load_hf(path, "reward"), nnx.Param)[1]


def test_warm_stage_exports_the_members_mean_and_scores_as_one_of_identical_members(tmp_path):
    cfg = llama.preset("tiny", vocab_size=64)
    members = []
    for s in (3, 4, 5):
        members.append(str(tmp_path / f"m{s}"))
        hf.save_hf(llama.create(cfg, "reward", seed=s), members[-1])
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})

    def warm(paths, name):
        c = config_lib.base_config()
        c.warm.rm_paths = tuple(paths)
        out = stages.get("warm")(stages.StageContext(c, mesh, str(tmp_path / name)))
        assert out["members"] == len(paths)
        return out["export"]

    got = jax.tree.leaves(_params(warm(members, "warm")))
    each = [jax.tree.leaves(_params(p)) for p in members]
    for i, leaf in enumerate(got):
        want = np.mean([np.asarray(e[i], np.float64) for e in each], axis=0)
        np.testing.assert_allclose(np.asarray(leaf), want, rtol=1e-5, atol=1e-7)
    # three copies of one member: the average scores exactly as that member
    one = warm([members[0]] * 3, "same")
    ids = jnp.asarray(np.random.default_rng(1).integers(3, 64, (4, 9)), jnp.int32)
    mask = jnp.ones_like(ids).at[0, 6:].set(0)
    a, b = hf.load_hf(one, "reward"), hf.load_hf(members[0], "reward")
    assert np.array_equal(np.asarray(a(ids, mask)), np.asarray(b(ids, mask)))


def test_warm_refuses_one_member_and_a_policy_in_one_line(tmp_path):
    from metarm_jax.runtime.errors import ConfigError
    from metarm_jax.train import rm

    hf.save_hf(llama.create(llama.preset("tiny", vocab_size=64), "lm", seed=0), str(tmp_path / "p"))
    c = config_lib.base_config()
    c.warm.rm_paths = (str(tmp_path / "p"),)
    with pytest.raises(ConfigError, match=r"averages at least 2 reward models"):
        rm.validate_warm(c)
    c.warm.rm_paths = (str(tmp_path / "p"), str(tmp_path / "p"))
    with pytest.raises(ConfigError, match=r"rm_paths\[0\].*not a reward model"):
        rm.validate_warm(c)


# --------------------------------------------------------------------------------------------
# The arms as the driver runs them.


class _Runner:
    """Records the steps the driver asks for; every step 'finished' with 10 steps."""

    def __init__(self, config):
        self.config, self.calls = config, []

    def step(self, name, stage, overrides):
        self.calls.append((name, stage, dict(overrides)))
        return {"export": f"/run/{name}/export/{stage}", "steps": 10}


def _config(**rlhf):
    c = config_lib.load_config_file("configs/quickstart.py:fast=1")
    c.rlhf.baselines = ("vanilla_ppo", "ensemble_mean", "ensemble_uwo", "warm", "centred")
    c.rlhf.ensemble_size = 3
    c.ppo.ensemble_lambda = 0.5
    for k, v in rlhf.items():
        c.rlhf[k] = v
    return c


def test_rival_arms_share_one_ensemble_and_differ_from_vanilla_only_in_the_reward():
    config = _config()
    config_lib.validate(config)
    runner, layout = _Runner(config), RunLayout("/run")
    rec = RunRecord("/sft", "/rm0", 7, "", 3, 2, {})
    runs = {
        name: driver._continuous_arm(runner, layout, plan.BY_NAME[name], rec)
        for name in ("vanilla_ppo", "ensemble_mean", "ensemble_uwo", "warm", "centred")
    }
    steps = {}
    for name, stage, over in runner.calls:
        assert steps.setdefault(name, (stage, over)) == (stage, over), name  # one config a step
    members = ("/rm0", "/run/rm_ensemble/member1/export/rm", "/run/rm_ensemble/member2/export/rm")
    for i in (1, 2):  # from π_SFT, only the seeds differ (r_0 is member 0)
        stage, over = steps[f"rm_ensemble/member{i}"]
        assert stage == "rm" and over == {
            "model.hf_path": "/sft", "seed": config.seed + 1000 * i,
            "data.pref_seed": config.data.pref_seed + 1000 * i,
        }  # fmt: skip
    assert steps["rm_ensemble/warm"] == ("warm", {"warm.rm_paths": members})
    assert steps["rm_centred"] == (
        "rm", {"model.hf_path": "/sft", "train.center_rewards": 0.01}
    )  # fmt: skip
    vanilla = steps["vanilla_ppo"][1]
    for name, extra in {
        "ensemble_mean": {"ppo.reward_models": members, "ppo.ensemble_agg": "mean"},
        "ensemble_uwo": {"ppo.reward_models": members, "ppo.ensemble_agg": "uwo"},
        "warm": {"ppo.rm_path": "/run/rm_ensemble/warm/export/warm"},
        "centred": {"ppo.rm_path": "/run/rm_centred/export/rm"},
    }.items():
        stage, over = steps[name]
        assert stage == "ppo" and over == {**vanilla, **extra}, name  # the critic from r_0
    assert vanilla["ppo.critic_path"] == "/rm0" and vanilla["ppo.iterations"] == 6
    # their compute: every member's RM steps (r_0's 7 once), M forwards per roll-out
    b = compute.budgets(RunRecord("/sft", "/rm0", 7, "", 3, 2, runs))
    assert b["vanilla_ppo"] == {"rm_steps": 7, "ppo_iterations": 6, "rm_forwards_per_rollout": 1}
    assert b["ensemble_mean"] == b["ensemble_uwo"] == {
        "rm_steps": 7 + 20, "ppo_iterations": 6, "rm_forwards_per_rollout": 3,
    }  # fmt: skip
    assert b["warm"] == {"rm_steps": 27, "ppo_iterations": 6, "rm_forwards_per_rollout": 1}
    assert b["centred"] == {"rm_steps": 17, "ppo_iterations": 6, "rm_forwards_per_rollout": 1}
    src = compute.reward_sources(RunRecord("/sft", "/rm0", 7, "", 3, 2, runs), config.ppo)
    assert src["ensemble_uwo"] == {
        "reward": "ensemble", "rms": list(members), "members": 3, "agg": "uwo",
        "standardized": True, "lambda": 0.5,
    }  # fmt: skip
    assert runs["ensemble_mean"].reward("/rm0") == (members, "mean")
    assert runs["centred"].reward("/rm0") == "/run/rm_centred/export/rm"


def test_a_given_r0_is_not_a_member(tmp_path):
    """With rlhf.rm_path (r_0 trained elsewhere) member 0 is trained here too, from π_SFT."""
    config = _config()
    runner = _Runner(config)
    config.rlhf.rm_path = "/given"
    rec = RunRecord("/sft", "/given", 0, "", 3, 2, {})
    run = driver._continuous_arm(runner, RunLayout("/run"), plan.BY_NAME["ensemble_mean"], rec)
    assert run.rms[0] == "/run/rm_ensemble/member0/export/rm" and len(run.rms) == 3
    assert run.rm_steps == 30


def test_the_rivals_are_opt_in_and_need_no_world():
    base = config_lib.load_config_file("configs/quickstart.py")
    assert not {"ensemble_mean", "ensemble_worst", "ensemble_uwo", "warm", "centred"} & set(
        base.rlhf.baselines
    )
    study = config_lib.load_config_file("configs/quickstart.py:study=1")
    assert study.rlhf.baselines == ("metarm2", "eta0", "oracle", "ceiling", "vanilla_ppo")
    real = config_lib.load_config_file("configs/hh_rlhf.py:runlocal")
    real.rlhf.baselines = ("ensemble_worst", "warm", "centred")
    plan.validate(real)


def test_ppo_stage_with_an_ensemble_of_identical_members_runs_as_one_rm(tmp_path):
    """The ppo stage with ppo.reward_models: two copies of one RM, worst case, raw scores: both
    members score every roll-out alike (spread 0), PPO's reward is that score, and the summary
    counts 2 RM forwards per roll-out."""
    import shutil

    from metarm_jax.train import ppo
    from tests.test_ppo_stage import read_metrics, toy_config, write_world

    wc = __import__("metarm_jax.config.defaults", fromlist=["world"]).world()
    for key in ("num_sft", "num_train_pairs", "num_test_pairs", "num_eval_prompts",
                "num_ood_prompts"):  # fmt: skip
        wc[key] = 8
    wc.num_train_prompts = 64
    toy = write_world(str(tmp_path / "world"), wc)
    cfg = llama.LlamaConfig(
        vocab_size=54, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
        num_kv_heads=4, max_position_embeddings=128,
    )  # fmt: skip
    hf.save_hf(llama.create(cfg, "lm", seed=1), str(tmp_path / "policy"))
    hf.save_hf(llama.create(cfg, "reward", seed=2), str(tmp_path / "rm"))
    shutil.copytree(tmp_path / "rm", tmp_path / "rm_copy")
    toy.update(policy=str(tmp_path / "policy"), rm=str(tmp_path / "rm"))
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})

    def run(name, **kw):
        config = toy_config(toy, iterations=1, **kw)
        out = ppo.run_ppo(stages.StageContext(config, mesh, str(tmp_path / name)))
        rows = [r for r in read_metrics(str(tmp_path / name)) if "rollout/score_mean" in r]
        return out, rows[0]

    ens, b = run(
        "ens",
        reward_models=(toy["rm"], str(tmp_path / "rm_copy")),
        ensemble_agg="min",
        ensemble_standardize=False,
    )
    assert ens["rm_forwards_per_rollout"] == 2
    m = b["rollout/ensemble_member_mean"]
    assert len(m) == 2 and m[0] == m[1] and b["rollout/ensemble_spread"] == 0.0
    assert b["rollout/score_mean"] == pytest.approx(m[0], rel=1e-6)  # min of equals: the one


# --------------------------------------------------------------------------------------------
# Iterative relabelling by the LLM judge (real data): a local OpenAI-compatible server
# (tests/fake_openai_server.py) that prefers the longer response is the judge.

JUDGE_ENV = "METARM_TEST_JUDGE_KEY"
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "policy_step": 0, "seed": 0}


def _relabel_config(shared_dir, server):
    c = config_lib.load_config_file("configs/hh_rlhf.py:runlocal")
    c.rlhf.baselines = ("relabel",)
    c.judge.base_url, c.judge.model = f"{server}/v1", "fake-judge"
    c.judge.api_key_env = JUDGE_ENV
    c.judge.backoff_s = 0.01
    return c


@pytest.fixture
def judge_env(server, shared_dir, monkeypatch):
    from tests.conftest import FAKE_JUDGE_KEY

    if not (shared_dir / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz").exists():
        pytest.skip("the shared HH-RLHF sample is absent (set METARM_SHARED_DIR)")
    pytest.importorskip("openai")
    import json
    import urllib.request

    for path, body in (("reset", {}), ("control", {"rule": "longer", "latency": 0.0})):
        req = urllib.request.Request(
            f"{server}/{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=5).read()
    monkeypatch.setenv(JUDGE_ENV, FAKE_JUDGE_KEY)
    return _relabel_config(shared_dir, server)


def _meta(path, rows):
    from metarm_jax.data.schemas.meta import write_meta_dataset

    write_meta_dataset(
        str(path), [dict(prompt=p, responses=list(rs), **SAMPLING) for p, rs in rows]
    )
    return str(path)


class _LeadRunner(_Runner):
    lead = True


def test_relabel_labels_own_samples_by_the_judge_and_replays_them(judge_env, tmp_path):
    """Two rounds of the relabel arm's RM method against hand-derived labels: pairs (0,1), (2,3)
    of each prompt's responses, the judge's (longer) choice as chosen, ties and identical
    responses not labelled; the pool is the original pairs (TRL text rows that read back as the
    run's own records) plus every round's labels; a pair asked again is read from the cache."""
    import json

    from metarm_jax import data as D
    from metarm_jax.rlhf import rm_methods

    config = judge_env
    runner, layout = _LeadRunner(config), RunLayout(str(tmp_path))
    arm = plan.BY_NAME["relabel"]
    P1, P2 = "\n\nHuman: hi\n\nAssistant:", "\n\nHuman: why?\n\nAssistant:"
    meta1 = _meta(
        tmp_path / "m1.jsonl",
        [
            (P1, [" a long answer", " short", " same", " sama", " odd one"]),  # k = 5: 2 pairs
            (P2, [" twin", " twin", " x", " much longer"]),
        ],
    )
    res = rm_methods.relabel(rm_methods.RMRequest(runner, layout, arm, 1, "/rm0", meta1))
    out = tmp_path / "relabel" / "round1" / "relabel_pairs"
    rows = [json.loads(x) for x in (out / "labelled.jsonl").read_text().splitlines()]
    assert rows == [  # (" same", " sama"): equal lengths, a tie; (" twin", " twin"): not asked
        {"prompt": P1, "chosen": " a long answer", "rejected": " short"},
        {"prompt": P2, "chosen": " much longer", "rejected": " x"},
    ]
    assert res.judge["pairs"] == 3 and res.judge["labelled"] == 2 and res.judge["dropped"] == 1
    assert res.judge["judgments"] == 6 and res.judge["calls"] == 6  # both orders, all new
    original = D.load_records("preference", config.data, None, split=config.data.split)
    pool = D.load("preference", D.DataSource.of("trl", str(out), split="train"))
    assert len(pool) == len(original) + 2
    for a, b in zip(original, pool):  # the original pairs, transcript for transcript
        assert (a.prompt, a.chosen, a.rejected) == (b.prompt, b.chosen, b.rejected)
    name, stage, over = runner.calls[-1]
    assert (name, stage) == ("relabel/round1/rm", "rm") and over == {
        "model.hf_path": "/rm0", "data.dataset": "trl", "data.path": str(out),
        "data.split": "train", "data.eval_split": "test", "data.name": "", "data.data_dir": "",
    }  # fmt: skip
    # round 2: one pair seen in round 1 (cached: no call), one new; the pool replays round 1
    meta2 = _meta(tmp_path / "m2.jsonl", [(P1, [" a long answer", " short", " b", " bbb"])])
    res2 = rm_methods.relabel(rm_methods.RMRequest(runner, layout, arm, 2, res.path, meta2))
    assert res2.judge["judgments"] == 4 and res2.judge["calls"] == 2
    assert res2.judge["cache_hits"] == 2
    pool2 = (tmp_path / "relabel" / "round2" / "relabel_pairs" / "train.jsonl").read_text()
    assert len(pool2.splitlines()) == len(original) + 2 + 2
    # a second call of a finished round asks nothing and returns the same accounting
    again = rm_methods.relabel(rm_methods.RMRequest(runner, layout, arm, 2, res.path, meta2))
    assert again.judge == res2.judge
    # the arm's compute in the report
    rounds = [
        plan.Round(r, "/p", x.path, "", "", 10, "", 3, judge=x.judge)
        for r, x in ((1, res), (2, res2))
    ]
    run = plan.ArmRun(arm, rounds=rounds)
    b = compute.budgets(RunRecord("/sft", "/rm0", 7, "", 3, 2, {"relabel": run}))["relabel"]
    assert b == {
        "rm_steps": 27, "ppo_iterations": 6, "rm_forwards_per_rollout": 1, "judge_pairs": 5,
        "judge_labelled": 4, "judge_judgments": 10, "judge_calls": 8,
        "judge_tokens": res.judge["prompt_tokens"] + res.judge["completion_tokens"]
        + res2.judge["prompt_tokens"] + res2.judge["completion_tokens"],
    }  # fmt: skip


def test_relabel_needs_a_usable_judge_before_any_stage(shared_dir):
    c = _relabel_config(shared_dir, "http://127.0.0.1:9")
    c.judge.base_url = ""
    with pytest.raises(Exception) as e:
        config_lib.validate(c)
    msg = str(e.value)
    assert type(e.value).__name__ == "ConfigError" and "\n" not in msg
    assert "'relabel'" in msg and "judge.base_url" in msg
