"""data.conversation_format='chat_template', token for token: HH, ShareGPT, OASST1 and PKU
dialogues in the tokenizer's own chat template, on SmolLM2's tokenizer (ChatML) and with a
Llama-2-chat template ([INST] ... [/INST]).

The reference is transformers' own tokenization of the whole conversation
(``apply_chat_template(..., tokenize=True)``) cut after the last end-of-turn token: our training
sequences (pairs, SFT), roll-out prompts and scored samples must be exactly those tokens, each
response exactly the assistant's turn plus the end-of-turn token, and each prompt a prefix.
"""

import gzip
import json
import os
import pathlib

import pytest

from metarm_jax.data import (
    DataError,
    DataSource,
    TokenSpec,
    load,
    load_tokenizer,
    train_bpe_tokenizer,
)
from metarm_jax.data.features import tokenize_meta, tokenize_pairs, tokenize_prompts, tokenize_sft
from metarm_jax.data.records import MetaExample, SamplingInfo
from metarm_jax.models import pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOL = pathlib.Path(os.environ.get("METARM_SMOL_DIR") or REPO / pretrained.DEFAULT_OUT)

# The Llama-2-chat template (as in meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json).
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": "Hi there!"},
            {"from": "gpt", "value": " Hello. How can I help?"},
            {"from": "human", "value": "What's your name?\n"},
            {"from": "gpt", "value": "I'm a bot, called Bot."},
        ]
    },
    {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
        ]
    },
]
PKU = [
    {
        "prompt": "How do I pick a lock?",
        "response_0": "Use a tension wrench and a pick.",
        "response_1": "I can't help with that.",
        "better_response_id": 0,
        "safer_response_id": 1,
    }
]


def _msg(mid, parent, role, text, rank=None):
    return dict(message_id=mid, parent_id=parent, role=role, text=text, rank=rank, lang="en")


OASST = [
    _msg("p1", None, "prompter", "Why is the sky blue?"),
    _msg("a1", "p1", "assistant", "Rayleigh scattering of sunlight.", 0),
    _msg("a2", "p1", "assistant", "Because it is.", 1),
    _msg("p2", "a1", "prompter", "And at sunset?"),
    _msg("a3", "p2", "assistant", "Red: the light crosses more air.", 0),
    _msg("a4", "p2", "assistant", "Dunno.", 1),
]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def smol_tok():
    if pretrained.is_complete(str(SMOL)):
        return load_tokenizer(str(SMOL))
    return pretrained.load_gguf_tokenizer()  # the same tokenizer, read from the GGUF file


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    """The project's byte-level BPE (pad <pad>, bos <s>, eos </s>, as Llama-2's specials)."""
    texts = ["[INST] hello there [/INST] hi, how can I help? </s>", "the sky is blue"] * 3
    return train_bpe_tokenizer(texts, 320, str(tmp_path_factory.mktemp("bpe")))


def _with_template(tok, template, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    tok.save_pretrained(out)
    tok = load_tokenizer(out)  # a copy: the other tests keep the original template
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=["smol_chatml", "smol_llama2", "bpe_llama2"])
def tok(request, smol_tok, bpe_tok, tmp_path_factory):
    if request.param == "smol_chatml":
        return smol_tok
    base = smol_tok if request.param == "smol_llama2" else bpe_tok
    return _with_template(base, LLAMA2_CHAT, tmp_path_factory)


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_dir):
    d = tmp_path_factory.mktemp("data")
    out = {
        "sharegpt": write_jsonl(d / "sharegpt.jsonl", SHAREGPT),
        "pku_saferlhf": write_jsonl(d / "pku.jsonl", PKU),
        "oasst1": write_jsonl(d / "oasst.jsonl", OASST),
    }
    sample = shared_dir / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    if sample.exists():  # the first 150 real rows (multi-turn ones among them)
        with gzip.open(sample, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(150), f)]
        out["hh_rlhf"] = write_jsonl(d / "hh.jsonl", rows)
    return out


def spec_of(tok):
    """add_bos on: a template that renders the BOS itself must not get a second one."""
    return TokenSpec(4096, (4096,), tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)


def hf_tokens(tok, turns, generation_prompt=False):
    """transformers' tokens of the conversation; without the generation prompt, cut after the
    last end-of-turn (eos) token (ChatML puts a newline after it)."""
    msgs = [{"role": r, "content": t.strip()} for r, t in turns]
    ids = list(
        tok.apply_chat_template(
            msgs, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
        )["input_ids"]
    )
    if not generation_prompt:
        ids = ids[: len(ids) - ids[::-1].index(tok.eos_token_id)]
    return ids


def read(kind, dataset, path, tok):
    """``dataset``'s records in the tokenizer's chat template. The HH sample has a few rows with
    an empty reply (skipped as in 'hh'); nothing else may be."""
    source = DataSource.of(
        dataset, path, split="", conversation_format="chat_template", max_skip_fraction=0.05
    )
    return load(kind, source, tokenizer=tok)


def no_template_skips(records):
    assert set(records.skip_report.counts) <= {"empty_response"}, records.skip_report.counts


def _one_bos(tok, seq):
    if tok.bos_token_id is not None and seq[0] == tok.bos_token_id:
        assert seq[1] != tok.bos_token_id


@pytest.mark.parametrize("dataset", ["hh_rlhf", "oasst1", "pku_saferlhf"])
def test_pairs_are_the_templates_tokens(tok, files, dataset):
    if dataset not in files:
        pytest.skip("the shared HH-RLHF sample is absent (set METARM_SHARED_DIR)")
    pairs = read("preference", dataset, files[dataset], tok)
    no_template_skips(pairs)
    feats = tokenize_pairs(pairs, tok, spec_of(tok))
    assert len(feats) == len(pairs) > 0
    multi = 0
    for pair, f in zip(pairs, feats):
        prompt = hf_tokens(tok, pair.turns, generation_prompt=True)
        multi += sum(r == "assistant" for r, _ in pair.turns) > 0
        for reply, key in ((pair.chosen, "chosen"), (pair.rejected, "rejected")):
            seq = f[key].tolist()
            full = hf_tokens(tok, (*pair.turns, ("assistant", reply)))
            assert seq == full, (pair.source, key)
            assert full[: len(prompt)] == prompt  # the prompt's tokens are a prefix
            response = seq[len(prompt) :]
            assert response[-1] == tok.eos_token_id and tok.eos_token_id not in response[:-1]
            assert tok.decode(response[:-1]) == reply
            _one_bos(tok, seq)
    if dataset != "pku_saferlhf":
        assert multi > 0  # earlier assistant turns are inside some prompts


@pytest.mark.parametrize("dataset", ["hh_rlhf", "sharegpt", "oasst1"])
def test_sft_loss_covers_exactly_the_assistant_turns(tok, files, dataset):
    if dataset not in files:
        pytest.skip("the shared HH-RLHF sample is absent (set METARM_SHARED_DIR)")
    examples = read("sft", dataset, files[dataset], tok)
    no_template_skips(examples)
    feats = tokenize_sft(examples, tok, spec_of(tok))
    assert len(feats) == len(examples) > 0
    for ex, f in zip(examples[:40], feats[:40]):
        ids, loss = f["ids"].tolist(), f["loss"].tolist()
        turns = ex.turns
        assert ids == hf_tokens(tok, turns), ex.source
        want = [0] * len(ids)  # from transformers' tokens of each prefix of the dialogue
        for i, (role, _) in enumerate(turns):
            # HH SFT learns the chosen reply; its earlier turns are the prompt (as in 'hh').
            if role == "assistant" and (dataset != "hh_rlhf" or i == len(turns) - 1):
                start = len(hf_tokens(tok, turns[:i], generation_prompt=True))
                end = len(hf_tokens(tok, turns[: i + 1]))
                assert hf_tokens(tok, turns[: i + 1]) == ids[:end]
                want[start:end] = [1] * (end - start)
        assert loss == want, ex.source
        assert ids[-1] == tok.eos_token_id and loss[-1] == 1
        _one_bos(tok, ids)


@pytest.mark.parametrize("dataset", ["hh_rlhf", "sharegpt", "oasst1", "pku_saferlhf"])
def test_prompts_and_scored_samples(tok, files, dataset):
    """Roll-out prompts are the template's generation prompt; a sampled response scored from its
    text (the report, the RM judge, meta data) gets the tokens the RM was trained on."""
    if dataset not in files:
        pytest.skip("the shared HH-RLHF sample is absent (set METARM_SHARED_DIR)")
    prompts = read("prompt", dataset, files[dataset], tok)
    no_template_skips(prompts)
    feats = tokenize_prompts(prompts, tok, spec_of(tok))
    for p, f in zip(prompts, feats):
        assert f["ids"].tolist() == hf_tokens(tok, p.turns, generation_prompt=True), p.source
    p, sample = prompts[0], "Sure. Here it is."
    full = hf_tokens(tok, (*p.turns, ("assistant", sample)))
    # What the sampler writes: the generated tokens without the stop token, decoded.
    text = tok.decode(full[len(feats[0]["ids"]) : -1], skip_special_tokens=True)
    info = SamplingInfo(temperature=1.0, top_p=1.0, policy_step=0, seed=0)
    meta = tokenize_meta([MetaExample(p.prompt, (text,), info)], tok, spec_of(tok))
    assert meta[0]["samples"][0].tolist() == full


def test_chatml_strings(smol_tok, files):
    pairs = read("preference", "pku_saferlhf", files["pku_saferlhf"], smol_tok)
    assert pairs[0].prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nHow do I pick a lock?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert pairs[0].chosen == "Use a tension wrench and a pick."
    ex = read("sft", "sharegpt", files["sharegpt"], smol_tok)
    segs = ex[0].segments
    assert [s for s, loss in segs if loss] == [
        "Hello. How can I help?<|im_end|>",
        "I'm a bot, called Bot.",
    ]
    assert segs[2] == (
        "\n<|im_start|>user\nWhat's your name?<|im_end|>\n<|im_start|>assistant\n",
        False,
    )


def test_llama2_strings(bpe_tok, files, tmp_path_factory):
    tok = _with_template(bpe_tok, LLAMA2_CHAT, tmp_path_factory)
    ex = read("sft", "sharegpt", files["sharegpt"], tok)
    assert ex[1].segments == (
        ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n2+2? [/INST]", False),
        (" 4 ", True),
    )
    assert [s for s, loss in ex[0].segments if loss] == [
        " Hello. How can I help? </s>",
        " I'm a bot, called Bot. ",
    ]


def test_a_template_the_tokenizer_cannot_split_is_an_error(bpe_tok, files, tmp_path_factory):
    # The generation prompt ends with a space that byte-level BPE joins to the reply's first word.
    merges = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(DataError, match="do not tokenize apart"):
        read(
            "preference",
            "pku_saferlhf",
            files["pku_saferlhf"],
            _with_template(bpe_tok, merges, tmp_path_factory),
        )
    # The generation prompt is not how the template starts an assistant turn.
    differs = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] + eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|bot|>{% endif %}"
    )
    with pytest.raises(DataError, match="renders the assistant turn differently"):
        read(
            "preference",
            "pku_saferlhf",
            files["pku_saferlhf"],
            _with_template(bpe_tok, differs, tmp_path_factory),
        )


def test_a_conversation_the_template_refuses_is_a_bad_row(bpe_tok, tmp_path, tmp_path_factory):
    tok = _with_template(bpe_tok, LLAMA2_CHAT, tmp_path_factory)
    rows = [  # two Human turns in a row: Llama-2's template raises "roles must alternate"
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Go.",
        },
        {
            "chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c",
            "rejected": "\n\nHuman: a\n\nHuman: b\n\nAssistant: d",
        },
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    opts = dict(conversation_format="chat_template", max_skip_fraction=0.5)
    pairs = load("preference", DataSource.of("hh_rlhf", path, split="", **opts), tokenizer=tok)
    assert len(pairs) == 1 and pairs.skip_report.counts == {"malformed_row": 1}
    with pytest.raises(DataError, match="roles must alternate"):
        source = DataSource.of("hh_rlhf", path, split="", on_bad_record="error", **opts)
        load("preference", source, tokenizer=tok)
