"""The real Anthropic/hh-rlhf sample (harmless-base test, 2,000 rows, exact hub format)."""

import gzip
import json
import os
import pathlib

import pytest

from metarm_jax.data import DataError, DataSource, load

SHARED = pathlib.Path(
    os.environ.get("METARM_SHARED_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared")
)
SAMPLE = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
A = "\n\nAssistant:"
# Counted from the file: 4 rows have an empty chosen reply (the transcript ends at 'Assistant: ').
EMPTY_CHOSEN_ROWS = [86, 516, 925, 1103]
# Rows whose replies contain 'Human:' / '\n\nAssistant:' text themselves.
TRICKY_ROWS = [1254, 1688, 1950, 1952]


@pytest.fixture(scope="module")
def rows():
    if not SAMPLE.exists():
        pytest.skip(
            f"missing shared HH sample {SAMPLE} (set METARM_SHARED_DIR to the shared folder)"
        )
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def pairs(rows):
    return load(
        "preference", DataSource.of("hh_rlhf", str(SAMPLE), split="test", on_bad_record="skip")
    )


def test_every_row_parses_and_round_trips(rows, pairs):
    assert len(rows) == 2000
    assert len(pairs) == 1996
    rep = pairs.skip_report
    assert rep.total == 2000 and rep.counts == {"empty_response": 4}
    assert [int(r) for r in rep.first_rows["empty_response"]] == EMPTY_CHOSEN_ROWS
    seen = [p.source.row for p in pairs]
    assert seen == [i for i in range(2000) if i not in EMPTY_CHOSEN_ROWS]
    for p in pairs:
        row = rows[p.source.row]
        assert p.prompt.endswith(A) and p.prompt.startswith("\n\nHuman: ")
        assert p.prompt + p.chosen == row["chosen"]
        assert p.prompt + p.rejected == row["rejected"]
        assert p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected


def test_replies_that_contain_turn_markers(rows, pairs):
    by_row = {p.source.row: p for p in pairs}
    for i in TRICKY_ROWS:
        p, row = by_row[i], rows[i]
        assert p.prompt + p.chosen == row["chosen"] and p.prompt + p.rejected == row["rejected"]
        # One of the two replies contains '\n\nAssistant:' itself, so splitting each transcript at
        # its own last '\n\nAssistant:' would give the two transcripts different prompts.
        assert A in p.chosen or A in p.rejected
        naive = {t[: t.rfind(A) + len(A)] for t in (row["chosen"], row["rejected"])}
        assert naive != {p.prompt}
    assert "Human: Then how do they come to be called drag kings" in by_row[1254].chosen
    # Exactly these four rows have a marker inside a reply.
    assert sorted(i for i, p in by_row.items() if A in p.chosen or A in p.rejected) == TRICKY_ROWS


def test_error_mode_stops_at_first_bad_row():
    if not SAMPLE.exists():
        pytest.skip(f"missing shared HH sample {SAMPLE}")
    with pytest.raises(DataError, match=r"test.jsonl.gz: row 86: field .chosen.: empty_response"):
        load(
            "preference", DataSource.of("hh_rlhf", str(SAMPLE), split="test", on_bad_record="error")
        )


def test_directory_with_data_dir_and_prompts(rows):
    pairs = load(
        "preference",
        DataSource.of(
            "hh_rlhf", str(SHARED / "data" / "hh-rlhf"), split="test", data_dir="harmless-base"
        ),
    )
    assert len(pairs) == 1996
    prompts = load("prompt", DataSource.of("hh_rlhf", str(SAMPLE), split="test"))
    assert len(prompts) == len({p.prompt for p in pairs}) == 1994  # two prompts appear twice
    assert all(p.prompt.endswith(A) for p in prompts)
