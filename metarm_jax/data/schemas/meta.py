"""The meta dataset (the MetaRM's X_s): our sampler's output, one row per prompt with its k
sampled responses and how they were sampled. Its schema (docs/data.md), the row parser, and the
writer (.jsonl, .jsonl.gz or .parquet, atomically)."""

from __future__ import annotations

import gzip
import json

from metarm_jax.data.records import (
    BAD_VALUE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    MISSING_FIELD,
    WRONG_TYPE,
    DataError,
    MetaExample,
    SamplingInfo,
    check_str,
    check_text,
)
from metarm_jax.data.rows import file_ext
from metarm_jax.data.schemas.common import ParseOptions, row_reader
from metarm_jax.runtime import fileio

META_SAMPLING_FIELDS = {"temperature": float, "top_p": float, "policy_step": int, "seed": int}
META_OPTIONAL_FIELDS = {
    "round": int,
    "repetition_penalty": float,
    "max_new_tokens": int,
    "policy": str,
}


def meta_example(where, row, report, o: ParseOptions):
    """One row of the schema above -> a MetaExample (at most ``o.k`` responses)."""
    k = o.k
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    if p is None:
        return None
    rs = row.get("responses")
    if rs is None:
        return report.bad(where, MISSING_FIELD, "responses")
    if not isinstance(rs, (list, tuple)):
        return report.bad(where, WRONG_TYPE, "responses", "expected a list of strings")
    if not rs:
        return report.bad(where, EMPTY_RESPONSE, "responses", "no responses")
    if k and len(rs) > k:
        return report.bad(where, BAD_VALUE, "responses", f"{len(rs)} responses, more than k={k}")
    # An empty sampled response is a real policy output (EOS first), so it is allowed here.
    rs = [
        check_str(report, where, r, f"responses[{i}]", allow_empty=True) for i, r in enumerate(rs)
    ]
    if any(r is None for r in rs):
        return None
    info = {}
    for f, t in {**META_SAMPLING_FIELDS, **META_OPTIONAL_FIELDS}.items():
        v = row.get(f)
        if v is None:
            if f in META_SAMPLING_FIELDS:
                return report.bad(where, MISSING_FIELD, f)
            continue
        ok = (
            isinstance(v, str)
            if t is str
            else (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (t is float or float(v).is_integer())
            )
        )
        if not ok:
            return report.bad(
                where, WRONG_TYPE, f, f"expected {t.__name__}, got {type(v).__name__}"
            )
        info[f] = t(v)
    return MetaExample(p, tuple(rs), SamplingInfo(**info), where)


def meta_row(ex: MetaExample | dict) -> dict:
    """One meta file row (the on-disk schema) for a MetaExample or an equivalent dict."""
    if isinstance(ex, dict):
        return dict(ex)
    row = {"prompt": ex.prompt, "responses": list(ex.responses)}
    s = ex.sampling
    row.update({f: getattr(s, f) for f in (*META_SAMPLING_FIELDS, *META_OPTIONAL_FIELDS)})
    return row


def write_meta_dataset(path: str, examples) -> str:
    """Writes MetaExamples (or row dicts) to .jsonl, .jsonl.gz or .parquet atomically.

    The file appears complete or not at all: it is written to a temporary name in the same
    folder and renamed. Returns `path`.
    """
    ext = file_ext(path)
    if ext not in (".jsonl", ".jsonl.gz", ".parquet"):
        raise DataError(f"{path}: meta datasets are written as .jsonl, .jsonl.gz or .parquet.")
    rows = [meta_row(e) for e in examples]
    with fileio.atomic_path(path) as tmp:
        if ext == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            opener = gzip.open if ext == ".jsonl.gz" else open
            with opener(tmp, "wt", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


READERS = {"meta": {"meta": row_reader(meta_example)}}
