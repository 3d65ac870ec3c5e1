"""The PPO stage: learning on a toy task with a known reward, KL = 0 at the start, the shift
signal in metrics.jsonl, and exact resume after SIGKILL of a real subprocess.

The toy task: the synthetic world's prompts and tokenizer (54 tokens); the reward model is a real
1-layer Llama ("reward" head) whose weights are CONSTRUCTED so that its score is a known
increasing function of the fraction of one target token in prompt + response:
zero q/k make attention a uniform causal average, v/o copy the target's embedding direction into a
residual channel the score head reads, the MLP is zero. Score = √E·f / √(1 + f²), f = fraction.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax import models, sharding
from metarm_jax.config import defaults, stages
from metarm_jax.config import lib as config_lib
from metarm_jax.data.world_files import write_world
from metarm_jax.models import hf, llama
from metarm_jax.train import offload, optim, ppo

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGET = 6  # token id of symbol w00
VOCAB = 54
E = 32


def toy_cfg(**kw) -> llama.LlamaConfig:
    return llama.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=E,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        num_kv_heads=4,
        max_position_embeddings=128,
        **kw,
    )


def target_fraction_rm() -> llama.Llama:
    """The constructed reward model (see the module docstring)."""
    model = llama.create(toy_cfg(), "reward", seed=0)
    emb = np.zeros((VOCAB, E), np.float32)
    emb[np.arange(VOCAB), 2 + np.arange(VOCAB) % (E - 2)] = 1.0  # one-hot, never dims 0/1
    emb[TARGET] = 0.0
    emb[TARGET, 0] = 1.0
    L = model.layers
    zeros = lambda v: np.zeros(v[...].shape, np.float32)
    v = zeros(L.v)
    v[0, 0, 0, 0] = 1.0  # head 0 reads channel 0
    o = zeros(L.o)
    o[0, 0, 0, 1] = 1.0 / np.sqrt(E)  # ... writes channel 1
    score = np.zeros((E, 1), np.float32)
    score[1, 0] = 1.0
    for name, val in (
        ("q", zeros(L.q)),
        ("k", zeros(L.k)),
        ("v", v),
        ("o", o),
        ("gate", zeros(L.gate)),
        ("up", zeros(L.up)),
        ("down", zeros(L.down)),
    ):
        getattr(L, name)[...] = jnp.asarray(val)
    model.embed[...] = jnp.asarray(emb)
    model.score[...] = jnp.asarray(score)
    return model


def expected_score(frac: np.ndarray) -> np.ndarray:
    return np.sqrt(E) * frac / np.sqrt(1 + frac**2)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_toy")
    wc = defaults.world()
    for key in (
        "num_sft",
        "num_train_pairs",
        "num_test_pairs",
        "num_eval_prompts",
        "num_ood_prompts",
    ):
        wc[key] = 8
    wc.num_train_prompts = 256
    paths = write_world(str(root / "world"), wc)
    hf.save_hf(llama.create(toy_cfg(), "lm", seed=1), str(root / "policy"))
    hf.save_hf(target_fraction_rm(), str(root / "rm"))
    return {"root": root, **paths, "policy": str(root / "policy"), "rm": str(root / "rm")}


def toy_config(toy, **ppo_overrides):
    c = config_lib.base_config()
    c.seed = 0
    c.model.hf_path = toy["policy"]
    d = c.data
    d.prompt_dataset, d.prompt_path, d.prompt_split = "prompts", toy["prompts_train"], "train"
    d.tokenizer_path = toy["tokenizer"]
    d.max_length, d.bucket_lengths, d.max_prompt_length = 64, (16, 32), 16
    d.num_threads, d.prefetch_buffer_size = 1, 1
    c.sampling.prompt_bucket_min = 16
    c.train.progress = False
    c.train.async_checkpoints = False
    p = c.ppo
    p.rm_path = toy["rm"]
    p.queries_per_iteration, p.rollouts_per_query = 8, 4
    p.minibatch_size, p.ppo_epochs = 16, 1
    p.max_new_tokens = 8
    p.policy_lr, p.critic_lr = 3e-3, 3e-3
    # A bounded reward, as this toy's KL threshold assumes: with the default (centred score,
    # clip at 5σ) PPO at lr 3e-3 keeps pushing the 8-token toy, to a summed KL of ~30 by
    # iteration 30 (measured), while the reward it optimises is the same.
    p.reward_norm, p.reward_clip = "scale", 0.8
    p.save_every = 0
    for k, v in ppo_overrides.items():
        p[k] = v
    return c


def read_metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "ppo", "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_constructed_rm_scores_the_target_fraction(toy):
    rm = hf.load_hf(toy["rm"], "reward")
    ids = np.array([[1, 4, 7, 8, 5, TARGET, TARGET, 9, 2], [0, 0, 1, 4, 7, 5, 10, 11, 2]], np.int32)
    mask = (ids != 0).astype(np.int32)
    frac = np.array([2 / 9, 0.0])
    np.testing.assert_allclose(
        np.asarray(rm(ids, mask)), expected_score(frac), atol=1e-3
    )  # RMSNorm eps


@pytest.fixture(scope="module")
def learned(toy, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("ppo_learn"))
    config = toy_config(toy, iterations=30, critic_warmup=2)
    mesh = sharding.make_mesh(dict(config.mesh))
    t0 = time.time()
    summary = ppo.run_ppo(stages.StageContext(config=config, mesh=mesh, workdir=workdir))
    return {
        "workdir": workdir,
        "summary": summary,
        "rows": read_metrics(workdir),
        "seconds": time.time() - t0,
        "config": config,
    }


def test_ppo_raises_the_reward_with_bounded_kl(learned):
    rows = [r for r in learned["rows"] if "rollout/score_mean" in r]
    assert len(rows) == 30
    scores = np.array([r["rollout/score_mean"] for r in rows])
    kls = np.array([r["rollout/kl"] for r in rows])
    start, end = scores[:3].mean(), scores[-3:].mean()
    print(
        f"\nPPO toy: score {start:.3f} -> {end:.3f}; KL (sum over tokens) first {kls[0]:.4f}, "
        f"max {kls.max():.3f}, last {kls[-1]:.3f}; {learned['seconds']:.1f}s"
    )
    assert end > start + 0.5 and end > 2 * start, scores
    assert np.all(np.isfinite(kls)) and kls.max() < 10.0, kls
    # critic warm-up: no actor update in the first 2 iterations, updates afterwards
    steps = {r["step"]: r for r in learned["rows"] if "ppo/actor_update" in r}
    assert [steps[s]["ppo/actor_update"] for s in (1, 2, 3, 4)] == [0.0, 0.0, 0.0, 0.0]
    assert steps[5]["ppo/actor_update"] == 1.0
    assert all(np.isfinite(steps[s]["ppo/entropy"]) for s in steps)
    assert os.path.isfile(os.path.join(learned["workdir"], "export", "ppo", "config.json"))
    assert os.path.isfile(os.path.join(learned["workdir"], "export", "ppo", "tokenizer.json"))
    critic = hf.load_hf(os.path.join(learned["workdir"], "export", "ppo_critic"), "value")
    assert critic.head == "value"
    # the critic export carries the tokenizer too, so it loads on its own in transformers
    assert os.path.isfile(
        os.path.join(learned["workdir"], "export", "ppo_critic", "tokenizer.json")
    )


def test_kl_is_exactly_zero_at_iteration_zero(learned):
    first = next(r for r in learned["rows"] if "rollout/kl" in r)
    assert first["rollout/iteration"] == 0.0
    # Exact on any CPU: actor and reference hold the same weights at iteration 0 and their
    # forwards are the same subcomputation of one jitted scoring program (neither feeds a
    # backward pass), so log π - log π_ref is x - x = 0.
    assert first["rollout/kl"] == 0.0 and first["rollout/kl_token_mean"] == 0.0
    # ... and only there: the actor moves away from the reference afterwards
    last = [r for r in learned["rows"] if "rollout/kl" in r][-1]
    assert last["rollout/kl_token_mean"] != 0.0


def test_shift_signal_in_metrics(learned):
    p = learned["config"].ppo
    rows = [r for r in learned["rows"] if "shift/absdiff_var" in r]
    assert len(rows) == p.iterations
    pairs = p.queries_per_iteration * p.rollouts_per_query * (p.rollouts_per_query - 1) // 2
    for r in rows:
        assert len(r["shift/absdiff_hist"]) == p.shift_hist_bins + 1  # + overflow bin
        assert sum(r["shift/absdiff_hist"]) == pairs == r["shift/num_pairs"]
        values = np.asarray(r["shift/absdiff"])
        assert values.shape == (pairs,) and np.all(values >= 0)
        np.testing.assert_allclose(r["shift/absdiff_var"], values.var(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r["shift/absdiff_mean"], values.mean(), rtol=1e-4, atol=1e-6)
    tb = os.listdir(os.path.join(learned["workdir"], "ppo", "tb"))
    assert any(f.startswith("events") for f in tb)


def test_gated_actor_keeps_adam_state():
    import optax

    opt = optim.two_optimizers(optax.adam(0.1), optax.adam(0.1))
    params = {"actor": jnp.ones(3), "critic": jnp.ones(2)}
    state = opt.init(params)
    grads = {"actor": jnp.zeros(3), "critic": jnp.ones(2)}
    updates, new = opt.update(grads, state, params)
    assert np.all(np.asarray(updates["actor"]) == 0)
    assert np.all(np.asarray(updates["critic"]) != 0)
    assert int(new["actor"][0].count) == 0 and int(new["critic"][0].count) == 1


DRIVER = """
import sys
from metarm_jax import sharding
from metarm_jax.config import lib as config_lib, stages
sys.path.insert(0, {tests!r})
import test_ppo_stage as T
from metarm_jax.train import ppo
toy = {toy!r}
config = T.toy_config(toy, iterations=10, save_every=1, rollouts_per_query=2, minibatch_size=8,
                      critic_warmup=1)
mesh = sharding.make_mesh(dict(config.mesh))
ppo.run_ppo(stages.StageContext(config=config, mesh=mesh, workdir=sys.argv[1]))
print("DONE", flush=True)
"""


def _export_bytes(workdir):
    out = {}
    for sub in ("ppo", "ppo_critic"):
        with open(os.path.join(workdir, "export", sub, "model.safetensors"), "rb") as f:
            out[sub] = f.read()
    return out


def test_resume_after_sigkill_is_bitwise_exact(toy, tmp_path):
    toy_paths = {k: str(v) for k, v in toy.items()}
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(REPO / "tests"), toy=toy_paths))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    ref_dir, kill_dir = str(tmp_path / "ref"), str(tmp_path / "killed")
    done = subprocess.run(
        [sys.executable, str(script), ref_dir], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-3000:]

    proc = subprocess.Popen(
        [sys.executable, str(script), kill_dir],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ckpts = pathlib.Path(kill_dir, "ppo", "checkpoints")
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in ckpts.glob("[0-9]*") if p.name.isdigit()]
        if steps and max(steps) >= 4:  # 2 iterations of 2 steps done and saved
            proc.send_signal(signal.SIGKILL)
            killed_at = max(steps)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None, (
        "the run ended before it could be killed: " + proc.stdout.read()[-2000:]
    )
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(kill_dir, "export", "ppo"))

    resumed = subprocess.run(
        [sys.executable, str(script), kill_dir],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0 and "DONE" in resumed.stdout, resumed.stderr[-3000:]
    assert "resuming ppo" in resumed.stdout + resumed.stderr
    assert _export_bytes(kill_dir) == _export_bytes(ref_dir)
    # metrics rows of the resumed run continue the killed one without duplicates
    steps = [r["step"] for r in read_metrics(kill_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 20


def test_frozen_offload_round_trip():
    model = llama.create(toy_cfg(), "reward", seed=3)
    params = models.split(model).params
    frozen = offload.Frozen(params, offload=True)
    leaves = jax.tree.leaves(frozen.params)
    kind = offload.host_memory_kind()
    if kind is not None:  # jax's CPU client has pinned_host: the params really move there
        assert all(x.sharding.memory_kind == kind for x in leaves)
    back = frozen.get()
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a.sharding.memory_kind == b.sharding.memory_kind
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_par_shapes_the_score_against_reference_samples(toy, tmp_path):
    """ppo.reward_shaping='par': the reward PPO normalises is the mean of σ(r − r_ref) over the
    reference policy's samples of each prompt (in (0, 1)); the RM's raw scores of the roll-outs
    and of the references are logged beside it. At iteration 0 actor and reference are the same
    policy, so the shaped score is centred near 1/2."""
    config = toy_config(toy, iterations=2, reward_shaping="par")
    mesh = sharding.make_mesh(dict(config.mesh))
    ppo.run_ppo(stages.StageContext(config=config, mesh=mesh, workdir=str(tmp_path)))
    rows = [r for r in read_metrics(str(tmp_path)) if "rollout/score_mean" in r]
    assert len(rows) == 2
    for r in rows:
        assert 0.0 < r["rollout/score_mean"] < 1.0
        assert "rollout/par_rm_score_mean" in r and "rollout/par_ref_score_mean" in r
        assert r["rollout/score_mean"] != pytest.approx(r["rollout/par_rm_score_mean"])
    assert abs(rows[0]["rollout/score_mean"] - 0.5) < 0.15


def test_preference_as_reward_on_a_hand_made_prompt():
    """Fu et al.'s PAR by hand: scores (0, 2) against references (0, 2):
    y = 0: (σ(0) + σ(−2)) / 2, y = 2: (σ(2) + σ(0)) / 2; bounded, monotone in r."""
    from metarm_jax.core import ppo as ppo_math

    sig = lambda x: 1 / (1 + np.exp(-x))
    out = np.asarray(
        ppo_math.preference_as_reward(jnp.array([[0.0, 2.0]]), jnp.array([[0.0, 2.0]]))
    )
    np.testing.assert_allclose(out, [[(sig(0) + sig(-2)) / 2, (sig(2) + sig(0)) / 2]], rtol=1e-6)
    many = np.asarray(
        ppo_math.preference_as_reward(
            jnp.array([[-50.0, -1.0, 0.5, 50.0]]), jnp.array([[0.0, 1.0, -1.0]])
        )
    )[0]
    assert np.all(np.diff(many) > 0) and many[0] < 1e-6 and many[-1] > 1 - 1e-6
