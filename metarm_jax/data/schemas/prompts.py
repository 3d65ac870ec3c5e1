"""``prompts``: any file of ``{"prompt": "<user text>"}`` rows, each one user turn."""

from __future__ import annotations

from metarm_jax.data.records import EMPTY_PROMPT, PromptExample, check_text
from metarm_jax.data.schemas.common import ParseOptions, row_reader


def user_prompt(where, row, report, o: ParseOptions):
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    if p is None:
        return None
    turns = (("user", p),)
    return PromptExample(o.prompt_fn(turns), where, turns)


READERS = {"prompts": {"prompt": row_reader(user_prompt)}}
