"""Anthropic/hh-rlhf: ``{"chosen", "rejected"}``, two full transcripts of ``\\n\\nHuman:`` /
``\\n\\nAssistant:`` turns; the prompt is their longest common prefix (see split_hh_pair)."""

from __future__ import annotations

import os

from metarm_jax.data import formats
from metarm_jax.data.formats import ASSISTANT, HUMAN
from metarm_jax.data.records import (
    EMPTY_PROMPT,
    EMPTY_RESPONSE,
    IDENTICAL_RESPONSES,
    MALFORMED,
    PROMPT_MISMATCH,
    PreferencePair,
    SFTExample,
    check_text,
)
from metarm_jax.data.schemas.common import ParseOptions, prompts_of, row_reader


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


def pair(where, row, report, o: ParseOptions):
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


def sft(where, row, report, o: ParseOptions):
    """The prompt and the chosen reply."""
    p = pair(where, row, report, o)
    if p is None:
        return None
    turns = p.turns + ((("assistant", p.chosen),) if p.turns else ())
    return SFTExample(((p.prompt, False), (p.chosen, True)), where, turns)


_PAIRS = row_reader(pair)
READERS = {
    "hh_rlhf": {
        "preference": _PAIRS,
        "sft": row_reader(sft),
        "prompt": prompts_of(_PAIRS),
    }
}
