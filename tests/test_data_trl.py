"""The ``trl`` reader: TRL's standard and conversational formats, explicit and implicit prompts,
from JSONL and Parquet; a conversational row in the tokenizer's chat template checked against
``tokenizer.apply_chat_template``; bad rows of each form with their reason and field."""

import pytest

from metarm_jax.config import lib as config_lib
from metarm_jax.data import DataError, DataSource, TokenSpec, load, load_records
from metarm_jax.data.features import tokenize_pairs, tokenize_sft

try:  # tests/ may or may not be a package
    from tests.test_data_readers import write
except ImportError:
    from test_data_readers import write

SKY = "What color is the sky?"
USER = [{"role": "user", "content": SKY}]


def said(text, role="assistant"):
    return [{"role": role, "content": text}]


HH_PROMPT = f"\n\nHuman: {SKY}\n\nAssistant:"
PAIRS = {  # form: (rows, (prompt, chosen, rejected) in 'hh', the prompt's turns)
    "text": (
        [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}],
        ("The sky is", " blue.", " green."),
        (),
    ),
    "text, implicit prompt": (
        [{"chosen": "The sky is blue.", "rejected": "The sky is green."}],
        ("The sky is", " blue.", " green."),
        (),
    ),
    "messages": (
        [{"prompt": USER, "chosen": said("It is blue."), "rejected": said("It is green.")}],
        (HH_PROMPT, " It is blue.", " It is green."),
        (("user", SKY),),
    ),
    "messages, implicit prompt": (
        [{"chosen": USER + said("It is blue."), "rejected": USER + said("It is green.")}],
        (HH_PROMPT, " It is blue.", " It is green."),
        (("user", SKY),),
    ),
}
SFT = {  # form: (rows, segments in 'hh')
    "text": (
        [{"prompt": "The sky is", "completion": " blue."}],
        (("The sky is", False), (" blue.", True)),
    ),
    "messages prompt/completion": (
        [{"prompt": USER + said("Blue.") + said("Sure?", "user"), "completion": said("Yes.")}],
        ((f"{HH_PROMPT} Blue.\n\nHuman: Sure?\n\nAssistant:", False), (" Yes.", True)),
    ),
    "messages": (
        [{"messages": USER + said("Blue.") + said("Sure?", "user") + said("Yes.")}],
        ((HH_PROMPT, False), (" Blue.", True), ("\n\nHuman: Sure?\n\nAssistant:", False))
        + ((" Yes.", True),),
    ),
}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_every_form_from_jsonl_and_parquet(tmp_path, fmt):
    for i, (form, (rows, want, turns)) in enumerate(PAIRS.items()):
        path = write(tmp_path / f"pairs{i}.{fmt}", rows)
        (pair,) = load("preference", DataSource.of("trl", path))
        assert (pair.prompt, pair.chosen, pair.rejected) == want, form
        assert pair.turns == turns, form
        (prompt,) = load("prompt", DataSource.of("trl", path))  # a pair row's prompt
        assert prompt.prompt == want[0], form
    for i, (form, (rows, segments)) in enumerate(SFT.items()):
        (ex,) = load("sft", DataSource.of("trl", write(tmp_path / f"sft{i}.{fmt}", rows)))
        assert ex.segments == segments, form
    rows = [{"prompt": "The sky is"}, {"prompt": USER}]
    for i, want in enumerate(("The sky is", HH_PROMPT)):
        (p,) = load(
            "prompt", DataSource.of("trl", write(tmp_path / f"p{i}.{fmt}", rows[i : i + 1]))
        )
        assert p.prompt == want


def hf_ids(tok, messages, generation_prompt=False):
    out = tok.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(out["input_ids"])


def test_conversational_rows_in_the_chat_template(tmp_path):
    from metarm_jax.data import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["the sky is blue or green, sure"] * 5, 300, str(tmp_path / "t"))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    system = said("Be brief.", "system")
    rows = [
        {"chosen": system + USER + said("It is blue."), "rejected": system + USER + said("No.")}
    ]
    source = DataSource.of(
        "trl", write(tmp_path / "c.jsonl", rows), conversation_format="chat_template"
    )
    (pair,) = load("preference", source, tokenizer=tok)
    chosen = system + USER + said("It is blue.")
    assert pair.prompt == tok.apply_chat_template(
        system + USER, tokenize=False, add_generation_prompt=True
    )
    assert pair.prompt + pair.chosen + tok.eos_token == tok.apply_chat_template(
        chosen, tokenize=False
    )
    spec = TokenSpec(256, (256,), tok.pad_token_id, tok.eos_token_id, None)
    (feats,) = tokenize_pairs([pair], tok, spec)
    assert feats["chosen"].tolist() == hf_ids(tok, chosen)
    (msgs,) = SFT["messages"][0]
    path = write(tmp_path / "s.jsonl", [msgs])
    (ex,) = load(
        "sft", DataSource.of("trl", path, conversation_format="chat_template"), tokenizer=tok
    )
    (f,) = tokenize_sft([ex], tok, spec)
    ids = hf_ids(tok, msgs["messages"])
    assert f["ids"].tolist() == ids
    # loss on exactly the two replies and their end-of-turn tokens, by transformers' prefixes
    want = [0] * len(ids)
    for i in (1, 3):
        start = len(hf_ids(tok, msgs["messages"][:i], generation_prompt=True))
        end = len(hf_ids(tok, msgs["messages"][: i + 1]))
        want[start:end] = [1] * (end - start)
    assert f["loss"].tolist() == want
    # text rows stay as written under the chat template (as TRL does)
    path = write(tmp_path / "t.jsonl", PAIRS["text"][0])
    (text,) = load(
        "preference", DataSource.of("trl", path, conversation_format="chat_template"), tokenizer=tok
    )
    assert (text.prompt, text.chosen) == ("The sky is", " blue.")


BAD = [  # (kind, row, field, reason)
    ("preference", {"prompt": "p", "chosen": " a"}, "rejected", "missing_field"),
    ("preference", {"prompt": "", "chosen": " a", "rejected": " b"}, "prompt", "empty_prompt"),
    (
        "preference",
        {"prompt": "p", "chosen": " a", "rejected": " a"},
        "chosen/rejected",
        "chosen_identical_to_rejected",
    ),
    ("preference", {"prompt": "p", "chosen": 3, "rejected": " b"}, "chosen", "wrong_type"),
    (
        "preference",
        {"prompt": "p", "chosen": said("a"), "rejected": said("b")},
        "prompt",
        "wrong_type",
    ),
    ("preference", {"chosen": "Yes.", "rejected": "No."}, "chosen/rejected", "empty_prompt"),
    ("preference", {"chosen": "The sky", "rejected": "The sky is"}, "chosen", "empty_response"),
    (
        "preference",
        {"prompt": said("Hi"), "chosen": said("a"), "rejected": said("b")},
        "prompt",
        "malformed_row",
    ),
    (
        "preference",
        {"prompt": USER, "chosen": said("a", "bot"), "rejected": said("b")},
        "chosen[0].role",
        "bad_value",
    ),
    (
        "preference",
        {"prompt": USER, "chosen": said("a") * 2, "rejected": said("b") * 2},
        "chosen",
        "malformed_row",
    ),
    (
        "preference",
        {"prompt": [{"role": "user", "content": 1}], "chosen": said("a"), "rejected": said("b")},
        "prompt[0].content",
        "wrong_type",
    ),
    (
        "preference",
        {"chosen": said("Hi", "user") + said("a"), "rejected": USER + said("b")},
        "chosen/rejected",
        "empty_prompt",
    ),
    ("sft", {"prompt": "p"}, "completion", "missing_field"),
    ("sft", {"text": "p"}, "prompt", "missing_field"),
    ("sft", {"messages": USER}, "messages", "empty_response"),
    ("sft", {"prompt": USER, "completion": said("Hi", "user")}, "completion", "malformed_row"),
    ("prompt", {"prompt": 5}, "prompt", "wrong_type"),
]


def test_bad_rows_name_the_row_field_and_reason(tmp_path):
    good = {"preference": PAIRS["text"][0], "sft": SFT["text"][0], "prompt": [{"prompt": "p"}]}
    for i, (kind, row, field, reason) in enumerate(BAD):
        path = write(tmp_path / f"{i}.jsonl", good[kind] + [row])
        with pytest.raises(DataError) as e:
            load(kind, DataSource.of("trl", path, on_bad_record="error"))
        assert f"{path}: row 1: field {field!r}: {reason}" in str(e.value), (i, str(e.value))
        recs = load(kind, DataSource.of("trl", path, max_skip_fraction=0.5))
        assert len(recs) == 1 and recs.skip_report.counts == {reason: 1}


def test_the_dataset_name_in_the_config(tmp_path):
    path = write(tmp_path / "my.jsonl", PAIRS["messages"][0])
    config = config_lib.derive(config_lib.base_config(), {"data.dataset": "trl", "data.path": path})
    (pair,) = load_records("preference", config.data, None)
    assert (pair.prompt, pair.chosen) == (HH_PROMPT, " It is blue.")
