"""PKU-Alignment/PKU-SafeRLHF: ``prompt, response_0, response_1, better_response_id,
safer_response_id``; ``data.pku_preference`` picks which id is the preference."""

from __future__ import annotations

from metarm_jax.data.records import EMPTY_PROMPT, IDENTICAL_RESPONSES, check_text
from metarm_jax.data.schemas.common import ParseOptions, binary, row_reader, single_turn_pair
from metarm_jax.data.schemas.prompts import user_prompt

# data.pku_preference -> the column that names the preferred response (config/rules.py checks the
# key against these, once, before any stage).
PREFERENCE_FIELDS = {"helpful": "better_response_id", "harmless": "safer_response_id"}


def pair(where, row, report, o: ParseOptions):
    p = check_text(report, where, row, "prompt", empty_reason=EMPTY_PROMPT)
    if p is None:
        return None
    rs = [check_text(report, where, row, f"response_{i}") for i in (0, 1)]
    if any(r is None for r in rs):
        return None
    field = PREFERENCE_FIELDS[o.pku_preference]
    w = binary(where, row, field, report)
    if w is None:
        return None
    if rs[0].strip() == rs[1].strip():
        return report.bad(where, IDENTICAL_RESPONSES, "response_0/response_1")
    return single_turn_pair(where, p, rs[w], rs[1 - w], o)


READERS = {"pku_saferlhf": {"preference": row_reader(pair), "prompt": row_reader(user_prompt)}}
