"""ShareGPT / Vicuna files: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}``;
turns alternate, human first (an optional system turn at the start); loss on every reply."""

from __future__ import annotations

from metarm_jax.data.records import (
    BAD_VALUE,
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    MALFORMED,
    MISSING_FIELD,
    WRONG_TYPE,
    SFTExample,
    check_str,
)
from metarm_jax.data.schemas.common import ParseOptions, prompts_of, row_reader, segments

_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _turns(where, row, report) -> tuple | None:
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
        if role not in _ROLES:
            return report.bad(
                where,
                BAD_VALUE if role else MISSING_FIELD,
                f"conversations[{i}].from",
                f"unknown speaker {role!r}" if role else "",
            )
        role = _ROLES[role]
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


def sft(where, row, report, o: ParseOptions):
    turns = _turns(where, row, report)
    if turns is None:
        return None
    return SFTExample(segments(turns, o, where), where, turns)


_SFT = row_reader(sft)
READERS = {"sharegpt": {"sft": _SFT, "prompt": prompts_of(_SFT)}}
