"""Shared-prompt packing (metarm_jax.data.packing) is exact: rewards, the preference loss, J, DPO,
and the vanilla and MetaRM gradients (first and second order) on packed rows equal those of the
unpacked batch, for uneven response lengths, responses sharing more than the prompt, and masked
meta samples; PPO's roll-out scoring (actor, reference, critic and RM on rows holding a prompt
and g of its roll-outs) equals the unpacked scoring at every real response token; and packed
SFT (several examples per row, ``packing.pack_examples``) gives the unpacked batch's SFT loss
and gradient. The packed rows are the same whichever side the batch was padded on (tested
exactly), and the unpacked references use left padding for pairs and right for meta, so both
sides are compared against. The reference is the unpacked computation of the same model (itself
checked against HF transformers in test_models_hf.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metarm_jax.core import metarm
from metarm_jax.data import features as F
from metarm_jax.data import packing
from metarm_jax.models import factory, llama
from tests.tolerances import assert_close_to_scale

RTOL = 1e-5
PAD = 0
BUCKETS = (16, 24)


@pytest.fixture(scope="module")
def rm():
    cfg = llama.preset("tiny", vocab_size=64)
    model = llama.create(cfg, "reward", seed=3)
    apply, params, *_ = factory.split(model)
    # A non-zero score head and norms away from 1, so every path matters.
    params = jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), params
    )
    return apply, params


def _seqs(rng, prompt_len, reply_lens, share=0):
    """BOS-less sequences prompt + reply_i; the first ``share`` reply tokens equal across i."""
    prompt = rng.integers(3, 64, prompt_len)
    common = rng.integers(3, 64, share)
    return [
        np.concatenate([prompt, common, rng.integers(3, 64, n - share), [2]]).astype(np.int32)
        for n in reply_lens
    ]


def _pairs(side, seed=0):
    rng = np.random.default_rng(seed)
    rows = [
        _seqs(rng, 7, (3, 5)),
        _seqs(rng, 2, (9, 1)),
        _seqs(rng, 11, (4, 4), share=2),
        _seqs(rng, 1, (6, 12)),
    ]
    T = 24
    ci, cm = F._pad_rows([r[0] for r in rows], T, PAD, side)
    ri, rm_ = F._pad_rows([r[1] for r in rows], T, PAD, side)
    return {"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm_}


def _meta(side, seed=1, k=4):
    rng = np.random.default_rng(seed)
    groups = [
        _seqs(rng, 6, (3, 7, 2, 5)),
        _seqs(rng, 3, (8, 1, 4, 4), share=1),
        _seqs(rng, 9, (2, 6, 3, 5)),
    ]
    smask = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 1, 0, 0]], np.int32)  # row 2: one sample
    T = 16
    flat = [
        s if smask[i, j] else np.zeros(0, np.int32)
        for i, g in enumerate(groups)
        for j, s in enumerate(g)
    ]
    ids, mask = F._pad_rows(flat, T, PAD, side)
    return {
        "input_ids": ids.reshape(3, k, T),
        "attention_mask": mask.reshape(3, k, T),
        "sample_mask": smask,
    }


def _jnp(b):
    return jax.tree.map(jnp.asarray, b)


def test_common_prefix_keeps_one_token_per_sequence():
    a, b = np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4, 5])
    assert packing.common_prefix([a, b]) == 3  # a keeps its last token
    assert packing.common_prefix([np.array([1, 2, 9]), np.array([1, 2, 8, 7])]) == 2
    assert packing.common_prefix([np.array([5, 6]), np.zeros(0, int)]) == 1
    assert packing.common_prefix([np.zeros(0, int)] * 3) == 0


def test_packed_rows_compute_fewer_tokens_and_read_each_response():
    b = _pairs("right")
    p = packing.pack_pairs(b, BUCKETS, PAD)
    unpacked = int(b["chosen_mask"].sum() + b["rejected_mask"].sum())
    shared = 0  # the common prefix of each pair (prompt, and any reply tokens that agree)
    for c, cm, r, rm_ in zip(
        b["chosen_ids"], b["chosen_mask"], b["rejected_ids"], b["rejected_mask"]
    ):
        c, r = list(c[cm > 0]), list(r[rm_ > 0])
        n = 0
        while n < min(len(c), len(r)) - 1 and c[n] == r[n]:
            n += 1
        shared += n
    assert shared >= 7 + 2 + 11 + 1 + 2  # the prompts and row 2's two shared reply tokens
    assert sorted(p) == [packing.KEY]  # the ids and masks are replaced by the packed rows
    rows = p[packing.KEY]
    assert packing.packed_tokens(rows) == unpacked - shared
    # The token read for a reward is each sequence's last real token (EOS here).
    assert (np.take_along_axis(rows.ids, rows.read_at, 1) == 2).all()
    assert rows.ids.shape[1] in packing.packed_buckets(BUCKETS, 2)


def test_pair_rewards_and_gradients_equal_unpacked(rm, side="left"):
    apply, params = rm
    b = _pairs(side)
    pb = packing.pack_pairs(b, BUCKETS, PAD)
    f = jax.jit(
        lambda p, batch: (
            metarm.pair_rewards(apply, p, batch),
            metarm.vanilla_grads(apply, p, batch, 0.0),
        )
    )
    (r_w, r_l), (g, m) = f(params, _jnp(b))
    (p_w, p_l), (gp, mp) = f(params, _jnp(pb))
    assert_close_to_scale(np.asarray(p_w), np.asarray(r_w), RTOL)
    assert_close_to_scale(np.asarray(p_l), np.asarray(r_l), RTOL)
    assert_close_to_scale(float(mp["loss"]), float(m["loss"]), RTOL)
    for a, e in zip(jax.tree.leaves(gp), jax.tree.leaves(g)):
        assert_close_to_scale(np.asarray(a), np.asarray(e), RTOL)


def test_meta_rewards_and_J_equal_unpacked_with_masked_samples(rm, side="right"):
    apply, params = rm
    b = _meta(side)
    pb = packing.pack_meta(b, BUCKETS, PAD)
    assert pb[packing.KEY].read_at.shape == (3, 4)
    f = jax.jit(
        lambda p, batch: (
            metarm.meta_rewards(apply, p, batch),
            metarm.meta_loss(apply, p, batch),
        )
    )
    r, j = f(params, _jnp(b))
    rp, jp = f(params, _jnp(pb))
    r, rp = np.asarray(r), np.asarray(rp)
    real = b["sample_mask"] > 0
    assert np.isfinite(rp).all()
    assert_close_to_scale(rp[real], r[real], RTOL)
    assert_close_to_scale(float(jp), float(j), RTOL)


def test_packing_does_not_depend_on_the_padding_side():
    for pack, make in ((packing.pack_pairs, _pairs), (packing.pack_meta, _meta)):
        left, right = pack(make("left"), BUCKETS, PAD), pack(make("right"), BUCKETS, PAD)
        assert jax.tree.structure(left) == jax.tree.structure(right)
        for (path, a), b in zip(jax.tree.leaves_with_path(left), jax.tree.leaves(right)):
            np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("order", ["first", "second"])
def test_metarm_gradient_equals_unpacked(rm, order, side="left"):
    apply, params = rm
    pref, meta = _pairs(side, seed=5), _meta(side, seed=6)
    ppref = packing.pack_pairs(pref, BUCKETS, PAD)
    pmeta = packing.pack_meta(meta, BUCKETS, PAD)
    eta = 0.5  # large enough that θ' is far from θ, so the ascent's correctness shows
    step = jax.jit(
        lambda p, a, b: metarm.meta_grads(
            apply, p, a, b, eta, order, measure_j_prime=True, center=0.0
        )
    )
    g, m = step(params, _jnp(pref), _jnp(meta))
    gp, mp = step(params, _jnp(ppref), _jnp(pmeta))
    for key in ("loss", "meta/J", "meta/J_prime", "meta/grad_J_norm", "grad_norm"):
        assert_close_to_scale(float(mp[key]), float(m[key]), RTOL, err_msg=key)
    for a, e in zip(jax.tree.leaves(gp), jax.tree.leaves(g)):
        assert_close_to_scale(np.asarray(a), np.asarray(e), RTOL)


def test_dpo_loss_and_gradient_equal_unpacked():
    from metarm_jax.train import dpo

    model = llama.create(llama.preset("tiny", vocab_size=64), "lm", seed=4)
    apply, policy, *_ = factory.split(model)
    ref = jax.tree.map(
        lambda x: x + 0.02 * jax.random.normal(jax.random.key(2), x.shape, x.dtype), policy
    )
    b = _pairs("left", seed=7)
    pb = packing.pack_pairs(b, BUCKETS, PAD)

    def loss_and_grad(batch):
        f = lambda p: dpo.dpo_loss_on_batch(apply, {"policy": p, "ref": ref}, batch, 0.1, 0.0)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(policy)

    (loss, m), g = loss_and_grad(_jnp(b))
    (lossp, mp), gp = loss_and_grad(_jnp(pb))
    assert_close_to_scale(float(lossp), float(loss), RTOL)
    for key in ("dpo/logp_chosen", "dpo/logp_rejected", "dpo/reward_margin"):
        assert_close_to_scale(float(mp[key]), float(m[key]), RTOL, err_msg=key)
    for a, e in zip(jax.tree.leaves(gp), jax.tree.leaves(g)):
        assert_close_to_scale(np.asarray(a), np.asarray(e), RTOL)


# ------------------------------------------------------------------------------------------
# Packed SFT: independent examples share a row, each its own segment and positions.


def _sft_examples(seed=8):
    """(ids, loss mask) of uneven lengths: a prompt (loss 0) then a reply and EOS (loss 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for prompt, reply in [(5, 3), (2, 9), (11, 4), (1, 1), (7, 6), (3, 2), (9, 12), (4, 4)]:
        ids = np.concatenate([[1], rng.integers(3, 64, prompt + reply), [2]]).astype(np.int32)
        loss = np.concatenate([np.zeros(1 + prompt), np.ones(reply + 1)]).astype(np.int32)
        out.append((ids, loss))
    return out


def test_pack_examples_places_every_example_whole():
    ex = _sft_examples() + [(np.zeros(0, np.int32), np.zeros(0, np.int32))]  # a padding row
    p = packing.pack_examples(ex, (24, 32, 48), PAD, row_multiple=2)
    rows, length = p.ids.shape
    assert length in (24, 32, 48) and rows % 2 == 0 and rows < len(ex)
    found = []
    for r in range(rows):
        seg = p.segment_ids[r]
        for s in range(1, seg.max() + 1):
            at = np.flatnonzero(seg == s)
            assert (np.diff(at) == 1).all()  # contiguous
            np.testing.assert_array_equal(p.positions[r, at], np.arange(len(at)))
            found.append((tuple(p.ids[r, at]), tuple(p.loss_mask[r, at])))
    assert sorted(found) == sorted((tuple(i), tuple(m)) for i, m in ex if len(i))
    assert packing.packed_tokens(p) == sum(len(i) for i, _ in ex)
    # rows x length is the fewest computed tokens over the row lengths that fit
    for other in (24, 32, 48):
        q = packing.pack_examples(ex, (other,), PAD, row_multiple=2)
        assert q.ids.size >= p.ids.size
    with pytest.raises(ValueError, match="past every row length"):
        packing.pack_examples(ex, (8,), PAD)


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_sft_loss_and_gradient_equal_unpacked(side):
    from metarm_jax.train import sft

    model = llama.create(llama.preset("tiny", vocab_size=64), "lm", seed=5)
    apply, params, *_ = factory.split(model)
    ex = _sft_examples()
    T = 24
    ids, attn = F._pad_rows([i for i, _ in ex], T, PAD, side)
    loss_mask, _ = F._pad_rows([m for _, m in ex], T, 0, side)
    unpacked = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}
    packed = {packing.KEY: packing.pack_examples(ex, (24, 48), PAD)}
    assert packed[packing.KEY].ids.size < ids.size

    def loss_and_grad(batch):
        f = lambda p: sft.sft_loss_on_batch(apply, p, batch)
        return jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    (loss, m), g = loss_and_grad(_jnp(unpacked))
    (lossp, mp), gp = loss_and_grad(_jnp(packed))
    assert float(mp["sft/num_tokens"]) == float(m["sft/num_tokens"]) == loss_mask[:, 1:].sum()
    assert_close_to_scale(float(lossp), float(loss), RTOL)
    assert_close_to_scale(float(mp["sft/token_accuracy"]), float(m["sft/token_accuracy"]), RTOL)
    for a, e in zip(jax.tree.leaves(gp), jax.tree.leaves(g)):
        assert_close_to_scale(np.asarray(a), np.asarray(e), RTOL)


# ------------------------------------------------------------------------------------------
# PPO scoring: a prompt and g of its roll-outs in one row.


def _rollout_rows(q=3, r=4, w=10, tn=7, seed=9):
    """q left-padded prompts of uneven length, each repeated r times, then r responses of Tn
    slots (a prefix of real tokens; one response is empty, one fills every slot)."""
    rng = np.random.default_rng(seed)
    p_len = [10, 4, 7]
    ids = np.zeros((q * r, w + tn), np.int32)
    mask = np.zeros_like(ids)
    lens = rng.integers(1, tn + 1, q * r)
    lens[1], lens[5] = 0, tn
    for i in range(q):
        prompt = rng.integers(3, 64, p_len[i])
        for j in range(r):
            row = i * r + j
            ids[row, w - p_len[i] : w], mask[row, w - p_len[i] : w] = prompt, 1
            ids[row, w : w + lens[row]] = rng.integers(3, 64, lens[row])
            mask[row, w : w + lens[row]] = 1
    return ids, mask, tn


@pytest.mark.parametrize("g", [2, 4])
def test_ppo_scoring_on_packed_rows_equals_unpacked(g):
    from metarm_jax.train import rollout_scoring

    cfg = llama.preset("tiny", vocab_size=64)
    jitter = lambda tree, seed: jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed), x.shape, x.dtype), tree
    )
    splits = {
        head: factory.split(llama.create(cfg, head, seed=s))
        for head, s in (("lm", 1), ("value", 2), ("reward", 3))
    }
    lm_apply, actor = splits["lm"][:2]
    ref = jitter(actor, 4)
    value_apply, critic = splits["value"][0], jitter(splits["value"][1], 5)
    rm_apply, rm_params = splits["reward"][0], jitter(splits["reward"][1], 6)
    ids, mask, tn = _rollout_rows()
    args = (actor, ref, critic, rm_params, jnp.asarray(ids), jnp.asarray(mask), tn)
    plain = rollout_scoring.make_score_fn(lm_apply, lm_apply, value_apply, rm_apply)(*args)
    packed = rollout_scoring.make_score_fn(
        lm_apply, lm_apply, value_apply, rm_apply, per_prompt=4, cfg=cfg, group=g
    )(*args)
    real = mask[:, -tn:] > 0
    assert_close_to_scale(np.asarray(packed["score"]), np.asarray(plain["score"]), RTOL)
    for key in ("old_logp", "ref_logp", "values"):
        got, want = np.asarray(packed[key]), np.asarray(plain[key])
        assert np.isfinite(got).all(), key
        assert_close_to_scale(got[real], want[real], RTOL, err_msg=key)
    # the layout computes each prompt once per g roll-outs
    rows, _ = rollout_scoring.pack_scoring_rows(jnp.asarray(ids), jnp.asarray(mask), tn, g)
    assert rows.ids.shape == (len(ids) // g, ids.shape[1] - tn + g * tn)


def test_score_group_weighs_prompt_tokens_against_attention():
    cfg = llama.preset("tiny", vocab_size=64)
    from metarm_jax.train.rollout_scoring import score_group

    # a long prompt and short responses: the whole group in one row
    assert score_group(cfg, rows=64, per_prompt=8, width=256, num_response=8, dp=1) == 8
    # no prompt to share: unpacked
    assert score_group(cfg, rows=64, per_prompt=8, width=0, num_response=64, dp=1) == 1
    # rows / g must stay divisible by the data-parallel devices
    assert score_group(cfg, rows=16, per_prompt=8, width=256, num_response=8, dp=4) == 4
