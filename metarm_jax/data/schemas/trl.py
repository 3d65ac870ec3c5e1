"""``trl``: TRL's standard dataset formats (TRL docs, "Dataset formats and types").

    preference  {"prompt", "chosen", "rejected"}, or {"chosen", "rejected"} with an implicit
                prompt: their shared prefix, found as ``trl.extract_prompt`` finds it
    SFT         {"prompt", "completion"}, or {"messages"} (loss on every assistant message)
    prompts     {"prompt"}, or the prompt of any row above

Every field is either text (TRL's *standard* format: used exactly as written, as TRL does: no
template, no HH markers) or a list of ``{"role", "content"}`` messages (the *conversational*
format: rendered with ``data.conversation_format``; 'chat_template' is the tokenizer's own chat
template, which is what TRL applies). The fields of one row are all text or all messages. Other
columns are ignored; a missing or null ``prompt`` in a preference row means the implicit form.
"""

from __future__ import annotations

import os

from metarm_jax.data.records import (
    BAD_VALUE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    IDENTICAL_RESPONSES,
    MALFORMED,
    MISSING_FIELD,
    WRONG_TYPE,
    PreferencePair,
    PromptExample,
    SFTExample,
    check_str,
)
from metarm_jax.data.schemas.common import ParseOptions, row_reader, segments

_ROLES = ("system", "user", "assistant")
TEXT, MESSAGES = "text", "messages"


def _form(where, row, report, field, like: str | None = None) -> str | None:
    """TEXT or MESSAGES for row[field] (the form of field ``like`` when given), or None after
    reporting why it is bad."""
    v = row.get(field)
    if v is None:
        return report.bad(where, MISSING_FIELD, field)
    form = TEXT if isinstance(v, str) else MESSAGES if isinstance(v, (list, tuple)) else None
    if form is None:
        return report.bad(
            where,
            WRONG_TYPE,
            field,
            f"expected a string or a list of {{role, content}} messages, got {type(v).__name__}",
        )
    if like is not None and form != like:
        return report.bad(
            where,
            WRONG_TYPE,
            field,
            f"expected {like} like the other fields (one row is all text or all messages)",
        )
    return form


def _turns(where, row, report, field) -> tuple | None:
    """The (role, content) turns of the message list row[field], or None after reporting."""
    msgs = row[field]
    if not msgs:
        reason = EMPTY_PROMPT if field == "prompt" else EMPTY_RESPONSE
        return report.bad(where, reason, field, "no messages")
    turns = []
    for i, m in enumerate(msgs):
        f = f"{field}[{i}]"
        if not isinstance(m, dict):
            return report.bad(where, WRONG_TYPE, f, 'expected a {"role", "content"} message')
        role = m.get("role")
        if role is None:
            return report.bad(where, MISSING_FIELD, f"{f}.role")
        if role not in _ROLES:
            return report.bad(
                where, BAD_VALUE, f"{f}.role", f"expected one of {list(_ROLES)}, got {role!r}"
            )
        empty = EMPTY_RESPONSE if role == "assistant" else EMPTY_PROMPT
        text = check_str(report, where, m.get("content"), f"{f}.content", empty_reason=empty)
        if text is None:
            return None
        turns.append((role, text))
    return tuple(turns)


def _check_prompt(where, report, turns, field) -> bool:
    """A prompt's turns: a system message only first, and a user message last."""
    if any(role == "system" for role, _ in turns[1:]):
        report.bad(where, MALFORMED, field, "a system message after the start")
        return False
    if turns[-1][0] != "user":
        report.bad(where, MALFORMED, field, f"the prompt ends with a {turns[-1][0]} message")
        return False
    return True


def _reply(where, report, turns, field) -> str | None:
    """The one assistant message a preference reply must be."""
    if len(turns) != 1 or turns[0][0] != "assistant":
        return report.bad(
            where,
            MALFORMED,
            field,
            f"expected one assistant message after the prompt, got roles {[r for r, _ in turns]}",
        )
    return turns[0][1]


def split_text_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen_reply, rejected_reply) of an implicit-prompt text pair, as
    ``trl.extract_prompt`` splits it: the longest common prefix, less a space it ends with (the
    replies start with the space)."""
    n = len(os.path.commonprefix([chosen, rejected]))
    if 0 < n < min(len(chosen), len(rejected)) and chosen[n - 1] == " ":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def _text_pair(where, row, report):
    c = check_str(report, where, row["chosen"], "chosen")
    r = check_str(report, where, row["rejected"], "rejected") if c is not None else None
    if c is None or r is None:
        return None
    if row.get("prompt") is None:
        if c == r:
            return report.bad(where, IDENTICAL_RESPONSES, "chosen/rejected")
        prompt, c, r = split_text_pair(c, r)
        if not prompt.strip():
            return report.bad(where, EMPTY_PROMPT, "chosen/rejected", "they share no prompt")
        for field, reply in (("chosen", c), ("rejected", r)):
            if not reply.strip():
                return report.bad(where, EMPTY_RESPONSE, field, "no reply after the shared prompt")
    else:
        prompt = check_str(report, where, row["prompt"], "prompt", empty_reason=EMPTY_PROMPT)
        if prompt is None:
            return None
    if c.strip() == r.strip():
        return report.bad(where, IDENTICAL_RESPONSES, "chosen/rejected")
    return PreferencePair(prompt, c, r, where)


def _messages_pair(where, row, report, o: ParseOptions):
    c = _turns(where, row, report, "chosen")
    r = _turns(where, row, report, "rejected") if c is not None else None
    if c is None or r is None:
        return None
    field = "prompt"
    if row.get("prompt") is None:  # the implicit prompt: the messages both start with
        if c == r:
            return report.bad(where, IDENTICAL_RESPONSES, "chosen/rejected")
        n = next((i for i, (a, b) in enumerate(zip(c, r)) if a != b), min(len(c), len(r)))
        prompt, c, r, field = c[:n], c[n:], r[n:], "chosen/rejected"
        if not prompt:
            return report.bad(where, EMPTY_PROMPT, field, "they share no prompt message")
        for name, reply in (("chosen", c), ("rejected", r)):
            if not reply:
                return report.bad(where, EMPTY_RESPONSE, name, "no message after the prompt")
    else:
        prompt = _turns(where, row, report, "prompt")
        if prompt is None:
            return None
    if not _check_prompt(where, report, prompt, field):
        return None
    c = _reply(where, report, c, "chosen")
    r = _reply(where, report, r, "rejected") if c is not None else None
    if c is None or r is None:
        return None
    if c.strip() == r.strip():
        return report.bad(where, IDENTICAL_RESPONSES, "chosen/rejected")
    return PreferencePair(
        o.prompt_fn(prompt), o.reply_fn(c, prompt), o.reply_fn(r, prompt), where, prompt
    )


def pair(where, row, report, o: ParseOptions):
    form = _form(where, row, report, "chosen")
    if form is None or _form(where, row, report, "rejected", form) is None:
        return None
    if row.get("prompt") is not None and _form(where, row, report, "prompt", form) is None:
        return None
    if form == TEXT:
        return _text_pair(where, row, report)
    return _messages_pair(where, row, report, o)


def _conversation(where, row, report, o: ParseOptions):
    """{"messages"}: loss on every assistant message; trailing non-assistant messages dropped."""
    turns = _turns(where, row, report, "messages")
    if turns is None:
        return None
    if any(role == "system" for role, _ in turns[1:]):
        return report.bad(where, MALFORMED, "messages", "a system message after the start")
    first = next((role for role, _ in turns if role != "system"), None)
    if first != "user":
        return report.bad(where, MALFORMED, "messages", "the first message is not a user message")
    while turns and turns[-1][0] != "assistant":  # a trailing question has no reply to learn
        turns = turns[:-1]
    if not turns:
        return report.bad(where, EMPTY_RESPONSE, "messages", "no assistant message")
    return SFTExample(segments(turns, o, where), where, turns)


def sft(where, row, report, o: ParseOptions):
    if row.get("prompt") is None and row.get("messages") is not None:
        return _conversation(where, row, report, o)
    if row.get("prompt") is None:
        return report.bad(
            where, MISSING_FIELD, "prompt", 'expected {"prompt", "completion"} or {"messages"}'
        )
    form = _form(where, row, report, "prompt")
    if form is None or _form(where, row, report, "completion", form) is None:
        return None
    if form == TEXT:
        p = check_str(report, where, row["prompt"], "prompt", empty_reason=EMPTY_PROMPT)
        c = check_str(report, where, row["completion"], "completion") if p is not None else None
        if p is None or c is None:
            return None
        return SFTExample(((p, False), (c, True)), where)
    p = _turns(where, row, report, "prompt")
    if p is None or not _check_prompt(where, report, p, "prompt"):
        return None
    c = _turns(where, row, report, "completion")
    if c is None:
        return None
    if c[-1][0] != "assistant" or any(role == "system" for role, _ in c):
        return report.bad(
            where,
            MALFORMED,
            "completion",
            f"expected assistant messages (the last one assistant), got roles {[r for r, _ in c]}",
        )
    turns = p + c
    return SFTExample(segments(turns, o, where, first=len(p)), where, turns)


def prompt_example(where, row, report, o: ParseOptions):
    """{"prompt"} as text or messages; a row without one gives its pair's or its SFT prompt."""
    if row.get("prompt") is None:
        if row.get("chosen") is not None or row.get("rejected") is not None:
            p = pair(where, row, report, o)
            return None if p is None else PromptExample(p.prompt, where, p.turns)
        if row.get("messages") is not None:
            ex = _conversation(where, row, report, o)
            return None if ex is None else PromptExample(ex.prompt, where, ex.turns[:-1])
        return report.bad(where, MISSING_FIELD, "prompt")
    form = _form(where, row, report, "prompt")
    if form is None:
        return None
    if form == TEXT:
        p = check_str(report, where, row["prompt"], "prompt", empty_reason=EMPTY_PROMPT)
        return None if p is None else PromptExample(p, where)
    turns = _turns(where, row, report, "prompt")
    if turns is None or not _check_prompt(where, report, turns, "prompt"):
        return None
    return PromptExample(o.prompt_fn(turns), where, turns)


READERS = {
    "trl": {
        "preference": row_reader(pair),
        "sft": row_reader(sft),
        "prompt": row_reader(prompt_example),
    }
}
