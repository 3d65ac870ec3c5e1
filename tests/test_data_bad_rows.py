"""Bad input: every kind names its row and reason; 'skip' counts and stops above the limit."""

import json

import pytest

from metarm_jax.data import (
    DataError,
    DataSource,
    TokenSpec,
    load,
    tokenize_pairs,
)

try:  # tests/ may or may not be a package
    from tests.test_data_readers import tiny_tokenizer, write
except ImportError:
    from test_data_readers import tiny_tokenizer, write  # noqa: F401 (fixture)

GOOD = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
N_GOOD = 200  # one bad row in 201 is under the default 1% limit; three are over it
BAD_AT = 7

BAD_HH = {  # reason -> (bad row, field named in the message)
    "missing_field": ({"chosen": GOOD["chosen"]}, "rejected"),
    "wrong_type": ({"chosen": 5, "rejected": GOOD["rejected"]}, "chosen"),
    "empty_prompt": (
        {"chosen": "\n\nHuman: \n\nAssistant: a", "rejected": "\n\nHuman: \n\nAssistant: b"},
        "chosen/rejected",
    ),
    "empty_response": (
        {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": GOOD["rejected"]},
        "chosen",
    ),
    "chosen_identical_to_rejected": (
        {"chosen": GOOD["chosen"], "rejected": GOOD["chosen"]},
        "chosen/rejected",
    ),
    "prompts_differ": (
        {
            "chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: x\n\nAssistant: y",
            "rejected": "\n\nHuman: q\n\nAssistant: a\n\nHuman: z\n\nAssistant: y",
        },
        "chosen/rejected",
    ),
}


def _rows(bad, n_bad=1):
    rows = [dict(GOOD) for _ in range(N_GOOD)]
    for j in range(n_bad):
        rows.insert(BAD_AT + 10 * j, bad)
    return rows


@pytest.mark.parametrize("reason", sorted(BAD_HH))
def test_error_mode_names_row_field_and_reason(tmp_path, reason):
    bad, field = BAD_HH[reason]
    path = write(tmp_path / "train.jsonl", _rows(bad))
    with pytest.raises(DataError) as e:
        load("preference", DataSource.of("hh_rlhf", path, on_bad_record="error"))
    msg = str(e.value)
    assert f"{path}: row {BAD_AT}: field {field!r}: {reason}" in msg, msg
    assert "\n" not in msg.strip()  # one clear message


@pytest.mark.parametrize("reason", sorted(BAD_HH))
def test_skip_mode_counts_and_threshold(tmp_path, reason, capsys):
    bad, field = BAD_HH[reason]
    pairs = load("preference", DataSource.of("hh_rlhf", write(tmp_path / "a.jsonl", _rows(bad))))
    assert len(pairs) == N_GOOD
    assert pairs.skip_report.counts == {reason: 1}
    assert pairs.skip_report.first_rows == {reason: [str(BAD_AT)]}
    assert pairs.skip_report.as_metrics()[f"data/hh_rlhf:train/skipped/{reason}"] == 1.0
    # the summary names the reason, the first rows and the field(s) it was found in
    assert f"{reason}: 1 (first rows {BAD_AT}; fields {field})" in capsys.readouterr().out
    with pytest.raises(
        DataError, match=rf"3 of 203 rows are bad .*{reason}: 3 \(first rows 7, 17, 27; fields "
    ):
        load("preference", DataSource.of("hh_rlhf", write(tmp_path / "b.jsonl", _rows(bad, 3))))
    # A looser limit lets them through.
    assert (
        len(
            load(
                "preference",
                DataSource.of("hh_rlhf", str(tmp_path / "b.jsonl"), max_skip_fraction=0.05),
            )
        )
        == N_GOOD
    )


def _raw_lines(tmp_path, bad_line: bytes, name="train.jsonl"):
    lines = [json.dumps(GOOD).encode()] * N_GOOD
    lines.insert(BAD_AT, bad_line)
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


@pytest.mark.parametrize(
    "line,reason",
    [
        (b'{"chosen": "\xff\xfe bad bytes", "rejected": "x"}', "undecodable_text"),
        (b'{"chosen": "\\ud800 lone surrogate", "rejected": "x"}', "undecodable_text"),
        (b'{"chosen": "truncated json', "malformed_row"),
        (b'["not", "an", "object"]', "malformed_row"),
    ],
)
def test_undecodable_and_malformed_lines(tmp_path, line, reason):
    path = _raw_lines(tmp_path, line)
    with pytest.raises(DataError, match=rf"row {BAD_AT}: (field .chosen.: )?{reason}"):
        load("preference", DataSource.of("hh_rlhf", path, on_bad_record="error"))
    pairs = load("preference", DataSource.of("hh_rlhf", path))
    assert len(pairs) == N_GOOD and pairs.skip_report.counts == {reason: 1}


def test_too_long_after_prompt_truncation(tmp_path, tiny_tokenizer):
    rows = [dict(GOOD) for _ in range(N_GOOD)]
    rows[BAD_AT] = {
        "chosen": "\n\nHuman: q\n\nAssistant: " + "yes " * 100,
        "rejected": GOOD["rejected"],
    }
    path = write(tmp_path / "train.jsonl", rows)
    spec = TokenSpec(max_length=32, buckets=(32,), pad_id=0, eos_id=2, bos_id=1)
    feats = tokenize_pairs(load("preference", DataSource.of("hh_rlhf", path)), tiny_tokenizer, spec)
    assert len(feats) == N_GOOD - 1 and feats.skip_report.counts == {"too_long": 1}
    with pytest.raises(DataError, match=rf"row {BAD_AT}: too_long \(the response alone needs"):
        tokenize_pairs(
            load("preference", DataSource.of("hh_rlhf", path, on_bad_record="error")),
            tiny_tokenizer,
            spec,
        )


def test_empty_file_and_no_rows(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load("preference", DataSource.of("hh_rlhf", str(tmp_path / "empty.jsonl")))
    write(tmp_path / "nothing.json", [])
    with pytest.raises(DataError, match="no rows found|could not parse"):
        load("preference", DataSource.of("hh_rlhf", str(tmp_path / "nothing.json")))


def test_wrong_dataset_for_the_file_is_caught_by_the_threshold(tmp_path):
    # A PKU file read as hh-rlhf: every row lacks 'chosen'.
    path = write(
        tmp_path / "pku.jsonl",
        [
            {
                "prompt": "p",
                "response_0": "a",
                "response_1": "b",
                "better_response_id": 0,
                "safer_response_id": 0,
            }
        ]
        * 5,
    )
    with pytest.raises(DataError, match="5 of 5 rows are bad.*missing_field"):
        load("preference", DataSource.of("hh_rlhf", path))


def test_bad_values_in_other_schemas(tmp_path):
    pku = [
        {
            "prompt": "p",
            "response_0": "a",
            "response_1": "b",
            "better_response_id": 2,
            "safer_response_id": 0,
        }
    ]
    with pytest.raises(DataError, match="row 0: field 'better_response_id': bad_value"):
        load(
            "preference",
            DataSource.of("pku_saferlhf", write(tmp_path / "p.jsonl", pku), on_bad_record="error"),
        )
    meta = [
        {"prompt": "p", "responses": ["a", "b"], "temperature": 0.8, "top_p": 0.9, "policy_step": 3}
    ]  # no seed
    with pytest.raises(DataError, match="row 0: field 'seed': missing_field"):
        load(
            "meta", DataSource.of("meta", write(tmp_path / "m.jsonl", meta), on_bad_record="error")
        )
