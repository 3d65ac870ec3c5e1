"""The sampler against HF transformers generate, a full forward pass, a NumPy reference of the
logits filters, a chi-square test of the sampled frequencies, and 8 simulated devices."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax.config import defaults
from metarm_jax.generation import logits as logits_lib
from metarm_jax.generation import sampling
from metarm_jax.models import hf, llama
from tests.xla_env import xla_flags

MAX_NEW = 12
LENGTHS = (5, 9, 3, 7)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = llama.preset("tiny")
    model = llama.create(cfg, "lm", seed=0)
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    hf.save_hf(model, path)
    return cfg, model, path


@pytest.fixture(scope="module")
def hf_model(tiny):
    import transformers

    return transformers.LlamaForCausalLM.from_pretrained(tiny[2]).eval()


def left_padded(vocab, lengths=LENGTHS, seed=0, pad_id=0):
    rs = np.random.RandomState(seed)
    t = max(lengths)
    ids = np.full((len(lengths), t), pad_id, np.int64)
    mask = np.zeros((len(lengths), t), np.int64)
    for i, n in enumerate(lengths):
        ids[i, t - n :] = rs.randint(3, vocab, n)
        mask[i, t - n :] = 1
    return ids, mask


def hf_greedy(hf_model, ids, mask, **kw):
    import torch

    with torch.inference_mode():
        out = hf_model.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            pad_token_id=0,
            **kw,
        )
    new = out[:, ids.shape[1] :].numpy()
    return np.pad(new, ((0, 0), (0, MAX_NEW - new.shape[1])), constant_values=0)


# ------------------------------------------------------------------ HF parity (greedy)


@pytest.mark.parametrize("penalty", [1.0, 1.1])
def test_greedy_matches_hf(tiny, hf_model, penalty):
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    out = sampling.generate(
        model,
        ids,
        mask,
        0,
        sampling.settings(max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=penalty),
        eos_id=None,
    )
    ref = hf_greedy(hf_model, ids, mask, repetition_penalty=penalty, eos_token_id=None)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert np.asarray(out.mask).all()


def test_greedy_eos_stopping_matches_hf(tiny, hf_model):
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    free = np.asarray(
        sampling.generate(
            model,
            ids,
            mask,
            0,
            sampling.settings(max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=1.1),
            eos_id=None,
        ).tokens
    )
    # An eos that greedy hits early in some row but not first in every row.
    eos = int(free[1, 2])
    assert eos not in free[1, :2]
    out = sampling.generate(
        model,
        ids,
        mask,
        0,
        sampling.settings(max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=1.1),
        eos_id=eos,
    )
    ref = hf_greedy(hf_model, ids, mask, repetition_penalty=1.1, eos_token_id=eos)
    tokens, got_mask = np.asarray(out.tokens), np.asarray(out.mask)
    np.testing.assert_array_equal(tokens, ref)
    for row in range(len(LENGTHS)):  # mask covers everything up to and including the first eos
        hits = np.flatnonzero(free[row] == eos)
        n = hits[0] + 1 if len(hits) else MAX_NEW
        np.testing.assert_array_equal(got_mask[row], np.arange(MAX_NEW) < n)
    assert got_mask[1].sum() == 3 and tokens[1, 2] == eos and (tokens[1, 3:] == 0).all()

    # min_new_tokens suppresses the eos until then, as HF's MinNewTokensLengthLogitsProcessor.
    out = sampling.generate(
        model,
        ids,
        mask,
        0,
        sampling.settings(
            max_new_tokens=MAX_NEW, min_new_tokens=5, temperature=0.0, repetition_penalty=1.1
        ),
        eos_id=eos,
    )
    ref = hf_greedy(hf_model, ids, mask, repetition_penalty=1.1, eos_token_id=eos, min_new_tokens=5)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert np.asarray(out.mask)[1].sum() >= 5

    # Extra stop tokens stop like eos.
    out = sampling.generate(
        model,
        ids,
        mask,
        0,
        sampling.settings(
            max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=1.1, stop_token_ids=[eos]
        ),
        eos_id=None,
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), tokens)


def test_right_padded_prompts_are_repacked(tiny):
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    right_ids = np.zeros_like(ids)
    right_mask = np.zeros_like(mask)
    for i, n in enumerate(LENGTHS):
        right_ids[i, :n] = ids[i, ids.shape[1] - n :]
        right_mask[i, :n] = 1
    a = sampling.generate(model, ids, mask, 3, sampling.settings(max_new_tokens=MAX_NEW))
    b = sampling.generate(
        model, right_ids, right_mask, 3, sampling.settings(max_new_tokens=MAX_NEW)
    )
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


# ------------------------------------------------------------------ cache vs full forward


def test_cache_decoding_matches_full_forward(tiny):
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    out = sampling.generate(
        model,
        ids,
        mask,
        1,
        sampling.settings(
            max_new_tokens=MAX_NEW,
            temperature=0.8,
            top_p=0.9,
            repetition_penalty=1.1,
            prompt_bucket_min=4,
        ),
        num_samples=2,
        return_logits=True,
    )
    tokens, logits = np.asarray(out.tokens), np.asarray(out.logits)
    full_ids = np.concatenate([np.repeat(ids, 2, 0), tokens], 1)
    full_mask = np.concatenate([np.repeat(mask, 2, 0), np.asarray(out.mask)], 1)
    full = np.asarray(model(jnp.asarray(full_ids), jnp.asarray(full_mask)))
    t = ids.shape[1]
    ref = full[:, t - 1 : t - 1 + MAX_NEW]  # logits that predict each new token
    live = np.asarray(out.mask) > 0  # after a stop token: ignored
    assert live.sum() > 0.8 * live.size
    np.testing.assert_allclose(logits[live], ref[live], atol=2e-5, rtol=1e-5)
    ref_lp = np.take_along_axis(jax.nn.log_softmax(ref), tokens[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.asarray(out.model_logprobs)[live], ref_lp[live], atol=2e-5)


# ------------------------------------------------------------------ filters vs NumPy


def np_process(logits, seen, penalty, temperature, top_k, top_p):
    """HF's processors written out in NumPy: penalty, temperature, top-k, top-p (ascending)."""
    x = logits.astype(np.float64).copy()
    x = np.where(seen, np.where(x < 0, x * penalty, x / penalty), x)
    x = x / temperature
    if top_k > 0:
        kth = np.sort(x, -1)[:, -top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1:
        for r in range(x.shape[0]):
            order = np.argsort(x[r])  # ascending
            p = np.exp(x[r, order] - x[r, order].max())
            p /= p.sum()
            remove = np.cumsum(p) <= 1 - top_p
            remove[-1] = False  # min_tokens_to_keep = 1
            x[r, order[remove]] = -np.inf
    return x


@pytest.mark.parametrize(
    "penalty,temperature,top_k,top_p",
    [
        (1.0, 1.0, 0, 1.0),
        (1.1, 0.8, 0, 0.9),
        (1.3, 1.0, 5, 1.0),
        (1.1, 0.7, 8, 0.6),
        (1.0, 1.5, 0, 0.3),
        (1.0, 1.0, 1, 1.0),
        (1.0, 1.0, 0, 0.01),
    ],
)
def test_filters_match_numpy(penalty, temperature, top_k, top_p):
    rs = np.random.RandomState(1)
    logits = (rs.randn(6, 40) * 2).astype(np.float32)
    seen = rs.rand(6, 40) < 0.3
    knobs = dict(
        repetition_penalty=jnp.float32(penalty),
        temperature=jnp.float32(temperature),
        top_k=jnp.int32(top_k),
        top_p=jnp.float32(top_p),
        min_new_tokens=jnp.int32(0),
    )
    got = np.asarray(
        logits_lib.process_logits(
            jnp.asarray(logits), jnp.asarray(seen), knobs, jnp.zeros((40,), bool), 0
        )
    )
    ref = np_process(logits, seen, penalty, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-6)
    assert fin.any(axis=1).all()


# Chi-square critical values at p = 0.001 by degrees of freedom.
CHI2_999 = {
    1: 10.83,
    2: 13.82,
    3: 16.27,
    4: 18.47,
    5: 20.52,
    6: 22.46,
    7: 24.32,
    8: 26.12,
    9: 27.88,
    10: 29.59,
    11: 31.26,
}


def chi_square(counts, probs):
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    return float((((counts[keep] - expected) ** 2) / expected).sum()), int(keep.sum() - 1)


def test_sampled_frequencies_follow_filtered_distribution():
    rs = np.random.RandomState(2)
    v, n = 12, 20000
    logits = rs.randn(v).astype(np.float32) * 1.5
    seen = np.zeros(v, bool)
    seen[[0, 3]] = True
    knobs = dict(
        repetition_penalty=jnp.float32(1.1),
        temperature=jnp.float32(0.8),
        top_k=jnp.int32(0),
        top_p=jnp.float32(0.9),
        min_new_tokens=jnp.int32(0),
    )
    batch = jnp.broadcast_to(jnp.asarray(logits), (n, v))
    proc = logits_lib.process_logits(
        batch, jnp.broadcast_to(jnp.asarray(seen), (n, v)), knobs, jnp.zeros((v,), bool), 0
    )
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(7), jnp.arange(n))
    tokens = np.asarray(logits_lib.sample_rows(keys, proc))
    counts = np.bincount(tokens, minlength=v)

    ref = np_process(logits[None], seen[None], 1.1, 0.8, 0, 0.9)[0]
    probs = np.exp(ref - ref.max())
    probs /= probs.sum()
    assert 2 <= (probs > 0).sum() < v  # the filter removed something and kept a choice
    assert counts[probs == 0].sum() == 0, "sampled a token that top-p removed"
    stat, df = chi_square(counts, probs)
    assert stat < CHI2_999[df], (stat, df, counts, probs * n)
    # The test has power: the unfiltered distribution is rejected.
    raw = np.exp(logits - logits.max())
    raw /= raw.sum()
    stat_raw, df_raw = chi_square(counts, raw)
    assert stat_raw > CHI2_999[df_raw]


# ------------------------------------------------------------------ seeds and samples


def test_seeds_and_num_samples(tiny):
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    settings = sampling.settings(
        max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.95, repetition_penalty=1.1
    )
    a = sampling.generate(model, ids, mask, jax.random.key(5), settings, num_samples=3)
    b = sampling.generate(model, ids, mask, jax.random.key(5), settings, num_samples=3)
    c = sampling.generate(model, ids, mask, jax.random.key(6), settings, num_samples=3)
    ta, tb, tc = (np.asarray(o.tokens) for o in (a, b, c))
    assert ta.shape == (len(LENGTHS) * 3, MAX_NEW)
    np.testing.assert_array_equal(ta, tb)
    np.testing.assert_array_equal(np.asarray(a.logprobs), np.asarray(b.logprobs))
    assert (ta != tc).any(axis=1).all()
    for i in range(len(LENGTHS)):  # a prompt's continuations differ from each other
        rows = ta[3 * i : 3 * i + 3]
        assert len({r.tobytes() for r in rows}) == 3
    lp, mlp = np.asarray(a.logprobs), np.asarray(a.model_logprobs)
    assert (lp <= 0).all() and (mlp <= 0).all() and np.isfinite(lp).all()
    assert not np.allclose(lp, mlp)  # processed (T=1, top-p 0.95, penalty) != raw


def test_bucketing_and_errors(tiny):
    assert sampling.bucket_length(3, 16) == 16
    assert sampling.bucket_length(17, 16) == 32
    assert sampling.bucket_length(64, 16) == 64
    cfg, model, _ = tiny
    ids, mask = left_padded(cfg.vocab_size)
    mask[2] = 0
    with pytest.raises(sampling.SamplingError, match="row 2"):
        sampling.generate(model, ids, mask, 0, sampling.settings(max_new_tokens=4))
    with pytest.raises(sampling.SamplingError, match="expected a SamplingSettings"):
        sampling.generate(model, ids, np.ones_like(ids), 0, {"top_p": 0.9})
    with pytest.raises(sampling.SamplingError, match="top_p"):
        sampling.settings(top_p=0.0)
    with pytest.raises(sampling.SamplingError, match="min_new_tokens=9 must be in"):
        sampling.settings(max_new_tokens=4, min_new_tokens=9)
    with pytest.raises(sampling.SamplingError, match="max_new_tokens=0"):
        sampling.settings(max_new_tokens=0)
    with pytest.raises(sampling.SamplingError, match=r"unknown setting\(s\) \['num_samples'\]"):
        sampling.settings(num_samples=2)  # the caller sets it: generate(num_samples=...)


def test_settings_come_from_the_sampling_block_and_defaults_py(monkeypatch):
    """Every sampling default lives in defaults.py: the settings are the block's keys but its
    seed, and a direct call without a config gets what defaults.sampling() says."""
    block = defaults.sampling()
    assert (block.temperature, block.top_p, block.top_k, block.repetition_penalty) == (
        0.8,
        0.9,
        0,
        1.1,
    )
    got = dataclasses.asdict(sampling.settings(block))
    assert set(got) == set(block) - {"seed"}
    assert got == {
        k: tuple(v) if k == "stop_token_ids" else v for k, v in block.items() if k in got
    }
    block.top_k, block.stop_token_ids = 7, [5, 6]
    changed = sampling.settings(block, temperature=0)
    assert (changed.top_k, changed.stop_token_ids, changed.temperature) == (7, (5, 6), 0.0)
    assert isinstance(changed.temperature, float)
    monkeypatch.setattr(defaults, "sampling", lambda: block)
    assert sampling.settings().top_k == 7
    del block.top_k
    with pytest.raises(sampling.SamplingError, match=r"config.sampling has no \['top_k'\]"):
        sampling.settings(block)


# ------------------------------------------------------------------ 8 simulated devices

SHARDED_SCRIPT = r"""
import numpy as np, jax
from metarm_jax import sharding
from metarm_jax.generation import sampling
from metarm_jax.models import llama
assert len(jax.devices()) == 8, jax.devices()
cfg = llama.preset("tiny")
rs = np.random.RandomState(0)
ids = rs.randint(3, 256, (3, 9)); mask = np.ones_like(ids); mask[0, :4] = 0; mask[2, :6] = 0
kw = dict(max_new_tokens=10, repetition_penalty=1.1)
greedy = sampling.settings(temperature=0.0, **kw)
top_p = sampling.settings(temperature=0.8, top_p=0.9, **kw)
def run(mesh):
    model = llama.create(cfg, "lm", seed=0, mesh=mesh)
    g = sampling.generate(model, ids, mask, 0, greedy, num_samples=2)
    s = sampling.generate(model, ids, mask, 4, top_p, num_samples=2)
    if mesh is not None:  # the params stay where the sharding table put them
        assert model.layers.q[...].sharding.mesh.shape == mesh.shape
        assert g.tokens.sharding.mesh.shape == mesh.shape
    return np.asarray(g.tokens), np.asarray(s.tokens), np.asarray(s.logprobs)
ref = run(None)
for shape in ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 8}):
    got = run(sharding.make_mesh(shape))
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[2], ref[2], atol=1e-4)
print("SHARDED_OK")
"""


def test_sharded_equals_single_device():
    if len(jax.devices()) == 8:
        exec(compile(SHARDED_SCRIPT, "<sharded>", "exec"), {})
        return
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(8),
    )
    res = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert "SHARDED_OK" in res.stdout, res.stdout + res.stderr
