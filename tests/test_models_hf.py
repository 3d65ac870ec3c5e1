"""Our Llama against HF transformers (PyTorch, fp32), and HF checkpoint import/export: Llama-2,
Llama-3.x (llama3 rotary scaling, GQA, tied embeddings) and Qwen2 (q/k/v biases)."""

import json
import os
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from metarm_jax.generation import sampling
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
            elif name.endswith("_proj.bias"):  # Qwen2's q/k/v biases (HF initialises them to 0)
                p.copy_(0.3 * torch.randn_like(p))
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
    [
        ("full", True, 1),
        ("dots", False, 1),
        ("dots_no_batch", True, 2),
        ("dots_no_batch_attn", True, 1),
        ("qkv_attn", False, 1),
        ("none", False, 1),
    ],
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


# ------------------------------------------------------------ Llama-3.x and Qwen2 checkpoints

# head_dim 8, theta 1e4: wavelengths 6.3, 63, 628, 6283 against the llama3 band edges
# 64/4 = 16 and 64/1 = 64, so one frequency is kept, one interpolated and two divided by 8.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
FAMILY_CLASSES = {  # HF class per head: lm, reward, value
    "llama3": ("LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaForTokenClassification"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2ForTokenClassification"),
}


def family_config(family, rope=None, **kw):
    """A tiny Llama-3.2-style (llama3 rope, GQA, tied) or Qwen2.5-style (biases, GQA, tied)."""
    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        pad_token_id=PAD,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=0.2,
        **kw,
    )
    if family == "llama3":
        return transformers.LlamaConfig(rope_parameters=rope or LLAMA3_ROPE, **common)
    rope = rope or {"rope_type": "default", "rope_theta": 1e6}
    return transformers.Qwen2Config(rope_parameters=rope, use_sliding_window=False, **common)


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def family(request, tmp_path_factory):
    """One HF causal LM and one HF sequence classifier of the family, and ours loaded from them."""
    name = request.param
    root = tmp_path_factory.mktemp(name)
    lm_cls, rm_cls, _ = (getattr(transformers, c) for c in FAMILY_CLASSES[name])
    hf_lm = make_hf(lm_cls, family_config(name), 11, root / "lm")
    hf_rm = make_hf(rm_cls, family_config(name, num_labels=1), 12, root / "rm")
    return SimpleNamespace(
        name=name,
        root=root,
        hf_lm=hf_lm,
        hf_rm=hf_rm,
        lm=hf.load_hf(str(root / "lm"), "lm"),
        rm=hf.load_hf(str(root / "rm"), "reward"),
    )


def test_family_config_and_logits_match_hf(family):
    cfg = family.lm.cfg
    assert cfg.family == ("llama" if family.name == "llama3" else "qwen2")
    assert cfg.qkv_bias == (family.name == "qwen2") and cfg.tie_word_embeddings
    assert cfg.num_kv_heads == 2 and cfg.rope_type == (
        "llama3" if family.name == "llama3" else "default"
    )
    assert cfg.num_params("lm") == sum(p.numel() for p in family.hf_lm.parameters())
    if cfg.qkv_bias:
        assert np.abs(_params(family.lm)["layers.q_bias"]).max() > 0.1  # the biases were read
    for pad_side, (ids, mask) in batches().items():
        want = torch_logits(family.hf_lm, ids, mask)
        got = np.asarray(family.lm(jnp.asarray(ids), jnp.asarray(mask)))
        real = mask.astype(bool)
        assert np.abs(got - want)[real].max() <= 1e-4, pad_side


def test_llama3_scaling_is_exercised():
    """The tiny config puts one frequency in each llama3 band, and the scaling moves HF's own
    logits by far more than the parity tolerance, so the parity test above cannot pass with the
    default rotary embedding."""
    cfg = hf.config_from_hf(family_config("llama3").to_dict())
    scaled = np.asarray(llama.rope_inv_freq(cfg))
    plain = np.asarray(llama.rope_inv_freq(cfg.replace(rope_type="default")))
    ratio = plain / scaled
    assert ratio[0] == 1 and 1 < ratio[1] < 8 and np.allclose(ratio[2:], 8), ratio
    torch.manual_seed(0)
    scaled_model = transformers.LlamaForCausalLM(family_config("llama3")).eval()
    default = {"rope_type": "default", "rope_theta": LLAMA3_ROPE["rope_theta"]}
    plain_model = transformers.LlamaForCausalLM(family_config("llama3", rope=default)).eval()
    plain_model.load_state_dict(scaled_model.state_dict())
    ids, mask = batches()["none"]
    moved = torch_logits(scaled_model, ids, mask) - torch_logits(plain_model, ids, mask)
    assert np.abs(moved).max() > 1e-2


def test_family_rewards_match_hf(family):
    for pad_side, (ids, mask) in batches().items():
        with torch.no_grad():
            want = (
                family.hf_rm(
                    input_ids=torch.tensor(ids),
                    attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(np.maximum(mask.cumsum(-1) - 1, 0)),
                )
                .logits[:, 0]
                .numpy()
            )
        got = np.asarray(family.rm(jnp.asarray(ids), jnp.asarray(mask)))
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=pad_side)


def test_family_greedy_decoding_matches_hf_generate(family):
    ids, mask = batches()["left"]
    new = 8
    greedy = sampling.settings(max_new_tokens=new, temperature=0.0, repetition_penalty=1.0)
    out = sampling.generate(family.lm, ids, mask, 0, greedy)
    with torch.inference_mode():
        ref = family.hf_lm.generate(
            torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=PAD,
            eos_token_id=None,
        )
    np.testing.assert_array_equal(np.asarray(out.tokens), ref[:, ids.shape[1] :].numpy())


@pytest.mark.parametrize("head", ["lm", "reward", "value"])
def test_family_export_loads_as_its_own_class_in_transformers(family, head, tmp_path):
    """save_hf writes the family's config.json: AutoModel* builds the family's class, with our
    outputs, and the export reads back bit-exactly."""
    ours = family.rm if head == "reward" else hf.load_hf(str(family.root / "lm"), head)
    hf.save_hf(ours, str(tmp_path / "out"))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    want_type = "llama" if family.name == "llama3" else "qwen2"
    assert config["model_type"] == want_type
    auto = {
        "lm": transformers.AutoModelForCausalLM,
        "reward": transformers.AutoModelForSequenceClassification,
        "value": transformers.AutoModelForTokenClassification,
    }[head]
    theirs = auto.from_pretrained(str(tmp_path / "out")).eval()
    assert (
        type(theirs).__name__ == FAMILY_CLASSES[family.name][("lm", "reward", "value").index(head)]
    )
    ids, mask = batches()["right"]
    want = torch_logits(theirs, ids, mask)
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask == 1
    if head == "reward":
        np.testing.assert_allclose(got, want[:, 0], atol=1e-4)
    elif head == "value":
        np.testing.assert_allclose(got[real], want[..., 0][real], atol=1e-4)
    else:
        np.testing.assert_allclose(got[real], want[real], atol=1e-4)
    again = hf.load_hf(str(tmp_path / "out"), head)
    assert again.cfg == ours.cfg
    a, b = _params(ours), _params(again)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# Hub config.json files as published (transformers 4 layout: rope_scaling + top-level rope_theta).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "vocab_size": 128256,
}
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "hidden_act": "silu",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 24,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}


@pytest.mark.parametrize("hub", [LLAMA31_8B, QWEN25_05B], ids=["llama3.1-8b", "qwen2.5-0.5b"])
def test_hub_configs_read_and_count_parameters_like_transformers(hub):
    """Published config.json files map to our config; the parameter count equals that of the
    transformers model of the same config (built on the meta device: no memory)."""
    cfg = hf.config_from_hf(hub)
    assert cfg.rope_theta == hub["rope_theta"] and cfg.eos_token_id == _first(hub["eos_token_id"])
    if hub["model_type"] == "llama":
        assert (cfg.rope_type, cfg.rope_factor, cfg.rope_original_max_position_embeddings) == (
            "llama3",
            8.0,
            8192,
        )
    else:
        assert cfg.qkv_bias and cfg.tie_word_embeddings and cfg.family == "qwen2"
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            transformers.AutoConfig.for_model(**hub)
        )
    assert cfg.num_params("lm") == sum(p.numel() for p in model.parameters())


def _first(x):
    return x[0] if isinstance(x, list) else x


@pytest.mark.parametrize(
    "base,change,message",
    [
        (
            LLAMA31_8B,
            {"model_type": "mistral"},
            r"model_type='mistral' is not supported; supported:",
        ),
        (LLAMA31_8B, {"model_type": "gemma2"}, r"model_type='gemma2' is not supported; supported:"),
        (QWEN25_05B, {"use_sliding_window": True}, r"use_sliding_window=true .* not supported"),
        (
            LLAMA31_8B,
            {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
            r"rope_type='yarn' is not supported \(only 'default' and 'llama3'",
        ),
        (
            LLAMA31_8B,
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            r"rope_type 'llama3' needs 'low_freq_factor'",
        ),
        (LLAMA31_8B, {"attention_bias": True}, r"attention_bias=true is not supported"),
        (LLAMA31_8B, {"mlp_bias": True}, r"mlp_bias=true is not supported"),
        (QWEN25_05B, {"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ],
)
def test_unsupported_checkpoints_fail_with_one_line_naming_the_key(base, change, message):
    with pytest.raises(hf.CheckpointError, match=message) as e:
        hf.config_from_hf({**base, **change}, source="ckpt/config.json")
    assert str(e.value).startswith("ckpt/config.json: ") and "\n" not in str(e.value)
