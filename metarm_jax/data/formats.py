"""Conversation formats: one function per style, chosen by `data.conversation_format`.

A formatter turns the prompt turns into the prompt text (ending where the reply starts) and a
reply into the text appended to it, so `prompt + reply` is the transcript the model sees.
"""

from __future__ import annotations

import os
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


def _messages(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """Chat messages of the turns, each text stripped (HH replies start with a space)."""
    return [{"role": r, "content": t.strip()} for r, t in turns]


class ChatTemplateError(DataError):
    """The chat template refused one conversation (e.g. roles that do not alternate): a bad row."""


class ChatTemplate:
    """``data.conversation_format='chat_template'``: dialogues in the tokenizer's own chat template.

    ``prompt(turns)`` is the template's rendering with the generation prompt
    (``add_generation_prompt=True``): the text the model continues. ``reply(text, turns)`` is the
    text the template renders for the assistant turn after that prompt, up to its end-of-turn
    token (the tokenizer's eos token, e.g. ChatML's ``<|im_end|>`` or Llama-2's ``</s>``): without
    it for the final reply (tokenization appends EOS, so the response tokens are the assistant's
    turn plus the end-of-turn token), with it for the earlier replies of a multi-turn
    conversation (``final=False``: their loss covers it, and the next prompt segment starts after
    it). A template whose turns do not end with the eos token gives the reply up to the end of
    its text. Every text is stripped before it is rendered.

    The boundary is checked: the template's rendering of the whole conversation must start with
    the prompt (else a DataError), and for the first ``checks`` replies the tokens of prompt +
    reply + [EOS] must equal those of the rendered text up to the end of turn (a tokenizer that
    merges tokens across the boundary would shift the loss and the reward silently).
    """

    def __init__(self, tokenizer, checks: int = 8):
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "data.conversation_format='chat_template' needs a tokenizer with a chat "
                "template (data.tokenizer_path); use conversation_format='hh' otherwise."
            )
        self.tok = tokenizer
        self.eot = tokenizer.eos_token or ""
        self.checks_left = int(checks)

    def render(self, turns: Sequence[Turn], generation_prompt: bool) -> str:
        """The template's text for ``turns``; a ChatTemplateError (the readers skip the row as
        malformed) when the template rejects them."""
        try:
            return self.tok.apply_chat_template(
                _messages(turns), tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # jinja's raise_exception, e.g. "roles must alternate"
            raise ChatTemplateError(
                f"the chat template cannot render a conversation with roles "
                f"{[r for r, _ in turns]}: {type(e).__name__}: {e}"
            ) from None

    def prompt(self, turns: Sequence[Turn]) -> str:
        return self.render(turns, True)

    def reply(self, text: str, turns: Sequence[Turn], final: bool = True) -> str:
        """The assistant turn ``text`` after ``prompt(turns)``, as the template renders it."""
        content = text.strip()
        prompt = self.prompt(turns)
        full = self.render(tuple(turns) + (("assistant", content),), False)
        if not full.startswith(prompt):
            raise DataError(
                "the chat template renders the assistant turn differently from its generation "
                f"prompt (prompt ends {prompt[-40:]!r}, the conversation continues "
                f"{full[len(os.path.commonprefix([prompt, full])) :][:40]!r}), so the "
                "prompt/response boundary is not exact; use conversation_format='hh'."
            )
        tail = full[len(prompt) :]
        start = tail.find(content)
        if start < 0:
            raise DataError(
                f"the chat template does not render the reply text as it is ({content[:40]!r} "
                f"is not in {tail[:80]!r}); use conversation_format='hh'."
            )
        end = tail.find(self.eot, start + len(content)) if self.eot else -1
        if end < 0:  # the turn does not end with the eos token: the reply ends with its text
            return tail[: start + len(content)]
        reply = tail[:end]
        if self.checks_left > 0:
            self.checks_left -= 1
            self.check_tokens(prompt, reply, full[: len(prompt) + end + len(self.eot)])
        return reply if final else reply + self.eot

    def check_tokens(self, prompt: str, reply: str, rendered: str) -> None:
        """prompt + reply tokenized apart, then EOS, must be the rendered turn's tokens."""

        def enc(t):
            return self.tok(t, add_special_tokens=False)["input_ids"]

        apart = enc(prompt) + enc(reply) + [self.tok.eos_token_id]
        whole = enc(rendered)
        if apart != whole:
            i = next(
                (i for i, (a, b) in enumerate(zip(apart, whole)) if a != b),
                min(len(apart), len(whole)),
            )
            raise DataError(
                "with this tokenizer the chat template's prompt and reply do not tokenize apart "
                f"as they do together (first difference at token {i}: "
                f"{self.tok.convert_ids_to_tokens(apart[i : i + 3])} vs "
                f"{self.tok.convert_ids_to_tokens(whole[i : i + 3])}); the prompt/response "
                "boundary would not be exact. Use conversation_format='hh' or another template."
            )


def formatter(conversation_format: str, tokenizer=None) -> tuple[Callable, Callable]:
    """(prompt_fn(turns) -> str, reply_fn(text, turns, final=True) -> str) for the style.

    'hh' ignores the turns in reply_fn (the reply is ' ' + text); 'chat_template' renders the
    reply after ``prompt_fn(turns)`` with the template (see ChatTemplate).
    """
    if conversation_format == "hh":
        return hh_prompt, lambda text, turns=(), final=True: hh_reply(text)
    if conversation_format == "chat_template":
        chat = ChatTemplate(tokenizer)
        return chat.prompt, chat.reply
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
