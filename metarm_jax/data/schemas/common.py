"""What every schema module shares: the parse options, lifting a row parser to a reader, and
rendering conversations (turns) into prompt / reply text with the configured format."""

from __future__ import annotations

from collections.abc import Callable

from metarm_jax.data import formats
from metarm_jax.data.records import (
    BAD_VALUE,
    MALFORMED,
    MISSING_FIELD,
    WRONG_TYPE,
    DataError,
    PreferencePair,
    PromptExample,
    SFTExample,
)


class ParseOptions:
    """What the parse functions need besides the rows: the formatter pair of
    ``conversation_format`` (None: the rows are formatted already, as meta rows are) and the
    dataset options of ``config.data`` (``pku_preference``, ``oasst_lang``); ``k``: the most
    responses a meta row may hold (None: no limit)."""

    def __init__(
        self,
        *,
        conversation_format: str | None,
        tokenizer,
        pku_preference: str,
        oasst_lang: str,
        k: int | None,
    ):
        self.hh = conversation_format == "hh"
        self.prompt_fn = self.reply_fn = None
        if conversation_format is not None:
            self.prompt_fn, self.reply_fn = formats.formatter(conversation_format, tokenizer)
        self.pku_preference = pku_preference  # checked by config/rules.py (pku.PREFERENCE_FIELDS)
        self.oasst_lang = oasst_lang
        self.k = k


# A reader: (rows: iterable of (Source, row dict), SkipReport, ParseOptions) -> list of records.
Reader = Callable


def row_reader(parse: Callable) -> Reader:
    """Lift a per-row parse function ``parse(where, row, report, opts) -> record | None`` to a
    reader over all rows."""

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


def prompts_of(read: Reader) -> Reader:
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


def single_turn_pair(where, prompt, a, b, o: ParseOptions, tldr=False) -> PreferencePair:
    """A pair of replies ``a`` (chosen) and ``b`` to one user turn ``prompt``."""
    turns = (("user", prompt),)
    if tldr and o.hh:  # TL;DR text is the prompt in 'hh' mode; one user turn with a template
        return PreferencePair(prompt, formats.tldr_reply(a), formats.tldr_reply(b), where, turns)
    return PreferencePair(
        o.prompt_fn(turns), o.reply_fn(a, turns), o.reply_fn(b, turns), where, turns
    )


def segments(turns, o: ParseOptions, where, first: int = 0) -> tuple[tuple[str, bool], ...]:
    """(text, is_loss) for a conversation: loss on every assistant reply from turn ``first`` on
    (earlier turns are prompt text; with a chat template, the end-of-turn token of every reply
    but the last is in the loss, and tokenization appends the last one)."""
    segs, done = [], ""
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=-1)
    for i, (role, text) in enumerate(turns):
        if role != "assistant" or i < first:
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


def binary(where, row, field, report) -> int | None:
    """row[field] as 0 or 1, or None after reporting why it is bad."""
    v = row.get(field)
    if v is None:
        return report.bad(where, MISSING_FIELD, field)
    if isinstance(v, bool) or not isinstance(v, int):
        return report.bad(where, WRONG_TYPE, field, f"expected 0 or 1, got {type(v).__name__}")
    if v not in (0, 1):
        return report.bad(where, BAD_VALUE, field, f"expected 0 or 1, got {v}")
    return v
