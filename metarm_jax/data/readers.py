"""Readers: a hub name or local files (json, jsonl, jsonl.gz, parquet) -> canonical records.

Rows are read with `datasets.load_dataset` in each hub dataset's exact schema; each dataset has
one small parse function from a row dict to records. Bad rows follow `data.on_bad_record`.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from metarm_jax import defaults, fileio
from metarm_jax.data import formats
from metarm_jax.data.formats import ASSISTANT, HUMAN
from metarm_jax.data.records import (
    BAD_VALUE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    IDENTICAL_RESPONSES,
    MALFORMED,
    MISSING_FIELD,
    PROMPT_MISMATCH,
    UNDECODABLE,
    WRONG_TYPE,
    DataError,
    MetaExample,
    PreferencePair,
    PromptExample,
    Records,
    SamplingInfo,
    SFTExample,
    SkipReport,
    Source,
    check_str,
    check_text,
    unique_prompts,
)

_EXTS = {
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
_SPLIT_WORDS = ("train", "test", "valid", "validation", "eval", "dev")


# ----------------------------------------------------------------------------------------------
# Finding and reading rows.


def _ext(path: str) -> str | None:
    for e in sorted(_EXTS, key=len, reverse=True):
        if path.endswith(e):
            return e
    return None


def _is_local(path: str) -> bool:
    return (
        os.path.exists(path)
        or glob.has_magic(path)
        or path.startswith(("/", ".", "~"))
        or _ext(path) is not None
    )


def resolve_files(path: str, split: str = "", data_dir: str = "") -> list[str]:
    """A local file, glob or directory -> the sorted data files (of `split`, where names tell)."""
    path = os.path.expanduser(path)
    if data_dir and os.path.isdir(path):
        path = os.path.join(path, data_dir)
    if os.path.isdir(path):
        files = sorted(
            f
            for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if os.path.isfile(f) and _ext(f)
        )
        named = [f for f in files if _split_of(f)]
        if split and named:
            files = [f for f in files if _split_of(f) == _canon_split(split)]
            if not files:
                raise DataError(
                    f"{path}: no data file for split {split!r} (found "
                    f"{[os.path.relpath(f, path) for f in named]})."
                )
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory.")
    if not files:
        raise DataError(f"{path}: no data files (.json, .jsonl, .jsonl.gz, .parquet) found.")
    for f in files:
        if not _ext(f):
            raise DataError(
                f"{f}: unknown file format; expected .json, .jsonl, .jsonl.gz or .parquet."
            )
    return files


def _canon_split(s: str) -> str:
    return {"valid": "validation", "dev": "validation", "eval": "validation"}.get(s, s)


def _split_of(f: str) -> str | None:
    words = re.split(r"[^a-z]+", os.path.basename(f).lower()) + [
        os.path.basename(os.path.dirname(f)).lower()
    ]
    for w in words:
        if w in _SPLIT_WORDS:
            return _canon_split(w)
    return None


def _quiet_datasets():
    import datasets  # heavy: imported only when reading

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _load_file(file: str) -> list[dict] | None:
    """All rows of one local file, or None for a JSON-lines file that needs the line-by-line
    reader (a line that is not JSON, or not UTF-8, is then a counted bad row).

    Read directly (json, gzip, pyarrow), not through `datasets`: nothing is cached outside the
    run, no column is cast to a type inferred from other rows, and a damaged file says so."""
    if os.path.getsize(file) == 0:
        raise DataError(f"{file}: the file is empty.")
    ext = _ext(file)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file).to_pylist()
        except Exception as e:
            raise DataError(
                f"{file}: not a readable parquet file ({str(e).splitlines()[0][:200]})."
            ) from None
    opener = gzip.open if ext.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise DataError(f"{file}: cannot read it ({e}); is the file complete?") from None
    if ext in (".json", ".json.gz"):
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # JSON lines under a .json name, or bad lines: read line by line
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            return [obj]
        raise DataError(f"{file}: expected a JSON list of objects (or JSON lines).")
    return None


def _lines_with_errors(file: str, report: SkipReport) -> Iterator[tuple[int, Any]]:
    """Line-by-line JSONL fallback that turns undecodable / malformed lines into bad rows."""
    opener = gzip.open if file.endswith(".gz") else open
    with opener(file, "rb") as f:
        data = f.read()
    row = 0
    for line in io.BytesIO(data):
        if not line.strip():
            continue
        where = Source("", file, row)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            report.total += 1
            report.bad(where, UNDECODABLE, None, f"invalid UTF-8 at byte {e.start}")
            row += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.total += 1
            report.bad(where, MALFORMED, None, f"invalid JSON: {e.msg} at column {e.colno}")
            row += 1
            continue
        yield row, obj
        row += 1


def read_rows(
    path: str, report: SkipReport, *, name: str = "", data_dir: str = "", split: str = "train"
) -> Iterator[tuple[Source, dict]]:
    """(Source, row dict) for every row; counts rows in `report.total`."""
    if not path:
        raise DataError(f"{report.name}: no dataset path given (a hub name or a local file).")
    if not _is_local(path):
        yield from _read_hub(path, report, name=name, data_dir=data_dir, split=split)
        return
    files = resolve_files(path, split, data_dir)
    for file in files:
        rows = _load_file(file)
        if rows is not None:
            it = enumerate(rows)
        elif file.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            it = _lines_with_errors(file, report)
        else:
            raise DataError(
                f"{file}: could not parse this {_ext(file)} file; check that it is valid "
                "(a JSON list or JSON lines, or a parquet table)."
            )
        for i, row in it:
            report.total += 1
            where = Source(report.name, file, i)
            if not isinstance(row, dict):
                report.bad(
                    where, MALFORMED, None, f"expected a JSON object, got {type(row).__name__}"
                )
                continue
            yield where, row
    if report.total == 0:
        raise DataError(f"{path}: no rows found (empty file?).")


def _read_hub(path, report, *, name, data_dir, split):
    datasets = _quiet_datasets()
    try:
        ds = datasets.load_dataset(path, name or None, data_dir=data_dir or None, split=split)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"could not load {path!r} (config {name or None!r}, data_dir {data_dir or None!r}, split "
            f"{split!r}) with datasets.load_dataset: {type(e).__name__}: {first}. If this machine is "
            "offline or the name is wrong, download the data and pass a local path instead (a file, "
            "a glob, or a directory of .json/.jsonl/.jsonl.gz/.parquet files)."
        ) from None
    for i, row in enumerate(ds):
        report.total += 1
        yield Source(report.name, path, i), row


# ----------------------------------------------------------------------------------------------
# Per-dataset parsing: one function per hub schema. Each returns records, or None for a bad row.


class Opts:
    """What the parse functions need: the formatter pair and dataset options."""

    def __init__(
        self, conversation_format="hh", tokenizer=None, pku_preference="helpful", oasst_lang="en"
    ):
        self.hh = conversation_format == "hh"
        self.prompt_fn, self.reply_fn = formats.formatter(conversation_format, tokenizer)
        if pku_preference not in ("helpful", "harmless"):
            raise DataError(
                f"data.pku_preference must be 'helpful' or 'harmless', got {pku_preference!r}."
            )
        self.pku_preference = pku_preference
        self.oasst_lang = oasst_lang


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str] | tuple[None, str, str]:
    """(prompt, chosen_reply, rejected_reply) by the longest common prefix, or (None, reason, why).

    The prompt is the common prefix cut back to end with its last '\\n\\nAssistant:'. Splitting each
    transcript at its own last '\\n\\nAssistant:' is wrong: some replies contain that text.
    """
    if chosen == rejected:
        return None, IDENTICAL_RESPONSES, "the two transcripts are identical"
    n = len(os.path.commonprefix([chosen, rejected]))
    j = chosen.rfind(ASSISTANT, 0, n)
    if j < 0 or j + len(ASSISTANT) > n:
        if ASSISTANT not in chosen or ASSISTANT not in rejected:
            return None, MALFORMED, 'no "\\n\\nAssistant:" turn'
        return None, PROMPT_MISMATCH, "the transcripts differ before the first Assistant turn"
    prompt = chosen[: j + len(ASSISTANT)]
    c, r = chosen[len(prompt) :], rejected[len(prompt) :]
    if HUMAN in c or HUMAN in r:
        return None, PROMPT_MISMATCH, "the transcripts differ before their last Human turn"
    if not prompt[: -len(ASSISTANT)].replace(HUMAN, "").strip():
        return None, EMPTY_PROMPT, "the prompt has no text"
    return prompt, c, r


def _hh_pair(where, row, report, o: Opts):
    c = check_text(report, where, row, "chosen")
    r = check_text(report, where, row, "rejected") if c is not None else None
    if c is None or r is None:
        return None
    prompt, cr, rr = split_hh_pair(c, r)
    if prompt is None:
        report.bad(where, cr, "chosen/rejected", rr)
        return None
    for field, reply in (("chosen", cr), ("rejected", rr)):
        if not reply.strip():
            report.bad(where, EMPTY_RESPONSE, field, "the reply after the prompt is empty")
            return None
    if o.hh:  # keep the hub text exactly: prompt + chosen == row['chosen']
        return PreferencePair(prompt, cr, rr, where)
    turns = formats.split_hh_prompt(prompt)
    return PreferencePair(
        o.prompt_fn(turns), o.reply_fn(cr, turns), o.reply_fn(rr, turns), where, turns
    )


def _single_turn_pair(where, prompt, a, b, o: Opts, tldr=False):
    turns = (("user", prompt),)
    if tldr and o.hh:  # TL;DR text is the prompt in 'hh' mode; one user turn with a template
        return PreferencePair(prompt, formats.tldr_reply(a), formats.tldr_reply(b), where, turns)
    return PreferencePair(
        o.prompt_fn(turns), o.reply_fn(a, turns), o.reply_fn(b, turns), where, turns
    )


def _tldr_text(where, row, report) -> str | None:
    info = row.get("info")
    if not isinstance(info, dict):
        report.bad(where, MISSING_FIELD if info is None else WRONG_TYPE, "info")
        return None
    parts = [
        check_text(report, where, row, f"info.{k}", empty_reason=EMPTY_PROMPT)
        for k in ("subreddit", "title", "post")
    ]
    if any(p is None for p in parts):
        return None
    return formats.tldr_prompt(*parts)


def _summarize_pair(where, row, report, o: Opts):
    prompt = _tldr_text(where, row, report)
    if prompt is None:
        return None
    s = row.get("summaries")
    if s is None:
        return report.bad(where, MISSING_FIELD, "summaries")
    if not isinstance(s, list) or len(s) != 2 or not all(isinstance(x, dict) for x in s):
        return report.bad(where, WRONG_TYPE, "summaries", 'expected a list of two {"text": ...}')
    texts = [
        check_str(report, where, x.get("text"), f"summaries[{i}].text") for i, x in enumerate(s)
    ]
    if any(t is None for t in texts):
        return None
    choice = _binary(where, row, "choice", report)
    if choice is None:
        return None
    if texts[0].strip() == texts[1].strip():
        return report.bad(where, IDENTICAL_RESPONSES, "summaries")
    return _single_turn_pair(where, prompt, texts[choice], texts[1 - choice], o, tldr=True)


def _binary(where, row, field, report) -> int | None:
    v = row.get(field)
    if v is None:
        return report.bad(where, MISSING_FIELD, field)
    if isinstance(v, bool) or not isinstance(v, int):
        return report.bad(where, WRONG_TYPE, field, f"expected 0 or 1, got {type(v).__name__}")
    if v not in (0, 1):
        return report.bad(where, BAD_VALUE, field, f"expected 0 or 1, got {v}")
    return v


def _pku_pair(where, row, report, o: Opts):
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    if p is None:
        return None
    rs = [check_text(report, where, row, f"response_{i}") for i in (0, 1)]
    if any(r is None for r in rs):
        return None
    field = "better_response_id" if o.pku_preference == "helpful" else "safer_response_id"
    w = _binary(where, row, field, report)
    if w is None:
        return None
    if rs[0].strip() == rs[1].strip():
        return report.bad(where, IDENTICAL_RESPONSES, "response_0/response_1")
    return _single_turn_pair(where, p, rs[w], rs[1 - w], o)


def _hh_sft(where, row, report, o: Opts):
    pair = _hh_pair(where, row, report, o)
    if pair is None:
        return None
    turns = pair.turns + ((("assistant", pair.chosen),) if pair.turns else ())
    return SFTExample(((pair.prompt, False), (pair.chosen, True)), where, turns)


def _tldr_sft(where, row, report, o: Opts):
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    label = check_text(report, where, row, "label") if p is not None else None
    if p is None or label is None:
        return None
    if o.hh:
        return SFTExample(((p, False), (formats.tldr_reply(label), True)), where)
    turns = (("user", p),)
    return SFTExample(
        ((o.prompt_fn(turns), False), (o.reply_fn(label, turns), True)),
        where,
        turns + (("assistant", label),),
    )


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _sharegpt_turns(where, row, report) -> tuple | None:
    conv = row.get("conversations")
    if conv is None:
        return report.bad(where, MISSING_FIELD, "conversations")
    if not isinstance(conv, list):
        return report.bad(where, WRONG_TYPE, "conversations", "expected a list of turns")
    turns = []
    for i, t in enumerate(conv):
        if not isinstance(t, dict):
            return report.bad(
                where, WRONG_TYPE, f"conversations[{i}]", 'expected {"from", "value"}'
            )
        role = t.get("from")
        if role not in _SHAREGPT_ROLES:
            return report.bad(
                where,
                BAD_VALUE if role else MISSING_FIELD,
                f"conversations[{i}].from",
                f"unknown speaker {role!r}" if role else "",
            )
        role = _SHAREGPT_ROLES[role]
        text = check_str(
            report,
            where,
            t.get("value"),
            f"conversations[{i}].value",
            empty_reason=EMPTY_PROMPT if role == "user" else EMPTY_RESPONSE,
        )
        if text is None:
            return None
        if role == "system" and turns:
            return report.bad(
                where, MALFORMED, f"conversations[{i}]", "a system turn after the start"
            )
        want = "user" if not turns or turns[-1][0] != "user" else "assistant"
        if role != "system" and role != want:
            return report.bad(
                where,
                MALFORMED,
                f"conversations[{i}].from",
                f"expected a {want} turn (turns must alternate, human first)",
            )
        turns.append((role, text))
    while turns and turns[-1][0] != "assistant":  # a trailing question has no reply to learn
        turns.pop()
    if not turns:
        return report.bad(where, EMPTY_RESPONSE, "conversations", "no assistant turn")
    return tuple(turns)


def _segments(turns, o: Opts, where) -> tuple[tuple[str, bool], ...]:
    """(text, is_loss) for a conversation: loss on every assistant reply (with a chat
    template, the end-of-turn token of every reply but the last, which tokenization appends)."""
    segs, done = [], ""
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    for i, (role, text) in enumerate(turns):
        if role != "assistant":
            continue
        prompt = o.prompt_fn(turns[:i])
        if not prompt.startswith(done):
            raise DataError(
                f"{where}: the chat template renders this conversation differently turn "
                "by turn, so the assistant turns cannot be masked; use "
                "conversation_format='hh'."
            )
        reply = o.reply_fn(text, turns[:i], final=i == last)
        segs += [(prompt[len(done) :], False), (reply, True)]
        done = prompt + reply
    return tuple(segs)


def _sharegpt_sft(where, row, report, o: Opts):
    turns = _sharegpt_turns(where, row, report)
    if turns is None:
        return None
    return SFTExample(_segments(turns, o, where), where, turns)


# --- OpenAssistant/oasst1: flat message rows -> threads ---


def _oasst_messages(rows, report, o: Opts):
    msgs = {}
    for where, row in rows:
        mid = check_text(report, where, row, "message_id", empty_reason=MISSING_FIELD)
        role = check_text(report, where, row, "role", empty_reason=MISSING_FIELD) if mid else None
        if mid is None or role is None:
            continue
        if role not in ("prompter", "assistant"):
            report.bad(
                where, BAD_VALUE, "role", f"expected 'prompter' or 'assistant', got {role!r}"
            )
            continue
        text = check_text(
            report,
            where,
            row,
            "text",
            empty_reason=EMPTY_PROMPT if role == "prompter" else EMPTY_RESPONSE,
        )
        if text is None:
            continue
        rank = row.get("rank")
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, (int, float))):
            report.bad(
                where, WRONG_TYPE, "rank", f"expected a number or null, got {type(rank).__name__}"
            )
            continue
        parent = row.get("parent_id")
        if parent is not None and not isinstance(parent, str):
            report.bad(
                where,
                WRONG_TYPE,
                "parent_id",
                f"expected a string or null, got {type(parent).__name__}",
            )
            continue
        if row.get("deleted"):
            continue
        msgs[mid] = dict(
            where=where,
            parent=row.get("parent_id"),
            role=role,
            text=text,
            rank=rank,
            lang=row.get("lang"),
            children=[],
        )
    for mid, m in list(msgs.items()):  # a message whose ancestry loops is no thread
        seen, up = {mid}, m["parent"]
        while up is not None and up in msgs and up not in seen:
            seen.add(up)
            up = msgs[up]["parent"]
        if up is not None and up in seen:
            report.bad(m["where"], BAD_VALUE, "parent_id", f"the parent chain of {mid!r} loops")
            del msgs[mid]
    for mid, m in list(msgs.items()):
        if m["parent"] is not None:
            if m["parent"] not in msgs:
                report.bad(
                    m["where"],
                    MISSING_FIELD,
                    "parent_id",
                    f"parent message {m['parent']!r} is not in the data",
                )
                del msgs[mid]
                continue
            msgs[m["parent"]]["children"].append(mid)
    return msgs


def _oasst_thread(msgs, mid) -> tuple | None:
    """Turns from the root to message `mid` (inclusive), or None if a parent is missing."""
    path, seen = [], set()
    while mid is not None:
        m = msgs.get(mid)
        if m is None or mid in seen:
            return None
        seen.add(mid)
        path.append(("user" if m["role"] == "prompter" else "assistant", m["text"]))
        mid = m["parent"]
    return tuple(reversed(path))


def _oasst_lang_ok(m, o: Opts) -> bool:
    return not o.oasst_lang or m["lang"] == o.oasst_lang


def _oasst_pairs(rows, report, o: Opts):
    """Pairs from ranked sibling replies: every (better rank, worse rank) combination."""
    msgs = _oasst_messages(rows, report, o)
    out = []
    for mid, m in msgs.items():
        if m["role"] != "prompter" or not _oasst_lang_ok(m, o):
            continue
        kids = sorted(
            (
                msgs[k]
                for k in m["children"]
                if msgs[k]["role"] == "assistant"
                and msgs[k]["rank"] is not None
                and _oasst_lang_ok(msgs[k], o)
            ),
            key=lambda k: k["rank"],
        )
        if len(kids) < 2:
            continue
        turns = _oasst_thread(msgs, mid)
        if turns is None:
            continue
        prompt = o.prompt_fn(turns)
        for i, better in enumerate(kids):
            for worse in kids[i + 1 :]:
                if (
                    better["rank"] == worse["rank"]
                    or better["text"].strip() == worse["text"].strip()
                ):
                    continue  # no preference between them
                out.append(
                    PreferencePair(
                        prompt,
                        o.reply_fn(better["text"], turns),
                        o.reply_fn(worse["text"], turns),
                        better["where"],
                        turns,
                    )
                )
    return out


def _oasst_sft(rows, report, o: Opts):
    """One example per prompter message: its best-ranked reply (or its only reply)."""
    msgs = _oasst_messages(rows, report, o)
    out = []
    for mid, m in msgs.items():
        if m["role"] != "prompter" or not _oasst_lang_ok(m, o):
            continue
        kids = [msgs[k] for k in m["children"] if msgs[k]["role"] == "assistant"]
        if not kids:
            continue
        best = min(kids, key=lambda k: (k["rank"] is None, k["rank"] or 0))
        turns = _oasst_thread(msgs, mid)
        if turns is None:
            continue
        turns = turns + (("assistant", best["text"]),)
        out.append(SFTExample(_segments(turns, o, best["where"]), best["where"], turns))
    return out


def _oasst_prompts(rows, report, o: Opts):
    msgs = _oasst_messages(rows, report, o)
    return [
        PromptExample(o.prompt_fn((("user", m["text"]),)), m["where"], (("user", m["text"]),))
        for m in msgs.values()
        if m["role"] == "prompter" and m["parent"] is None and _oasst_lang_ok(m, o)
    ]


def _row_reader(parse: Callable) -> Callable:
    """Lift a per-row parse function to one over all rows."""

    def read(rows, report, o):
        out = []
        for where, row in rows:
            try:
                r = parse(where, row, report, o)
            except formats.ChatTemplateError as e:  # this row's turns, not the template
                report.bad(where, MALFORMED, "turns", str(e))
                continue
            if r is not None:
                out.append(r)
        return out

    return read


def _prompts_of(read: Callable) -> Callable:
    """The prompts of pair or SFT records (an SFT record's turns without its final reply)."""

    def prompts(rows, report, o):
        out = []
        for r in read(rows, report, o):
            turns = r.turns
            if isinstance(r, SFTExample) and turns and turns[-1][0] == "assistant":
                turns = turns[:-1]
            out.append(PromptExample(r.prompt, r.source, turns))
        return out

    return prompts


def _plain_prompt(where, row, report, o: Opts):
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    if p is None:
        return None
    turns = (("user", p),)
    return PromptExample(o.prompt_fn(turns), where, turns)


PAIR_READERS = {
    "hh_rlhf": _row_reader(_hh_pair),
    "summarize_from_feedback": _row_reader(_summarize_pair),
    "pku_saferlhf": _row_reader(_pku_pair),
    "oasst1": _oasst_pairs,
}
SFT_READERS = {
    "hh_rlhf": _row_reader(_hh_sft),
    "tldr_sft": _row_reader(_tldr_sft),
    "sharegpt": _row_reader(_sharegpt_sft),
    "oasst1": _oasst_sft,
}
PROMPT_READERS = {
    "hh_rlhf": _prompts_of(PAIR_READERS["hh_rlhf"]),
    "summarize_from_feedback": _prompts_of(PAIR_READERS["summarize_from_feedback"]),
    "tldr_sft": _prompts_of(SFT_READERS["tldr_sft"]),
    "sharegpt": _prompts_of(SFT_READERS["sharegpt"]),
    "pku_saferlhf": _row_reader(_plain_prompt),  # its 'prompt' field
    "oasst1": _oasst_prompts,
    "prompts": _row_reader(_plain_prompt),  # any file of {"prompt": "<user text>"} rows
}


def _cfg(key):
    return defaults.data()[key]


def _load(
    kind: str,
    readers: dict,
    dataset: str,
    path: str,
    *,
    split,
    name,
    data_dir,
    on_bad_record,
    max_skip_fraction,
    conversation_format,
    tokenizer,
    pku_preference,
    oasst_lang,
) -> Records:
    if dataset not in readers:
        raise DataError(f"unknown {kind} dataset {dataset!r}; known: {sorted(readers)}.")
    report = SkipReport(
        f"{dataset}:{split}",
        _cfg("on_bad_record") if on_bad_record is None else on_bad_record,
        _cfg("max_skip_fraction") if max_skip_fraction is None else max_skip_fraction,
    )
    opts = Opts(conversation_format, tokenizer, pku_preference, oasst_lang)
    rows = read_rows(path, report, name=name, data_dir=data_dir, split=split)
    out = readers[dataset](rows, report, opts)
    report.check()
    if not out:
        raise DataError(
            f"{path}: no usable {kind} records for dataset {dataset!r} "
            f"({report.total} rows read); is this the right dataset name and format?"
        )
    return Records(out, report)


_DOC_ARGS = """
  dataset: reader name (see docs/data.md); path: a hub name (passed to datasets.load_dataset
  as is) or a local file, glob or directory. on_bad_record / max_skip_fraction default to
  defaults.data(). The result is a list with `.skip_report` (per-reason counts of skipped rows).
"""


def load_preference_pairs(
    dataset: str,
    path: str,
    split: str = "train",
    *,
    name: str = "",
    data_dir: str = "",
    on_bad_record: str | None = None,
    max_skip_fraction: float | None = None,
    conversation_format: str = "hh",
    tokenizer=None,
    pku_preference: str = "helpful",
    oasst_lang: str = "en",
) -> Records:
    """PreferencePair records: pair.prompt + pair.chosen is the chosen transcript."""
    return _load(
        "preference",
        PAIR_READERS,
        dataset,
        path,
        split=split,
        name=name,
        data_dir=data_dir,
        on_bad_record=on_bad_record,
        max_skip_fraction=max_skip_fraction,
        conversation_format=conversation_format,
        tokenizer=tokenizer,
        pku_preference=pku_preference,
        oasst_lang=oasst_lang,
    )


def load_sft_examples(
    dataset: str,
    path: str,
    split: str = "train",
    *,
    name: str = "",
    data_dir: str = "",
    on_bad_record: str | None = None,
    max_skip_fraction: float | None = None,
    conversation_format: str = "hh",
    tokenizer=None,
    oasst_lang: str = "en",
) -> Records:
    """SFTExample records (loss on assistant segments)."""
    return _load(
        "SFT",
        SFT_READERS,
        dataset,
        path,
        split=split,
        name=name,
        data_dir=data_dir,
        on_bad_record=on_bad_record,
        max_skip_fraction=max_skip_fraction,
        conversation_format=conversation_format,
        tokenizer=tokenizer,
        pku_preference="helpful",
        oasst_lang=oasst_lang,
    )


def load_prompts(
    dataset: str,
    path: str,
    split: str = "train",
    *,
    name: str = "",
    data_dir: str = "",
    on_bad_record: str | None = None,
    max_skip_fraction: float | None = None,
    conversation_format: str = "hh",
    tokenizer=None,
    oasst_lang: str = "en",
) -> Records:
    """PromptExample records, de-duplicated by prompt text (first occurrence kept)."""
    recs = _load(
        "prompt",
        PROMPT_READERS,
        dataset,
        path,
        split=split,
        name=name,
        data_dir=data_dir,
        on_bad_record=on_bad_record,
        max_skip_fraction=max_skip_fraction,
        conversation_format=conversation_format,
        tokenizer=tokenizer,
        pku_preference="helpful",
        oasst_lang=oasst_lang,
    )
    return Records(unique_prompts(recs), recs.skip_report)


for _f in (load_preference_pairs, load_sft_examples, load_prompts):
    _f.__doc__ += _DOC_ARGS


# ----------------------------------------------------------------------------------------------
# Meta datasets: our sampler's output (jsonl / jsonl.gz / parquet). Schema in docs/data.md.

META_SAMPLING_FIELDS = {"temperature": float, "top_p": float, "policy_step": int, "seed": int}
META_OPTIONAL_FIELDS = {
    "round": int,
    "repetition_penalty": float,
    "max_new_tokens": int,
    "policy": str,
}


def _meta_row(where, row, report, k):
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


def load_meta_examples(
    path: str,
    split: str = "",
    *,
    k: int | None = None,
    on_bad_record: str | None = None,
    max_skip_fraction: float | None = None,
) -> Records:
    """MetaExample records from files written by `write_meta_dataset` (local only)."""
    if not _is_local(path):
        raise DataError(f"{path}: meta datasets are local files written by write_meta_dataset.")
    return _load(
        "meta",
        {"meta": _row_reader(lambda w, r, rep, o: _meta_row(w, r, rep, k))},
        "meta",
        path,
        split=split,
        name="",
        data_dir="",
        on_bad_record=on_bad_record,
        max_skip_fraction=max_skip_fraction,
        conversation_format="hh",
        tokenizer=None,
        pku_preference="helpful",
        oasst_lang="",
    )


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
    ext = _ext(path)
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
