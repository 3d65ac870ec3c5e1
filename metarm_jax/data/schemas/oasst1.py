"""OpenAssistant/oasst1: flat message rows (``message_id, parent_id, role, text, lang, rank,
deleted``) rebuilt into threads; ranked sibling replies give pairs, the best reply SFT examples,
the root messages prompts. ``data.oasst_lang`` filters by language."""

from __future__ import annotations

from metarm_jax.data.records import (
    BAD_VALUE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    MISSING_FIELD,
    WRONG_TYPE,
    PreferencePair,
    PromptExample,
    SFTExample,
    check_text,
)
from metarm_jax.data.schemas.common import ParseOptions, segments


def _messages(rows, report, o: ParseOptions):
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


def _thread(msgs, mid) -> tuple | None:
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


def _lang_ok(m, o: ParseOptions) -> bool:
    return not o.oasst_lang or m["lang"] == o.oasst_lang


def pairs(rows, report, o: ParseOptions):
    """Pairs from ranked sibling replies: every (better rank, worse rank) combination."""
    msgs = _messages(rows, report, o)
    out = []
    for mid, m in msgs.items():
        if m["role"] != "prompter" or not _lang_ok(m, o):
            continue
        kids = sorted(
            (
                msgs[k]
                for k in m["children"]
                if msgs[k]["role"] == "assistant"
                and msgs[k]["rank"] is not None
                and _lang_ok(msgs[k], o)
            ),
            key=lambda k: k["rank"],
        )
        if len(kids) < 2:
            continue
        turns = _thread(msgs, mid)
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


def sft(rows, report, o: ParseOptions):
    """One example per prompter message: its best-ranked reply (or its only reply)."""
    msgs = _messages(rows, report, o)
    out = []
    for mid, m in msgs.items():
        if m["role"] != "prompter" or not _lang_ok(m, o):
            continue
        kids = [msgs[k] for k in m["children"] if msgs[k]["role"] == "assistant"]
        if not kids:
            continue
        best = min(kids, key=lambda k: (k["rank"] is None, k["rank"] or 0))
        turns = _thread(msgs, mid)
        if turns is None:
            continue
        turns = turns + (("assistant", best["text"]),)
        out.append(SFTExample(segments(turns, o, best["where"]), best["where"], turns))
    return out


def prompts(rows, report, o: ParseOptions):
    msgs = _messages(rows, report, o)
    return [
        PromptExample(o.prompt_fn((("user", m["text"]),)), m["where"], (("user", m["text"]),))
        for m in msgs.values()
        if m["role"] == "prompter" and m["parent"] is None and _lang_ok(m, o)
    ]


READERS = {"oasst1": {"preference": pairs, "sft": sft, "prompt": prompts}}
