"""Conversation formats: one function per style, chosen by `data.conversation_format`.

A formatter turns the prompt turns into the prompt text (ending where the reply starts) and a
reply into the text appended to it, so `prompt + reply` is the transcript the model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from metarm_jax.data.records import DataError, Turn

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_HH_ROLE = {"user": HUMAN, "assistant": ASSISTANT}


def hh_prompt(turns: Sequence[Turn]) -> str:
    """Anthropic HH style: '\\n\\nHuman: q\\n\\nAssistant: a ... \\n\\nAssistant:'."""
    parts = []
    for role, text in turns:
        if role == "system":  # HH has no system turn; keep its text in front of the dialogue
            parts.append(text)
        else:
            parts.append(f"{_HH_ROLE[role]} {text}")
    return "".join(parts) + ASSISTANT


def hh_reply(text: str) -> str:
    return " " + text


def chat_template_prompt(turns: Sequence[Turn], tokenizer) -> str:
    """The tokenizer's own chat template, with the generation prompt appended."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "data.conversation_format='chat_template' needs a tokenizer with a chat "
            "template (data.tokenizer_path); use conversation_format='hh' otherwise."
        )
    messages = [{"role": r, "content": t} for r, t in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_template_reply(text: str) -> str:
    return text.lstrip(" ")


def formatter(conversation_format: str, tokenizer=None) -> tuple[Callable, Callable]:
    """(prompt_fn(turns) -> str, reply_fn(text) -> str) for the configured style."""
    if conversation_format == "hh":
        return hh_prompt, hh_reply
    if conversation_format == "chat_template":
        return (lambda turns: chat_template_prompt(turns, tokenizer)), chat_template_reply
    raise DataError(
        f"unknown data.conversation_format {conversation_format!r}; "
        "expected 'hh' or 'chat_template'."
    )


def tldr_prompt(subreddit: str, title: str, post: str) -> str:
    """The TL;DR summarization prompt (Stiennon et al. 2020)."""
    return f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def tldr_reply(text: str) -> str:
    """Summaries follow 'TL;DR:' after one space (kept as is when the text has it already)."""
    return text if text[:1].isspace() else " " + text


def split_hh_prompt(prompt: str) -> tuple[Turn, ...]:
    """Best-effort turns of an HH-formatted prompt (used only to re-render with a chat template)."""
    body = prompt[: -len(ASSISTANT)] if prompt.endswith(ASSISTANT) else prompt
    turns: list[Turn] = []
    i = 0
    while i < len(body):
        h, a = body.find(HUMAN, i), body.find(ASSISTANT, i)
        nxt = min(x for x in (h, a, len(body)) if x >= 0)
        if nxt > i:  # text before the first marker, or the current turn's text
            text = body[i:nxt]
            if turns:
                turns[-1] = (turns[-1][0], turns[-1][1] + text)
            else:
                turns.append(("system", text))
        if nxt == len(body):
            break
        role, marker = ("user", HUMAN) if nxt == h else ("assistant", ASSISTANT)
        turns.append((role, ""))
        i = nxt + len(marker)
    return tuple((r, t.strip()) for r, t in turns)
