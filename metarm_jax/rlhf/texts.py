"""What the report measures of the policies' texts besides their rewards: response lengths,
diversity (Table 3) and the blind pairs for people, with their verdicts when filled in."""

from __future__ import annotations

from typing import Any

from metarm_jax import data as D
from metarm_jax.eval import diversity, human
from metarm_jax.rlhf import compute
from metarm_jax.rlhf.layout import RunLayout


def lengths(config, test) -> dict[str, dict[str, float]]:
    """Response length in tokens (the RM's tokenizer) of every policy's test samples: PPO's
    length drift is the first thing to check next to a win rate."""
    tok = D.load_tokenizer(config.data.tokenizer_path)
    return {
        name: compute.length_stats(
            [len(tok(t, add_special_tokens=False)["input_ids"]) for rs in resp for t in rs]
        )
        for name, (_, resp) in test.items()
    }


def diversity_table(config, first, mode: str) -> dict[str, Any]:
    """Table 3: Self-BLEU (and with mode 'all' embedding similarity) of one response per test
    prompt for every policy, and of the data's chosen responses (lower = more diverse)."""
    if not mode:
        return {}
    d = config.data
    rows = {}
    try:
        tok = D.load_tokenizer(d.tokenizer_path) if d.tokenizer_path else None  # chat templates
        pairs = D.load_records("preference", d, tok, split=d.eval_split)
        rows["chosen (data)"] = [p.chosen for p in pairs][: len(next(iter(first.values())))]
    except Exception as e:
        rows_note = f"chosen responses unavailable: {str(e).splitlines()[0][:200]}"
    else:
        rows_note = ""
    rows.update(first)
    out = {"rows": diversity.table(rows, embeddings=mode == "all")}
    if rows_note:
        out["note"] = rows_note
    return out


def human_eval(config, layout: RunLayout, prompts, first, best, n_boot, lead) -> dict[str, Any]:
    """Blind pairs for people (best round vs SFT) and, when filled in, their verdicts."""
    rc = config.rlhf
    out: dict[str, Any] = {}
    folder = layout.path("human_eval")
    if rc.human_export and lead:
        out["export"] = human.export_pairs(
            folder, prompts, first[best], first["sft"], name_a=best, name_b="sft",
            seed=int(config.seed),
        )  # fmt: skip
    if rc.human_verdicts:
        res = human.import_verdicts(rc.human_verdicts, layout.path("human_eval", "key.json"))
        out["verdicts"] = compute.comparison(res, n_boot)
    return out
