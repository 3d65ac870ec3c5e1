"""Fuzzing with hypothesis: every dataset reader, the tokenization path and the config override
parser get generated malformed input. The only outcomes allowed: parsed correctly, skipped and
counted, or our one-line error naming the file (and row and field). Anything else (another
exception, a record with a broken field, a count that does not add up) fails.

The counts of outcomes per reader are printed (pytest -s) and kept in docs/reliability.md. The
number of examples per test is small in CI (METARM_FUZZ_EXAMPLES, default 30); the campaign ran
with more.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import random
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metarm_jax.config import lib as config_lib
from metarm_jax.data import (
    DataSource,
    TokenSpec,
    load,
    tokenize_pairs,
    tokenize_prompts,
    tokenize_sft,
)
from metarm_jax.runtime.errors import UserError

EXAMPLES = int(os.environ.get("METARM_FUZZ_EXAMPLES", "30"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same examples on every run: a failure reproduces
)
OUTCOMES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

HH = (
    "\n\nHuman: what is a cat?\n\nAssistant: an animal",
    "\n\nHuman: what is a cat?\n\nAssistant: a dog",
)
TEMPLATES = {
    "hh_rlhf": {"chosen": HH[0], "rejected": HH[1]},
    "summarize_from_feedback": {
        "info": {"post": "my post", "title": "a title", "subreddit": "cats"},
        "summaries": [{"text": "short one"}, {"text": "other one"}],
        "choice": 1,
    },
    "tldr_sft": {"prompt": "SUBREDDIT: r/cats TITLE: t POST: p TL;DR:", "label": " a summary"},
    "sharegpt": {
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    },
    "pku_saferlhf": {
        "prompt": "how to bake?",
        "response_0": "with an oven",
        "response_1": "no idea",
        "better_response_id": 0,
        "safer_response_id": 1,
    },
    "prompts": {"prompt": "hello there"},
    "trl": {
        "prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}],
        "chosen": [{"role": "assistant", "content": "hello"}],
        "rejected": [{"role": "assistant", "content": "go away"}],
    },
    "meta": {
        "prompt": "\n\nHuman: hi\n\nAssistant:",
        "responses": ["a", "b"],
        "temperature": 0.8,
        "top_p": 0.9,
        "policy_step": 0,
        "seed": 0,
    },
}
OASST = [
    {
        "message_id": "m1",
        "parent_id": None,
        "text": "hi",
        "role": "prompter",
        "lang": "en",
        "rank": None,
    },
    {
        "message_id": "m2",
        "parent_id": "m1",
        "text": "hello",
        "role": "assistant",
        "lang": "en",
        "rank": 0,
    },
    {
        "message_id": "m3",
        "parent_id": "m1",
        "text": "hey",
        "role": "assistant",
        "lang": "en",
        "rank": 1,
    },
]
STRANGE = st.sampled_from(
    [
        "",
        " ",
        "\x00\x01\x07",  # control characters
        "\u202eevil\u202c",  # right-to-left override
        "e\u0301\u0327",  # combining characters
        "\ufffd",  # the replacement character
        "x" * 20_000,  # huge
        "\n\nHuman:",
        "\n\nAssistant:",
        "日本語 текст עברית",
    ]
)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | STRANGE | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)


def _mutate(row: dict, data) -> dict:
    """A copy of a valid row with keys dropped, replaced by odd values, or added; deep for
    nested fields."""
    row = json.loads(json.dumps(row))
    for key in list(row):
        action = data.draw(st.sampled_from(["keep", "keep", "drop", "value", "strange", "nest"]))
        if action == "drop":
            del row[key]
        elif action == "value":
            row[key] = data.draw(JSON_VALUE)
        elif action == "strange" and isinstance(row[key], str):
            row[key] = data.draw(STRANGE) + row[key][: data.draw(st.integers(0, 5))]
        elif action == "nest" and isinstance(row[key], list | dict):
            row[key] = [row[key], data.draw(JSON_VALUE)]
    if data.draw(st.booleans()):
        row[data.draw(st.text(min_size=1, max_size=6))] = data.draw(JSON_VALUE)
    return row


def _write(path: pathlib.Path, rows: list, fmt: str, data) -> None:
    lines = [json.dumps(r, ensure_ascii=data.draw(st.booleans())).encode() for r in rows]
    if data.draw(st.integers(0, 9)) == 0 and lines:  # an invalid UTF-8 line
        lines[data.draw(st.integers(0, len(lines) - 1))] = b'{"prompt": "\xff\xfe"}'
    blob = b"\n".join(lines) + b"\n"
    if fmt == "jsonl":
        path.write_bytes(blob)
    elif fmt == "jsonl.gz":
        gz = gzip.compress(blob)
        if data.draw(st.integers(0, 4)) == 0:  # truncated gzip
            gz = gz[: max(10, len(gz) // 2)]
        path.write_bytes(gz)
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:  # parquet: schemaless rows may not form a table (that is an outcome too)
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(pa.Table.from_pylist([r for r in rows if isinstance(r, dict)]), path)
        except (
            pa.ArrowInvalid,
            pa.ArrowTypeError,
            pa.ArrowNotImplementedError,
            ValueError,
            OverflowError,
        ):
            path.write_bytes(b"PAR1 this is not a parquet file")


def _check_text(x, what):
    assert isinstance(x, str), (what, type(x))


def _check_records(kind, recs):
    rep = recs.skip_report
    assert rep is not None and 0 <= rep.skipped <= rep.total
    for r in recs:
        if kind == "pairs":
            for f in (r.prompt, r.chosen, r.rejected):
                _check_text(f, "pair")
            assert r.chosen != r.rejected and r.chosen.strip() and r.rejected.strip()
        elif kind == "sft":
            _check_text(r.prompt, "sft prompt")
            assert any(is_reply and text.strip() for text, is_reply in r.segments)
        elif kind == "prompts":
            _check_text(r.prompt, "prompt")
            assert r.prompt.strip()
        else:
            _check_text(r.prompt, "meta prompt")
            assert all(isinstance(x, str) for x in r.responses)


def _outcome(reader: str, read, kind: str, path: pathlib.Path) -> str:
    try:
        recs = read(str(path))
    except UserError as e:
        msg = str(e)
        assert "\n" not in msg.strip(), msg  # one line
        assert path.name in msg or "no rows" in msg or "rows are bad" in msg or "skipped" in msg, (
            msg
        )
        outcome = "our error"
    else:
        _check_records(kind, recs)
        outcome = "skipped and counted" if recs.skip_report.skipped else "parsed"
    OUTCOMES[reader][outcome] += 1
    return outcome


READERS = {
    "hh_rlhf": (lambda p, **kw: load("preference", DataSource.of("hh_rlhf", p, **kw)), "pairs"),
    "summarize_from_feedback": (
        lambda p, **kw: load("preference", DataSource.of("summarize_from_feedback", p, **kw)),
        "pairs",
    ),
    "pku_saferlhf": (
        lambda p, **kw: load("preference", DataSource.of("pku_saferlhf", p, **kw)),
        "pairs",
    ),
    "tldr_sft": (lambda p, **kw: load("sft", DataSource.of("tldr_sft", p, **kw)), "sft"),
    "sharegpt": (lambda p, **kw: load("sft", DataSource.of("sharegpt", p, **kw)), "sft"),
    "prompts": (lambda p, **kw: load("prompt", DataSource.of("prompts", p, **kw)), "prompts"),
    "trl": (lambda p, **kw: load("preference", DataSource.of("trl", p, **kw)), "pairs"),
    "meta": (lambda p, **kw: load("meta", DataSource.of("meta", p, **kw), k=4), "meta"),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(data=st.data())
def test_readers_on_malformed_rows(reader, data):
    read, kind = READERS[reader]
    n = data.draw(st.integers(1, 6))
    rows = [_mutate(TEMPLATES[reader], data) for _ in range(n)]
    if data.draw(st.booleans()):
        rows += [dict(TEMPLATES[reader])] * data.draw(st.integers(1, 3))  # good and duplicated
    if data.draw(st.integers(0, 9)) == 0:
        rows.append(data.draw(JSON_VALUE))  # a row that is not an object
    fmt = data.draw(st.sampled_from(["jsonl", "jsonl.gz", "json", "parquet"]))
    policy = data.draw(st.sampled_from(["skip", "error"]))
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / f"data.{fmt}"
        _write(path, rows, fmt, data)
        _outcome(
            reader,
            lambda p: read(p, on_bad_record=policy, max_skip_fraction=1.0),
            kind,
            path,
        )


@FUZZ
@given(data=st.data())
def test_oasst1_threads_on_malformed_messages(data):
    rows = [_mutate(r, data) for r in OASST] + data.draw(st.lists(st.just(OASST[1]), max_size=2))
    random.Random(data.draw(st.integers(0, 99))).shuffle(rows)
    with tempfile.TemporaryDirectory() as d:
        path = pathlib.Path(d) / "data.jsonl"
        _write(path, rows, "jsonl", data)
        for name, kind, records in (
            ("oasst1 pairs", "preference", "pairs"),
            ("oasst1 sft", "sft", "sft"),
            ("oasst1 prompts", "prompt", "prompts"),
        ):
            source = DataSource.of("oasst1", str(path), on_bad_record="skip", max_skip_fraction=1.0)
            _outcome(name, lambda p: load(kind, source), records, path)


def test_damaged_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    good.write_bytes(gzip.compress(b'{"prompt": "hi"}\n' * 50))
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(good.read_bytes()[:30])
    wrong = tmp_path / "wrong.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"a": 1, "b": [1, 2]}]), wrong)
    notparquet = tmp_path / "bad.parquet"
    notparquet.write_bytes(b"PAR1garbage")
    for path, what in ((truncated, "cannot read it"), (notparquet, "not a readable parquet")):
        with pytest.raises(UserError, match=what) as e:
            load("prompt", DataSource.of("prompts", str(path)))
        assert "\n" not in str(e.value) and path.name in str(e.value)
    # a parquet with the wrong schema: every row is a counted bad row, then our threshold error
    with pytest.raises(UserError, match=r"wrong.parquet.*missing_field.*fields prompt") as e:
        load("prompt", DataSource.of("prompts", str(wrong)))
    assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from metarm_jax.data import train_bpe_tokenizer

    texts = ["\n\nHuman: hello\n\nAssistant: hi", "the cat", "日本語 текст"] * 3
    return train_bpe_tokenizer(texts, 300, str(tmp_path_factory.mktemp("tok")))


@FUZZ
@given(data=st.data())
def test_tokenization_of_odd_but_valid_text(tokenizer, data):
    """Whatever the text (control, RTL, combining, huge), tokenization keeps every response
    whole or skips the record as too long, counted."""
    from metarm_jax.config import defaults
    from metarm_jax.data.records import PreferencePair, PromptExample, SFTExample, Source

    cfg = defaults.data()
    cfg.max_length, cfg.bucket_lengths, cfg.max_prompt_length = 64, (32, 64), 16
    spec = TokenSpec.from_config(cfg, tokenizer)
    where = Source("fuzz", "mem", 0)
    txt = lambda: data.draw(STRANGE | st.text(min_size=1, max_size=80)).strip() or "x"
    prompt, a, b = txt(), txt(), txt() + "!"

    def outcome(fn):  # kept whole, or skipped as too long: then our one-line threshold error
        try:
            return fn()
        except UserError as e:
            assert "\n" not in str(e) and "too_long" in str(e), str(e)
            OUTCOMES["tokenization"]["too long: our error"] += 1
            return None

    pairs = outcome(lambda: tokenize_pairs([PreferencePair(prompt, a, b, where)], tokenizer, spec))
    if pairs is not None:
        OUTCOMES["tokenization"]["kept"] += 1
        assert len(pairs) == 1
        for f in pairs:
            assert len(f["chosen"]) <= cfg.max_length and len(f["rejected"]) <= cfg.max_length
    sft = outcome(
        lambda: tokenize_sft([SFTExample(((prompt, False), (a, True)), where)], tokenizer, spec)
    )
    assert sft is None or len(sft) == 1
    prompts = tokenize_prompts([PromptExample(prompt, where)], tokenizer, spec)
    assert len(prompts) == 1 and 1 <= len(prompts[0]["ids"]) <= cfg.max_prompt_length + 1


KEYS = sorted(config_lib.flat_keys(config_lib.base_config()))


@FUZZ
@given(data=st.data())
def test_config_overrides_are_accepted_or_one_line_errors(data):
    """Unknown keys, removed keys and values of any type on any key: validate either passes or
    raises ConfigError with one line (never a TypeError or KeyError from deep inside)."""
    config = config_lib.base_config()
    keys = data.draw(
        st.lists(
            st.sampled_from(KEYS) | st.sampled_from(["data.meta_k", "sampling.num_samples"])
            | st.text(min_size=1, max_size=12),
            max_size=3,
        )
    )  # fmt: skip
    try:
        config_lib.check_override_keys(config, keys)
    except UserError as e:
        assert "\n" not in str(e)
        OUTCOMES["config overrides"]["our error (key)"] += 1
        return
    for key in keys:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if isinstance(node[leaf], dict | config_lib.ml_collections.ConfigDict):
            continue
        old = node[leaf]
        value = data.draw(JSON_VALUE)
        try:
            node[leaf] = value
        except (TypeError, ValueError):  # ml_collections refuses the type: the CLI says so
            node[leaf] = old
    try:
        config_lib.validate(config, 8)
        config_lib.resolve(config, "runs/x")
        OUTCOMES["config overrides"]["accepted"] += 1
    except UserError as e:
        assert "\n" not in str(e), str(e)
        OUTCOMES["config overrides"]["our error (value)"] += 1


def test_print_outcomes():
    """The table of docs/reliability.md (run with -s to see it)."""
    print(f"\nfuzz outcomes (examples per test: {EXAMPLES})")
    for reader, c in sorted(OUTCOMES.items()):
        print(f"  {reader:28s} " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    assert np.sum([sum(c.values()) for c in OUTCOMES.values()]) > 0
