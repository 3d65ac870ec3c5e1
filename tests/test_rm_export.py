"""The exported RM for other trainers (README, "Using the reward model in transformers, TRL and
OpenRLHF"): the export holds the tokenizer and the scoring convention, and transformers'
``pipeline("text-classification")`` and the README's TRL reward function, fed the text the
convention describes, give the scores the stage computes on its own tokenization."""

import json
import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from metarm_jax.config import lib as config_lib
from metarm_jax.data import features, formats
from metarm_jax.data.records import PreferencePair
from metarm_jax.data.tokenizer import train_bpe_tokenizer
from metarm_jax.models import hf, llama
from metarm_jax.train import rm as rm_stage

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A Zephyr-style template: its turns end with the EOS and a newline after it (as ChatML's do).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DIALOGUES = [  # (user turn, chosen reply, rejected reply)
    ("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs are round."),
    ("What is the capital of France?", "Paris.", "I would rather not say."),
    ("Can you help me write a poem?", "Of course: roses are red...", "No."),
    ("Why is the sky blue?", "Sunlight scatters off air molecules.", "Because it is."),
]
STATS = {"eval/reward_mean": 0.25, "eval/reward_std": 1.5}


@pytest.fixture(scope="module", params=["hh", "chat_template"])
def export(request, tmp_path_factory):
    """A tiny RM exported by the stage's export function, with a BPE tokenizer."""
    root = tmp_path_factory.mktemp(request.param)
    texts = [f"{formats.HUMAN} {q}{formats.ASSISTANT} {c} {r}" for q, c, r in DIALOGUES] * 20
    tok = train_bpe_tokenizer(texts, 300, str(root / "tok"))
    if request.param == "chat_template":
        tok.chat_template = CHAT_TEMPLATE
    data_cfg = config_lib.base_config().data
    data_cfg.conversation_format = request.param
    cfg = llama.preset("tiny", vocab_size=len(tok), initializer_range=0.2)
    model = llama.create(cfg, "reward", seed=3)
    path = rm_stage.export_rm(model, str(root / "work"), data_cfg, tok, "metarm", STATS)
    exp = (request.param, tok, data_cfg, model, path)
    return exp + (_ours(exp),)


def _pairs(data_cfg, tok):
    prompt_fn, reply_fn = formats.formatter(data_cfg.conversation_format, tok)
    out = []
    for i, (q, c, r) in enumerate(DIALOGUES):
        turns = (("user", q),)
        p = prompt_fn(turns)
        out.append(PreferencePair(p, reply_fn(c, turns), reply_fn(r, turns), i, turns))
    return out


def _ours(export):
    """The stage's sequences (data.features) and the rewards our model gives them."""
    _, tok, data_cfg, model, _ = export
    pairs = _pairs(data_cfg, tok)
    spec = features.TokenSpec.from_config(data_cfg, tok)
    seqs = [s for rec in features.tokenize_pairs(pairs, tok, spec) for s in rec.values()]
    texts = [t for p in pairs for t in (p.prompt + p.chosen, p.prompt + p.rejected)]
    width = max(len(x) for x in seqs)  # one right-padded batch: one forward
    ids = np.stack([np.pad(x, (0, width - len(x)), constant_values=tok.pad_token_id) for x in seqs])
    mask = np.stack([np.arange(width) < len(x) for x in seqs]).astype(np.int32)
    scores = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    return pairs, texts, seqs, scores


def test_export_holds_tokenizer_convention_and_model_card(export):
    fmt, tok, _, _, path, _ = export
    config = json.loads(pathlib.Path(path, "config.json").read_text())
    conv = config[hf.SCORING_KEY]
    assert conv["sequence"] == "BOS + prompt + response + EOS"
    assert (conv["bos_token"], conv["eos_token"], conv["add_special_tokens"]) == (
        "<s>",
        "</s>",
        False,
    )
    assert conv["reward_read_at"].startswith("last non-pad token") and conv["prompt_format"] == fmt
    assert conv["stage"] == "metarm" and "warning" not in conv
    assert (config["mean"], config["std"]) == (0.25, 1.5) and config["pad_token_id"] == 0
    card = pathlib.Path(path, "README.md").read_text()
    assert "BOS + prompt + response + EOS" in card and "add_special_tokens=False" in card
    again = transformers.AutoTokenizer.from_pretrained(path)
    assert (
        again("\n\nHuman: hi", add_special_tokens=False)["input_ids"]
        == tok("\n\nHuman: hi", add_special_tokens=False)["input_ids"]
    )
    assert bool(again.chat_template) == (fmt == "chat_template")


def test_pipeline_scores_the_convention_text_like_the_stage(export):
    _, tok, _, _, path, (_, texts, seqs, want) = export
    assert np.ptp(want) > 0.05  # distinct scores, so a mix-up of rows or tokens would show
    full = [tok.bos_token + t + tok.eos_token for t in texts]
    for text, seq in zip(full, seqs):  # the convention's text is the stage's sequence
        assert tok(text, add_special_tokens=False)["input_ids"] == seq.tolist()
    pipe = transformers.pipeline("text-classification", model=path)
    one = [pipe(t, function_to_apply="none", add_special_tokens=False)[0]["score"] for t in full]
    np.testing.assert_allclose(one, want, atol=1e-5)
    batched = pipe(full, function_to_apply="none", add_special_tokens=False, batch_size=4)
    np.testing.assert_allclose([b["score"] for b in batched], want, atol=1e-5)  # padded rows
    # Without the EOS (how TRL's reward_funcs=<path> tokenizes) the head reads another token.
    no_eos = pipe([tok.bos_token + t for t in texts], function_to_apply="none", batch_size=8)
    assert np.abs(np.asarray([b["score"] for b in no_eos]) - want).max() > 1e-3


def _readme_reward_fn():
    """The README's TRL reward function, run as written."""
    text = README.read_text()
    block = re.search(r"<!-- metarm-reward-fn -->\n```python\n(.*?)```", text, re.S)
    assert block, "README: the metarm_reward_fn block after <!-- metarm-reward-fn --> is missing"
    namespace = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    return namespace["metarm_reward_fn"]


def test_readme_trl_reward_function_gives_the_stage_scores(export):
    fmt, _, _, _, path, (pairs, _, _, want) = export
    reward_fn = _readme_reward_fn()(path, batch_size=3)
    if fmt == "hh":  # TRL's standard format: prompt and completion texts
        prompts = [p.prompt for p in pairs for _ in range(2)]
        completions = [c for p in pairs for c in (p.chosen, p.rejected)]
    else:  # conversational: message lists, as GRPOTrainer passes them
        prompts = [[{"role": "user", "content": q}] for q, _, _ in DIALOGUES for _ in range(2)]
        completions = [
            [{"role": "assistant", "content": reply}] for _, c, r in DIALOGUES for reply in (c, r)
        ]
    got = reward_fn(prompts=prompts, completions=completions, completion_ids=None)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_pad_equal_to_eos_is_recorded_as_a_warning(export):
    _, tok, data_cfg, _, path, _ = export
    same = transformers.AutoTokenizer.from_pretrained(path)
    same.pad_token = same.eos_token
    conv = rm_stage.scoring_convention(data_cfg, same, "rm")
    assert "reads the token before the EOS" in conv["warning"]
    assert rm_stage.scoring_convention(data_cfg, tok, "rm").get("warning") is None
