"""The TL;DR summarization data (Stiennon et al. 2020): openai/summarize_from_feedback's
comparisons (pairs) and CarperAI/openai_summarize_tldr (SFT)."""

from __future__ import annotations

from metarm_jax.data import formats
from metarm_jax.data.records import (
    EMPTY_PROMPT,
    IDENTICAL_RESPONSES,
    MISSING_FIELD,
    WRONG_TYPE,
    SFTExample,
    check_str,
    check_text,
)
from metarm_jax.data.schemas.common import (
    ParseOptions,
    binary,
    prompts_of,
    row_reader,
    single_turn_pair,
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


def comparison_pair(where, row, report, o: ParseOptions):
    """summarize_from_feedback: ``info {post, title, subreddit}``, two ``summaries``, ``choice``."""
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
    choice = binary(where, row, "choice", report)
    if choice is None:
        return None
    if texts[0].strip() == texts[1].strip():
        return report.bad(where, IDENTICAL_RESPONSES, "summaries")
    return single_turn_pair(where, prompt, texts[choice], texts[1 - choice], o, tldr=True)


def tldr_sft(where, row, report, o: ParseOptions):
    """openai_summarize_tldr: ``{"prompt": "... TL;DR:", "label": summary}``."""
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


_PAIRS = row_reader(comparison_pair)
_SFT = row_reader(tldr_sft)
READERS = {
    "summarize_from_feedback": {"preference": _PAIRS, "prompt": prompts_of(_PAIRS)},
    "tldr_sft": {"sft": _SFT, "prompt": prompts_of(_SFT)},
}
