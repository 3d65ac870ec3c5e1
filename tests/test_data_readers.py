"""Readers on small fixtures in each hub's exact schema, in json, jsonl, jsonl.gz and parquet."""

import gzip
import json

import pytest

from metarm_jax.data import (
    DataError,
    DataSource,
    load,
    train_bpe_tokenizer,
)

FORMATS = ["json", "jsonl", "jsonl.gz", "parquet"]


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE trained on a few strings (pad 0, bos 1, eos 2), loaded via AutoTokenizer."""
    texts = [
        "\n\nHuman: hello there\n\nAssistant: hi, how can I help?",
        "yes no maybe the cat sat on the mat",
        "SUBREDDIT: r/cats TITLE: POST: TL;DR:",
    ]
    return train_bpe_tokenizer(texts * 3, 300, str(tmp_path_factory.mktemp("tok")))


def write(path, rows):
    """Rows to `path` in the format its name says (json = one JSON list)."""
    path = str(path)
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    else:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
    return path


HH = [
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go."},
    {
        "chosen": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: Sure?\n\nAssistant: Yes, 4.",
        "rejected": "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: Sure?\n\nAssistant: 5",
    },
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_hh_all_formats(tmp_path, fmt):
    pairs = load("preference", DataSource.of("hh_rlhf", write(tmp_path / f"train.{fmt}", HH)))
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
        ("\n\nHuman: Hi\n\nAssistant:", " Hello!", " Go."),
        ("\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: Sure?\n\nAssistant:", " Yes, 4.", " 5"),
    ]


def test_glob_directory_and_split(tmp_path):
    d = tmp_path / "hh" / "helpful-base"
    d.mkdir(parents=True)
    write(d / "train.jsonl", HH)
    write(d / "test.jsonl.gz", HH[:1])
    assert (
        len(
            load(
                "preference",
                DataSource.of(
                    "hh_rlhf", str(tmp_path / "hh"), split="train", data_dir="helpful-base"
                ),
            )
        )
        == 2
    )
    assert len(load("preference", DataSource.of("hh_rlhf", str(d), split="test"))) == 1
    assert len(load("preference", DataSource.of("hh_rlhf", str(d / "*.json*")))) == 3
    with pytest.raises(DataError, match="no data file for split .validation."):
        load("preference", DataSource.of("hh_rlhf", str(d), split="validation"))


SUMMARIZE = [
    {
        "info": {
            "id": "t3_1",
            "post": "My cat ignores me.",
            "title": "Cat help",
            "subreddit": "cats",
            "site": None,
            "article": None,
        },
        "summaries": [
            {"text": " Cat ignores me.", "policy": "sup", "note": None},
            {"text": " Dogs are great.", "policy": "ref", "note": None},
        ],
        "choice": 0,
        "worker": "w1",
        "batch": "b0",
        "split": "train",
        "extra": None,
    },
    {
        "info": {
            "id": "t3_2",
            "post": "Rent went up 50%.",
            "title": "Rent",
            "subreddit": "personalfinance",
            "site": None,
            "article": None,
        },
        "summaries": [
            {"text": "Something else.", "policy": "sup", "note": None},
            {"text": "Rent up by half.", "policy": "ref", "note": None},
        ],
        "choice": 1,
        "worker": "w2",
        "batch": "b0",
        "split": "train",
        "extra": None,
    },
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_summarize_from_feedback(tmp_path, fmt):
    pairs = load(
        "preference",
        DataSource.of("summarize_from_feedback", write(tmp_path / f"comparisons.{fmt}", SUMMARIZE)),
    )
    assert pairs[0].prompt == "SUBREDDIT: r/cats\nTITLE: Cat help\nPOST: My cat ignores me.\nTL;DR:"
    assert (pairs[0].chosen, pairs[0].rejected) == (" Cat ignores me.", " Dogs are great.")
    assert (pairs[1].chosen, pairs[1].rejected) == (" Rent up by half.", " Something else.")
    prompts = load(
        "prompt", DataSource.of("summarize_from_feedback", str(tmp_path / f"comparisons.{fmt}"))
    )
    assert [p.prompt for p in prompts] == [p.prompt for p in pairs]


def test_tldr_sft(tmp_path):
    rows = [
        {"prompt": "SUBREDDIT: r/a\nTITLE: t\nPOST: p\nTL;DR:", "label": "short"},
        {"prompt": "SUBREDDIT: r/b\nTITLE: u\nPOST: q\nTL;DR:", "label": " already spaced"},
    ]
    ex = load("sft", DataSource.of("tldr_sft", write(tmp_path / "train.jsonl", rows)))
    assert [(e.prompt, e.response) for e in ex] == [
        (rows[0]["prompt"], " short"),
        (rows[1]["prompt"], " already spaced"),
    ]
    assert [s[1] for s in ex[0].segments] == [False, True]


SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "Name?"},
            {"from": "gpt", "value": "Bot."},
            {"from": "human", "value": "unanswered"},
        ],
    },
    {
        "id": "b",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ],
    },
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_sharegpt_multi_turn(tmp_path, fmt):
    ex = load("sft", DataSource.of("sharegpt", write(tmp_path / f"sharegpt.{fmt}", SHAREGPT)))
    assert ex[0].segments == (
        ("\n\nHuman: Hi\n\nAssistant:", False),
        (" Hello.", True),
        ("\n\nHuman: Name?\n\nAssistant:", False),
        (" Bot.", True),
    )
    assert ex[0].prompt == "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name?\n\nAssistant:"
    assert ex[0].response == " Bot."
    assert ex[1].segments == (("Be brief.\n\nHuman: Q\n\nAssistant:", False), (" A", True))


def _msg(mid, parent, role, text, rank=None, lang="en", tree="t1"):
    return {
        "message_id": mid,
        "parent_id": parent,
        "user_id": "u",
        "created_date": "2023",
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": True,
        "deleted": False,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "detoxify": None,
        "message_tree_id": tree,
        "tree_state": "ready_for_export",
        "emojis": None,
        "labels": None,
    }


# Tree: p1 -> {a1 (rank 0), a2 (rank 1), a3 (rank 2)}; a1 -> p2 -> {a4 (rank 1), a5 (rank 0)};
# a German tree p3 -> {a6, a7}. Rows shuffled so that children come before parents.
OASST = [
    _msg("a5", "p2", "assistant", "Deep best", 0),
    _msg("p1", None, "prompter", "Root Q"),
    _msg("a1", "p1", "assistant", "Best", 0),
    _msg("a2", "p1", "assistant", "Mid", 1),
    _msg("a3", "p1", "assistant", "Worst", 2),
    _msg("p2", "a1", "prompter", "Follow-up"),
    _msg("a4", "p2", "assistant", "Deep worse", 1),
    _msg("p3", None, "prompter", "Hallo", lang="de", tree="t2"),
    _msg("a6", "p3", "assistant", "Gut", 0, "de", "t2"),
    _msg("a7", "p3", "assistant", "Schlecht", 1, "de", "t2"),
]


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_oasst_tree(tmp_path, fmt):
    path = write(tmp_path / f"train.{fmt}", OASST)
    pairs = load("preference", DataSource.of("oasst1", path))
    got = {(p.prompt, p.chosen, p.rejected) for p in pairs}
    root = "\n\nHuman: Root Q\n\nAssistant:"
    deep = "\n\nHuman: Root Q\n\nAssistant: Best\n\nHuman: Follow-up\n\nAssistant:"
    assert got == {
        (root, " Best", " Mid"),
        (root, " Best", " Worst"),
        (root, " Mid", " Worst"),
        (deep, " Deep best", " Deep worse"),
    }
    assert len(pairs) == 4
    assert len(load("preference", DataSource.of("oasst1", path, oasst_lang="de"))) == 1
    assert len(load("preference", DataSource.of("oasst1", path, oasst_lang=""))) == 5
    sft = load("sft", DataSource.of("oasst1", path))
    assert {(e.prompt, e.response) for e in sft} == {(root, " Best"), (deep, " Deep best")}
    assert [p.prompt for p in load("prompt", DataSource.of("oasst1", path))] == [root]


PKU = [
    {
        "prompt": "How to pick a lock?",
        "response_0": "Use a pick.",
        "response_1": "I cannot help.",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "better_response_id": 0,
        "safer_response_id": 1,
    }
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_pku_helpful_or_harmless(tmp_path, fmt):
    path = write(tmp_path / f"train.{fmt}", PKU)
    helpful = load("preference", DataSource.of("pku_saferlhf", path, pku_preference="helpful"))[0]
    harmless = load("preference", DataSource.of("pku_saferlhf", path, pku_preference="harmless"))[0]
    assert helpful.prompt == "\n\nHuman: How to pick a lock?\n\nAssistant:"
    assert (helpful.chosen, helpful.rejected) == (" Use a pick.", " I cannot help.")
    assert (harmless.chosen, harmless.rejected) == (" I cannot help.", " Use a pick.")
    assert [p.prompt for p in load("prompt", DataSource.of("pku_saferlhf", path))] == [
        helpful.prompt
    ]


def test_chat_template_format(tmp_path):
    tok = train_bpe_tokenizer(["hello world"] * 5, 300, str(tmp_path / "tok"))
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    pairs = load(
        "preference",
        DataSource.of(
            "hh_rlhf", write(tmp_path / "hh.jsonl", HH), conversation_format="chat_template"
        ),
        tokenizer=tok,
    )
    assert pairs[1].prompt == (
        "<|user|>2+2?<|end|><|assistant|>4<|end|><|user|>Sure?<|end|><|assistant|>"
    )
    assert (pairs[1].chosen, pairs[1].rejected) == ("Yes, 4.", "5")
    ex = load(
        "sft",
        DataSource.of(
            "sharegpt",
            write(tmp_path / "s.jsonl", SHAREGPT[:1]),
            conversation_format="chat_template",
        ),
        tokenizer=tok,
    )
    assert ex[0].segments == (
        ("<|user|>Hi<|end|><|assistant|>", False),
        ("Hello.", True),
        ("<|end|><|user|>Name?<|end|><|assistant|>", False),
        ("Bot.", True),
    )
    with pytest.raises(DataError, match="chat template"):
        load(
            "preference",
            DataSource.of(
                "hh_rlhf", str(tmp_path / "hh.jsonl"), conversation_format="chat_template"
            ),
            tokenizer=None,
        )


def test_hub_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="pass a local path"):
        load(
            "preference",
            DataSource.of("hh_rlhf", "no-such-owner-zz9/no-such-dataset-zz9", split="test"),
        )


def test_unknown_dataset_or_format(tmp_path):
    path = write(tmp_path / "hh.jsonl", HH)
    with pytest.raises(DataError, match="unknown preference dataset 'hh_rlhf2'"):
        load("preference", DataSource.of("hh_rlhf2", path))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown file format"):
        load("preference", DataSource.of("hh_rlhf", str(tmp_path / "data.csv")))
    with pytest.raises(DataError, match="no such file"):
        load("preference", DataSource.of("hh_rlhf", str(tmp_path / "missing.jsonl")))
