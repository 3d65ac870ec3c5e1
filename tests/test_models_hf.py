"""Our Llama against HF transformers (PyTorch, fp32), and HF checkpoint import/export."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from metarm_jax.models import hf, llama

PAD = 0
# (name, kv_heads, tied, rope_theta, eps, head_dim)
CONFIGS = [
    ("mha_untied", 4, False, 10000.0, 1e-5, 0),
    ("gqa_tied", 2, True, 500000.0, 1e-6, 0),
    ("mqa_untied_headdim", 1, False, 500000.0, 1e-5, 8),
]


def hf_config(kv, tied, theta, eps, head_dim, **kw):
    return transformers.LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv,
        tie_word_embeddings=tied,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        rms_norm_eps=eps,
        head_dim=head_dim or None,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
        **kw,
    )


def make_hf(cls, cfg, seed, path):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # non-trivial norms so that a norm mix-up cannot pass
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


def batches():
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 97, (3, 9)).astype(np.int64)
    lengths = np.array([9, 6, 3])
    none = (ids, np.ones_like(ids))
    right_mask = (np.arange(9)[None] < lengths[:, None]).astype(np.int64)
    right = np.where(right_mask, ids, PAD)
    # the same sequences, pushed to the right end
    left = np.stack([np.roll(r, 9 - n) for r, n in zip(right, lengths)])
    return {
        "none": none,
        "right": (right, right_mask),
        "left": (left, (left != PAD).astype(np.int64)),
    }


def torch_logits(model, ids, mask):
    pos = np.maximum(mask.cumsum(-1) - 1, 0)  # what HF generate passes for padded batches
    with torch.no_grad():
        return (
            model(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(pos),
            )
            .logits.float()
            .numpy()
        )


@pytest.mark.parametrize("name,kv,tied,theta,eps,head_dim", CONFIGS)
def test_lm_logits_match_hf(tmp_path, name, kv, tied, theta, eps, head_dim):
    ref = make_hf(
        transformers.LlamaForCausalLM, hf_config(kv, tied, theta, eps, head_dim), 1, tmp_path
    )
    ours = hf.load_hf(str(tmp_path), "lm")
    assert ours.cfg.rope_theta == theta and ours.cfg.num_kv_heads == kv
    assert ours.cfg.tie_word_embeddings == tied
    for pad_side, (ids, mask) in batches().items():
        want = torch_logits(ref, ids, mask)
        got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
        real = mask.astype(bool)
        assert np.abs(got - want)[real].max() <= 1e-4, (name, pad_side)
        assert np.abs(want[real]).max() > 0.1  # logits are not trivially small


def test_left_and_right_padding_give_same_tokens(tmp_path):
    make_hf(transformers.LlamaForCausalLM, hf_config(2, False, 10000.0, 1e-5, 0), 2, tmp_path)
    model = hf.load_hf(str(tmp_path), "lm")
    b = batches()
    (ri, rm), (li, lm) = b["right"], b["left"]
    right = np.asarray(model(jnp.asarray(ri), jnp.asarray(rm)))
    left = np.asarray(model(jnp.asarray(li), jnp.asarray(lm)))
    for row in range(3):
        np.testing.assert_allclose(right[row][rm[row] == 1], left[row][lm[row] == 1], atol=1e-5)


@pytest.mark.parametrize("name,kv,tied,theta,eps,head_dim", CONFIGS[:2])
def test_rewards_match_hf_sequence_classification(tmp_path, name, kv, tied, theta, eps, head_dim):
    cfg = hf_config(kv, tied, theta, eps, head_dim, num_labels=1)
    ref = make_hf(transformers.LlamaForSequenceClassification, cfg, 3, tmp_path)
    rm = hf.load_hf(str(tmp_path), "reward")
    for pad_side, (ids, mask) in batches().items():
        with torch.no_grad():  # HF finds the last non-pad token from pad_token_id
            want = (
                ref(
                    input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0)),
                )
                .logits[:, 0]
                .numpy()
            )
        got = np.asarray(rm(jnp.asarray(ids), jnp.asarray(mask)))
        assert got.shape == (3,)
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=pad_side)


def test_rope_theta_top_level_config_key(tmp_path):
    """Older config.json files keep rope_theta at the top level instead of rope_parameters."""
    make_hf(transformers.LlamaForCausalLM, hf_config(2, False, 123456.0, 1e-5, 0), 4, tmp_path)
    with open(tmp_path / "config.json") as f:
        cfg = json.load(f)
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 123456.0
    with open(tmp_path / "config.json", "w") as f:
        json.dump(cfg, f)
    assert hf.load_hf(str(tmp_path)).cfg.rope_theta == 123456.0


def _params(model):
    flat = nnx.to_flat_state(nnx.split(model, nnx.Param)[1])
    return {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in flat}


@pytest.mark.parametrize(
    "head,cls",
    [
        ("lm", transformers.LlamaForCausalLM),
        ("reward", transformers.LlamaForSequenceClassification),
        ("value", transformers.LlamaForTokenClassification),
    ],
)
def test_export_loads_in_transformers_with_same_outputs(tmp_path, head, cls):
    model = llama.create(llama.preset("tiny", vocab_size=97, pad_token_id=PAD), head, seed=5)
    hf.save_hf(model, str(tmp_path / "out"))
    ref = cls.from_pretrained(str(tmp_path / "out")).eval()
    ids, mask = batches()["left"]
    want = torch_logits(ref, ids, mask)
    got = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    if head == "reward":
        np.testing.assert_allclose(got, want[:, 0], atol=1e-4)
    elif head == "value":
        np.testing.assert_allclose(got[mask == 1], want[..., 0][mask == 1], atol=1e-4)
    else:
        np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4)
    # import -> export -> import is exact
    again = hf.load_hf(str(tmp_path / "out"), head)
    hf.save_hf(again, str(tmp_path / "out2"))
    third = hf.load_hf(str(tmp_path / "out2"), head)
    a, b = _params(model), _params(third)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_sharded_index_checkpoint_roundtrip(tmp_path):
    model = llama.create(llama.preset("tiny"), "lm", seed=6)
    hf.save_hf(model, str(tmp_path), max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    loaded = hf.load_hf(str(tmp_path), "lm")
    a, b = _params(model), _params(loaded)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_bf16_weights_and_dtype_policy(tmp_path):
    model = llama.create(llama.preset("tiny"), "lm", seed=7)
    hf.save_hf(model, str(tmp_path), dtype="bfloat16")
    loaded = hf.load_hf(str(tmp_path), "lm", param_dtype="bfloat16", dtype="bfloat16")
    assert _params(loaded)["layers.q"].dtype == jnp.bfloat16
    ids = jnp.asarray(batches()["none"][0] % 256)
    out = loaded(ids)
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())
    ref = model(ids)
    assert float(jnp.abs(out - ref).max()) < 0.1 * float(jnp.abs(ref).max())


def test_reward_head_from_causal_lm_checkpoint_is_initialised(tmp_path, capsys):
    model = llama.create(llama.preset("tiny"), "lm", seed=8)
    hf.save_hf(model, str(tmp_path))
    rm = hf.load_hf(str(tmp_path), "reward")
    assert "not in the checkpoint, initialised: score.weight with normal" in capsys.readouterr().out
    assert np.abs(_params(rm)["score"]).max() > 0
    with pytest.raises(hf.CheckpointError, match="score.weight"):
        hf.load_hf(str(tmp_path), "reward", init_missing_head=False)


def _rewrite(path, fn):
    tensors = load_file(str(path / "model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_tensor_error_names_it(tmp_path):
    hf.save_hf(llama.create(llama.preset("tiny"), "lm"), str(tmp_path))
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(hf.CheckpointError, match=r"'model.layers.1.mlp.up_proj.weight' is missing"):
        hf.load_hf(str(tmp_path), "lm")


def test_misshapen_tensor_error_names_it(tmp_path):
    hf.save_hf(llama.create(llama.preset("tiny"), "lm"), str(tmp_path))

    def cut(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][
            :8
        ]

    _rewrite(tmp_path, cut)
    with pytest.raises(
        hf.CheckpointError,
        match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(8, 64\), "
        r"expected \(32, 64\)",
    ):
        hf.load_hf(str(tmp_path), "lm")


def test_missing_directory_and_pickle_only_checkpoint(tmp_path):
    with pytest.raises(hf.CheckpointError, match="does not exist"):
        hf.load_hf(str(tmp_path / "nope"))
    hf.save_hf(llama.create(llama.preset("tiny"), "lm"), str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(hf.CheckpointError, match="pickle checkpoints are not loaded"):
        hf.load_hf(str(tmp_path))


@pytest.mark.parametrize(
    "remat,scan,unroll",
    [("full", True, 1), ("dots", False, 1), ("dots_no_batch", True, 2), ("none", False, 1)],
)
def test_remat_and_scan_policies_do_not_change_numbers(remat, scan, unroll):
    import jax

    ids, mask = (jnp.asarray(a % 256) for a in batches()["left"])

    def loss_and_grads(cfg):
        graphdef, params = nnx.split(llama.create(cfg, "lm", seed=9), nnx.Param)

        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p)(ids, mask) ** 2)

        return jax.jit(jax.value_and_grad(loss))(params)

    ref_l, ref_g = loss_and_grads(llama.preset("tiny"))
    l, g = loss_and_grads(llama.preset("tiny", remat=remat, scan_layers=scan, scan_unroll=unroll))
    np.testing.assert_allclose(float(l), float(ref_l), rtol=1e-6)
    for (path, a), (_, b) in zip(nnx.to_flat_state(g), nnx.to_flat_state(ref_g)):
        np.testing.assert_allclose(
            np.asarray(a.get_value()),
            np.asarray(b.get_value()),
            rtol=1e-5,
            atol=1e-8,
            err_msg=str(path),
        )
