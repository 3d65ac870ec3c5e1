"""The sft and dpo stages: the loss sees response tokens only, they learn, the reference stays
frozen, HF export, exact resume after SIGKILL, and the run from ``python -m metarm_jax.main``.

All on the synthetic world (tiny vocab; HH-format SFT and pair files) and the tiny preset.
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax import models, sharding
from metarm_jax.config import defaults, stages
from metarm_jax.config import lib as config_lib
from metarm_jax.data import synthetic, world_files
from metarm_jax.train import common, dpo, loop, optim, sft
from tests.resume_util import assert_same_exports, kill_at_checkpoint
from tests.tolerances import assert_within_ulps
from tests.xla_env import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

# Builds the run config from a world directory; exec'd here and in the subprocesses so every run
# sees the same config.
CONFIG_SRC = textwrap.dedent("""
    from metarm_jax.config import lib as config_lib

    def make_config(world):
        c = config_lib.base_config()
        c.model.preset = "tiny"
        c.data.update(dict(tokenizer_path=world + "/tokenizer", sft_path=world + "/sft/train.jsonl",
                           path=world + "/pairs", max_length=64, bucket_lengths=(32,),
                           sft_batch_size=16, pref_batch_size=16, num_threads=1))
        c.train.update(dict(eval_every=0, save_every=0, progress=False))
        c.sft.update(dict(steps=40, lr=3e-3, warmup_epochs=0.0, warmup=5.0, val_holdout=128))
        c.dpo.update(dict(steps=20, lr=1e-3, warmup=0.0))
        return c
""")
_ns: dict = {}
exec(CONFIG_SRC, _ns)
make_config = _ns["make_config"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("world")
    cfg = defaults.world()
    cfg.update(
        dict(
            num_sft=600,
            num_train_pairs=64,
            num_test_pairs=64,
            num_train_prompts=32,
            num_eval_prompts=16,
            num_ood_prompts=16,
        )
    )
    world_files.write_world(str(root), cfg)
    return str(root)


def _mesh():
    return sharding.make_mesh({"data": 1}, jax.devices()[:1])


def _ctx(config, workdir):
    return stages.StageContext(config, _mesh(), str(workdir))


def _rows(path):
    """The train-step rows of a metrics.jsonl (eval rows have only eval/ keys)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if "loss" in r]


# --------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------


def test_stage_train_config_overrides_only_the_stage_keys():
    c = config_lib.base_config()
    t = common.stage_train_config(c.train, c.sft)
    assert (t.lr, t.epochs, t.schedule) == (2e-5, 2.0, "linear")  # the paper's SFT
    assert c.train.lr == 5e-6  # the RM's, untouched
    assert t.clip_norm == c.train.clip_norm and t.optimizer == c.train.optimizer  # shared
    assert "warmup_epochs" not in t and "beta" not in t


def test_sft_loss_ignores_prompt_labels():
    """Through sft_step, with a stub LM whose logits do not depend on the input (a [T, V] table
    of parameters), so a changed token changes only its label, not any context."""
    T, V = 8, 11
    table = jax.random.normal(jax.random.key(0), (T, V))
    logits_fn = lambda p, ids, mask: jnp.broadcast_to(p["table"], (ids.shape[0], T, V))
    step = jax.jit(sft.sft_step(logits_fn))
    ids = np.array([[1, 4, 7, 8, 5, 9, 10, 2], [1, 4, 6, 5, 3, 2, 0, 0]], np.int32)
    attn = (np.arange(T)[None] < np.array([[8], [6]])).astype(np.int32)
    loss_mask = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 0, 0]], np.int32)

    def run(ids):
        b = {"sft": {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}}
        g, m = step({"table": table}, b, jax.random.key(0))
        return float(m["loss"]), np.asarray(g["table"])

    loss, grads = run(ids)
    # Hand computation: mean over the 5 response targets of -log softmax(table[t-1])[ids[t]].
    logp = np.asarray(jax.nn.log_softmax(table, axis=-1))
    want = -np.mean(
        [logp[t - 1, ids[b, t]] for b in range(2) for t in range(1, T) if loss_mask[b, t]]
    )
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    # Positions whose targets are prompt (or pad) tokens get exactly no gradient.
    assert np.all(grads[[0, 1, 2, 7]] == 0)  # targets 1..3 are prompt in both rows; 7 predicts none
    assert np.all(grads[[3, 4, 5, 6]] != 0)
    for b, t in [(0, 3), (0, 1), (1, 2), (1, 7)]:  # prompt labels and a pad label
        changed = ids.copy()
        changed[b, t] = (changed[b, t] + 3) % V
        l2, g2 = run(changed)
        assert l2 == loss and np.array_equal(g2, grads), (b, t)
    for b, t in [(0, 6), (1, 4), (0, 7)]:  # response labels (incl. the final EOS)
        changed = ids.copy()
        changed[b, t] = (changed[b, t] + 3) % V
        assert run(changed)[0] != loss, (b, t)


def test_sft_step_on_data_layer_batch_matches_numpy(world):
    """The real model on a real SFT batch: the step's loss is the numpy mean NLL of the response
    tokens (those after the last '\\n\\nAssistant:' marker, and the EOS); pad ids change nothing."""
    from metarm_jax import data as D

    config = make_config(world)
    tok = D.load_tokenizer(config.data.tokenizer_path)
    batch = next(D.sft_iterator(config.data, tok, shuffle=False, num_epochs=1))
    ids, attn, lm = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    for i in range(len(ids)):  # the data contract the step relies on
        n = attn[i].sum()
        start = np.flatnonzero(ids[i, :n] == synthetic.ASSISTANT_ID)[-1] + 1
        want = np.zeros_like(lm[i])
        want[start:n] = 1
        np.testing.assert_array_equal(lm[i], want)
    model = models.from_config(config.model, "lm", seed=config.seed)
    logits_fn, params, *_ = models.split(model, "lm")
    step = jax.jit(sft.sft_step(logits_fn))
    _, m = step(params, {"sft": batch}, jax.random.key(0))
    logits = jax.jit(logits_fn)(params, ids, attn)
    logp = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    nll = [
        -logp[b, t - 1, ids[b, t]]
        for b in range(len(ids))
        for t in range(1, ids.shape[1])
        if lm[b, t]
    ]
    np.testing.assert_allclose(float(m["loss"]), np.mean(nll), rtol=1e-5)
    assert float(m["num_tokens"]) == lm[:, 1:].sum()
    padded = dict(batch, input_ids=np.where(attn > 0, ids, 7))  # other ids in the padding
    _, m2 = step(params, {"sft": padded}, jax.random.key(0))
    assert float(m2["loss"]) == float(m["loss"])


def test_packed_sft_batches_hold_the_same_examples_and_loss(world):
    """data.pack_sft on real data-layer batches: each packed batch holds the unpacked batch's
    examples (token for token), in fewer computed tokens, and the step's loss and gradient are
    the unpacked step's (rows a multiple of row_multiple, for the devices and micro-batches)."""
    from metarm_jax import data as D
    from tests.tolerances import assert_close_to_scale

    config = make_config(world)
    tok = D.load_tokenizer(config.data.tokenizer_path)
    common_args = dict(shuffle=False, num_epochs=1, drop_remainder=False)
    plain = D.sft_iterator(config.data, tok, **common_args)
    packed = D.sft_iterator(config.data, tok, pack_sft=True, row_multiple=4, **common_args)
    model = models.from_config(config.model, "lm", seed=config.seed)
    logits_fn, params, *_ = models.split(model, "lm")
    step = jax.jit(sft.sft_step(logits_fn))
    computed = [0, 0]
    for i, (b, p) in enumerate(zip(plain, packed)):
        rows = [tuple(x[m > 0]) for x, m in zip(b["input_ids"], b["attention_mask"])]
        assert list(p) == ["packed"]
        seg = p["packed"].segment_ids
        got = [
            tuple(p["packed"].ids[r][seg[r] == s])
            for r in range(len(seg))
            for s in range(1, seg[r].max() + 1)
        ]
        assert sorted(got) == sorted(x for x in rows if x), i
        assert len(seg) % 4 == 0
        computed[0] += b["input_ids"].size
        computed[1] += seg.size
        if i < 2:
            g, m = step(params, {"sft": b}, jax.random.key(0))
            gp, mp = step(params, {"sft": p}, jax.random.key(0))
            assert float(mp["num_tokens"]) == float(m["num_tokens"])
            assert_close_to_scale(float(mp["loss"]), float(m["loss"]), 1e-5)
            for a, e in zip(jax.tree.leaves(gp), jax.tree.leaves(g)):
                assert_close_to_scale(np.asarray(a), np.asarray(e), 1e-5)
    assert computed[1] < computed[0]


def test_sft_stage_learns_and_exports_a_causal_lm(world, tmp_path):
    config = make_config(world)
    data = sft.layer_data(config)
    model = models.from_config(config.model, "lm", seed=config.seed)  # the stage's start
    logits_fn, params, *_ = models.split(model, "lm")
    before = sft.make_eval_fn(logits_fn, _mesh(), data.val)(params)
    t0 = time.time()
    out = sft.run_sft(_ctx(config, tmp_path))
    after = {k.removeprefix("eval/"): v for k, v in out.items() if k.startswith("eval/")}
    print(
        f"\nSFT 40 steps ({time.time() - t0:.0f}s): val loss {before['loss']:.3f} -> "
        f"{after['loss']:.3f}, token accuracy {before['token_accuracy']:.3f} -> "
        f"{after['token_accuracy']:.3f} ({after['tokens']:.0f} val tokens)"
    )
    assert after["loss"] < before["loss"] - 1.0
    assert after["token_accuracy"] > before["token_accuracy"] + 0.03
    rows = _rows(tmp_path / "sft" / "metrics.jsonl")
    assert len(rows) == 40 and rows[-1]["lr"] > 0 and rows[0]["lr"] == 0.0  # warm-up from 0
    _check_export_matches_transformers(tmp_path / "export" / "sft", world)


def _check_export_matches_transformers(export_dir, world):
    torch = pytest.importorskip("torch")
    import transformers

    from metarm_jax.models import hf

    assert os.path.isfile(os.path.join(export_dir, "tokenizer.json"))
    ours = hf.load_hf(str(export_dir), head="lm")
    theirs = transformers.LlamaForCausalLM.from_pretrained(
        str(export_dir), dtype=torch.float32
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(export_dir))
    enc = tok(
        ["\n\nHuman: w01 w02 w03\n\nAssistant: w04 w05", "\n\nHuman: w09\n\nAssistant:"],
        padding=True,
        return_tensors="np",
    )
    with torch.no_grad():
        want = theirs(
            input_ids=torch.tensor(enc["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(enc["attention_mask"]),
        ).logits.numpy()
    got = np.asarray(ours(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"])))
    real = enc["attention_mask"] > 0
    np.testing.assert_allclose(got[real], want[real], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# DPO
# --------------------------------------------------------------------------------------------


def _prompt_length_masks(batch):
    """The masks a prompt length gives: real tokens after the last '\\n\\nAssistant:' marker."""
    out = []
    for ids, mask in (
        (batch["chosen_ids"], batch["chosen_mask"]),
        (batch["rejected_ids"], batch["rejected_mask"]),
    ):
        real = np.where(mask > 0, ids, -1)
        last = np.array([np.flatnonzero(r == synthetic.ASSISTANT_ID)[-1] for r in real])
        col = np.arange(ids.shape[1])[None]
        out.append(((mask > 0) & (col > last[:, None])).astype(np.int32))
    return out


def _to_left_padding(ids, mask):
    out_ids, out_mask = np.zeros_like(ids), np.zeros_like(mask)
    for i, n in enumerate(mask.sum(1)):
        out_ids[i] = np.roll(ids[i], ids.shape[1] - n)
        out_mask[i] = np.roll(mask[i], ids.shape[1] - n)
    return out_ids, out_mask


def test_dpo_response_masks_give_the_prompt_length_loss(world):
    """The common-prefix masks (no prompt length in the batch) give the same DPO loss, margin and
    accuracy as the masks from the true prompt length, for right and left padding."""
    from metarm_jax import data as D

    config = make_config(world)
    tok = D.load_tokenizer(config.data.tokenizer_path)
    batch = dict(next(D.preference_iterator(config.data, tok, shuffle=False, num_epochs=1)))
    true_w, true_l = _prompt_length_masks(batch)
    # Make one pair's responses start with the same token (their first tokens differ otherwise).
    rej = batch["rejected_ids"].copy()
    for i in range(len(rej)):
        cw, rl = np.flatnonzero(true_w[i]), np.flatnonzero(true_l[i])
        if len(rl) >= 3 and batch["chosen_ids"][i, cw[1]] != rej[i, rl[1]]:
            rej[i, rl[0]] = batch["chosen_ids"][i, cw[0]]
            break
    batch["rejected_ids"] = rej
    left = dict(
        zip(
            dpo.PAIR_KEYS,
            (
                *_to_left_padding(batch["chosen_ids"], batch["chosen_mask"]),
                *_to_left_padding(rej, batch["rejected_mask"]),
            ),
        )
    )
    got_w, got_l = jax.device_get(dpo.response_masks(batch))
    left_w, left_l = jax.device_get(dpo.response_masks(left))
    # The masks agree except on shared first response tokens (inside the true mask only).
    assert np.all(got_w <= true_w) and np.all(got_l <= true_l)
    np.testing.assert_array_equal((true_w - got_w).sum(1), (true_l - got_l).sum(1))
    assert (true_w - got_w).sum() >= 1  # the shared-prefix case is exercised
    np.testing.assert_array_equal(left_w, _to_left_padding(got_w, batch["chosen_mask"])[0])
    np.testing.assert_array_equal(left_l, _to_left_padding(got_l, batch["rejected_mask"])[0])
    logits_fn, policy, *_ = models.split(models.from_config(config.model, "lm", seed=config.seed))
    ref = models.split(models.from_config(config.model, "lm", seed=1)).params
    params = {"policy": policy, "ref": ref}
    # Large β, so that the loss is far from log 2 with two random models.
    f = jax.jit(lambda p, b: dpo.dpo_loss_on_batch(logits_fn, p, b, 50.0, 0.0))
    with_masks = lambda b, w, l: dict(b, chosen_loss_mask=w, rejected_loss_mask=l)
    loss_true, m_true = f(params, with_masks(batch, true_w, true_l))
    assert abs(float(loss_true) - math.log(2)) > 0.05
    for b, w, l in ((batch, got_w, got_l), (left, left_w, left_l)):
        loss, m = f(params, with_masks(b, w, l))
        np.testing.assert_allclose(float(loss), float(loss_true), rtol=1e-5)
        # margin = β·h, h a difference of sums of ~-40: f32 rounding of β·40 is ~1e-4
        np.testing.assert_allclose(
            float(m["dpo/reward_margin"]), float(m_true["dpo/reward_margin"]), atol=1e-3
        )
        assert float(m["dpo/accuracy"]) == float(m_true["dpo/accuracy"])
        assert float(m["dpo/reward_chosen"]) != float(m_true["dpo/reward_chosen"])


def test_dpo_stage_starts_at_log2_and_raises_the_margin(world, tmp_path):
    """Policy = reference at step 0, so the first loss is log 2; 20 steps on the 64 toy pairs
    (eval on the same pairs) raise the implicit-reward margin and the accuracy."""
    config = make_config(world)
    config.data.eval_split = "train"
    t0 = time.time()
    out = dpo.run_dpo(_ctx(config, tmp_path))
    rows = _rows(tmp_path / "dpo" / "metrics.jsonl")
    first, last5 = rows[0], rows[-5:]
    print(
        f"\nDPO 20 steps ({time.time() - t0:.0f}s): step-1 loss {first['loss']!r} "
        f"(log 2 = {math.log(2)!r}); train margin (last 5 steps) "
        f"{np.mean([r['reward_margin'] for r in last5]):.3f}; eval on the 64 pairs: loss "
        f"{out['eval/loss']:.4f} margin {out['eval/reward_margin']:.3f} "
        f"accuracy {out['eval/accuracy']:.3f}"
    )
    # log 2 up to rounding. The implicit rewards are 0 up to ~1e-8: XLA fuses the policy's
    # forward (which feeds the backward) differently from the reference's, so -log σ(β h) lands
    # on float32(log 2) or a neighbour (seen: 0 ulps on AVX-512, 1 ulp on an AVX2-only EPYC).
    assert_within_ulps(first["loss"], math.log(2), max_ulps=4)
    assert abs(first["reward_margin"]) < 1e-6 and abs(first["reward_chosen"]) < 1e-6
    assert out["eval/reward_margin"] > 0.5 and out["eval/accuracy"] >= 0.75
    assert out["eval/loss"] < math.log(2) - 0.1
    assert os.path.isfile(tmp_path / "export" / "dpo" / "model.safetensors")


def test_dpo_reference_stays_bitwise_unchanged_and_resume_is_exact(world, tmp_path):
    """The loop with dpo_step and frozen_ref_optimizer (reference in bf16): after 4 steps the
    reference is bitwise the same and the policy moved; 2 steps, then a restart in the same
    workdir to 4 (resume from the checkpoint) gives bitwise the policy of the straight run."""
    from metarm_jax import data as D

    config = make_config(world)
    tok = D.load_tokenizer(config.data.tokenizer_path)
    t = common.stage_train_config(config.train, config.dpo)
    opt, sched = optim.optimizer(t, 4)

    def run(workdir, steps):
        logits_fn, policy, *_ = models.split(
            models.from_config(config.model, "lm", seed=config.seed)
        )
        ref = dpo.reference_params(config, None, None, "bfloat16")
        start = jax.device_get({"policy": policy, "ref": ref})
        with jax.set_mesh(_mesh()):
            params, summary = loop.train(
                t,
                mesh=_mesh(),
                workdir=str(workdir),
                params={"policy": policy, "ref": ref},
                step_fn=dpo.dpo_step(logits_fn, 0.1, 0.0),
                seed=0,
                batches={"pref": D.preference_iterator(config.data, tok, num_epochs=0)},
                total_steps=steps,
                optimizer=dpo.frozen_ref_optimizer(opt),
                schedule=sched,
            )
        return start, jax.device_get(params), summary

    start, straight, _ = run(tmp_path / "straight", 4)
    for a, b in zip(jax.tree.leaves(start["ref"]), jax.tree.leaves(straight["ref"])):
        assert a.dtype == jnp.bfloat16 and np.array_equal(a.view(np.uint16), b.view(np.uint16))
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(start["policy"]), jax.tree.leaves(straight["policy"]))
    )
    run(tmp_path / "resumed", 2)
    _, resumed, summary = run(tmp_path / "resumed", 4)
    assert summary["resumed_from"] == 2
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# --------------------------------------------------------------------------------------------
# Exact resume (SIGKILL) and the entry point.
# --------------------------------------------------------------------------------------------

DRIVER = CONFIG_SRC + textwrap.dedent("""
    import os, sys, time
    import jax
    from metarm_jax import sharding
    from metarm_jax.config import stages
    from metarm_jax.train import loop, sft
    world, workdir, slow = sys.argv[1], sys.argv[2], float(sys.argv[3])
    c = make_config(world)
    c.sft.update(dict(steps=8, warmup=3.0))
    c.train.update(dict(save_every=2, keep=2))
    if slow:
        put = sharding.global_batch
        sharding.global_batch = lambda mesh, b: (time.sleep(slow), put(mesh, b))[1]
    sft.run_sft(stages.StageContext(c, sharding.make_mesh({"data": 1}), workdir))
""")


def _driver(tmp_path, world, workdir, slow=0.0, wait=True):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    # One CPU device; the runs share a compilation cache (the later ones load the first's code).
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        XLA_FLAGS=xla_flags(1),
        JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), world, str(workdir), str(slow)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        return out
    return proc


def test_sft_sigkill_then_resume_is_bitwise_identical(world, tmp_path):
    _driver(tmp_path, world, tmp_path / "straight")
    killed = tmp_path / "killed"
    proc = _driver(tmp_path, world, killed, slow=0.25, wait=False)
    kill_at_checkpoint(proc, killed / "sft" / "checkpoints", 4)
    assert not (killed / "export").exists()  # it really died mid-run
    out = _driver(tmp_path, world, killed)
    assert "resuming sft from" in out
    assert_same_exports(tmp_path / "straight", killed, "sft")


def test_sft_then_dpo_from_main(world, tmp_path):
    cfg = tmp_path / "sft_dpo.py"
    cfg.write_text(
        CONFIG_SRC
        + textwrap.dedent(f"""
        def get_config():
            c = make_config({world!r})
            c.pipeline = ("sft", "dpo")
            c.sft.steps, c.dpo.steps, c.dpo.init = 4, 3, "sft"
            return c
    """)
    )
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS=xla_flags(1))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "metarm_jax.main",
            f"--config={cfg}",
            f"--workdir={tmp_path / 'run'}",
            "--config.dpo.beta=0.2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for stage in ("sft", "dpo"):
        assert os.path.isfile(tmp_path / "run" / "export" / stage / "model.safetensors")
    assert len(_rows(tmp_path / "run" / "dpo" / "metrics.jsonl")) == 3
