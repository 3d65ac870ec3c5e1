"""The ``rm_eval`` stage: a reward model scored on local files in RewardBench's schema, with the
subset, section and overall scores computed as RewardBench computes them
(``metarm_jax.eval.rewardbench``; docs/evaluation.md, "RewardBench").

    --config.pipeline=rm_eval --config.rm_eval.rm_path=runs/hh/export/rm \\
        --config.rm_eval.path=/data/reward-bench/filtered.parquet --config.rm_eval.format=v1

The RM is any HF ``LlamaForSequenceClassification`` / ``Qwen2ForSequenceClassification``
directory (our ``export/rm``). Each row's prompt and responses are rendered as the RM was trained
(``scoring_setup``: the export's ``metarm_scoring.prompt_format`` and BOS rule, its tokenizer)
and scored by ``scoring.RewardScorer`` (``BOS + prompt + response + EOS``, read at the EOS). Bad
rows follow ``data.on_bad_record`` / ``data.max_skip_fraction`` and are named by file, row and
field, as the data readers name them. Writes ``rm_eval.json``, ``rm_eval.md`` (the tables) and
``scores.jsonl`` (every row's scores) to ``rm_eval.output_dir``.
"""

from __future__ import annotations

import glob
import os

import ml_collections
import numpy as np

from metarm_jax import data as D
from metarm_jax.data import formats, rows
from metarm_jax.data.features import TokenSpec
from metarm_jax.data.records import MALFORMED, TOO_LONG, DataError, SkipReport
from metarm_jax.eval import rewardbench as rb
from metarm_jax.generation.scoring import RewardScorer
from metarm_jax.models import hf
from metarm_jax.runtime import fileio, hosts
from metarm_jax.runtime.errors import ConfigError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_TRAINING_STAGES = ("rm", "metarm")  # they write <workdir>/export/rm, the '' default of rm_path


def _has_tokenizer(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)


def validate(config) -> None:
    """What the rm_eval stage needs (``stages.VALIDATORS``): the files, and an RM to score (a
    sequence-classification directory, or an rm/metarm stage before it in the pipeline)."""
    r = config.rm_eval
    if not r.path:
        raise ConfigError(
            "config.rm_eval.path is empty: give the RewardBench rows to score (a .json, .jsonl, "
            ".jsonl.gz or .parquet file, a glob or a directory)."
        )
    local = rows.is_local(r.path) and not glob.has_magic(r.path)
    if local and not os.path.exists(os.path.expanduser(r.path)):
        raise ConfigError(f"config.rm_eval.path={r.path!r}: no such file or directory.")
    pipeline = tuple(config.pipeline)
    if not r.rm_path:
        before = pipeline[: pipeline.index("rm_eval")] if "rm_eval" in pipeline else ()
        if not any(s in before for s in _TRAINING_STAGES):
            raise ConfigError(
                "config.rm_eval.rm_path is empty: give a reward model's HF directory (e.g. "
                "<workdir>/export/rm), or run the rm or metarm stage before rm_eval."
            )
        if not config.train.export:
            raise ConfigError(
                "config.rm_eval.rm_path is empty and config.train.export=False: the rm/metarm "
                "stage will not write <workdir>/export/rm; set train.export=True or rm_eval.rm_path."
            )
        return
    try:
        cfg = hf.read_config(r.rm_path)
    except hf.CheckpointError:
        raise ConfigError(
            f"config.rm_eval.rm_path={r.rm_path!r}: no HF checkpoint there (no config.json); give "
            "the directory of a reward model (e.g. <workdir>/export/rm)."
        ) from None
    archs = cfg.get("architectures") or []
    rewards = {a["reward"] for a in hf.ARCHITECTURES.values()}
    if not set(archs) & rewards:
        raise ConfigError(
            f"config.rm_eval.rm_path={r.rm_path!r}: its config.json names {archs}, not a reward "
            f"model ({', '.join(sorted(rewards))}); scoring a fresh head would mean nothing."
        )
    if not _has_tokenizer(r.rm_path) and not config.data.tokenizer_path:
        raise ConfigError(
            f"config.rm_eval.rm_path={r.rm_path!r} holds no tokenizer: set "
            "config.data.tokenizer_path to the one the RM was trained with."
        )


def scoring_setup(rm_path: str, config) -> dict:
    """How rows are rendered for the RM at ``rm_path``: tokenizer, conversation format, BOS.

    The export's scoring convention (config.json ``metarm_scoring``) decides, so that the RM
    scores text as it was trained; without one (an RM from elsewhere) ``rm_eval.
    conversation_format='auto'`` takes the tokenizer's chat template when it has one (as
    RewardBench renders rows with the model's template) and the HH format otherwise;
    'hh' / 'chat_template' force a format.
    """
    conv = hf.read_config(rm_path).get(hf.SCORING_KEY) or {}
    tok_path = rm_path if _has_tokenizer(rm_path) else config.data.tokenizer_path
    tok = D.load_tokenizer(tok_path)
    asked = config.rm_eval.conversation_format
    if asked != "auto":
        fmt, why = asked, "set by rm_eval.conversation_format"
        if conv.get("prompt_format") not in (None, asked):
            print(
                f"[metarm_jax] rm_eval: the RM was trained with prompt_format="
                f"{conv['prompt_format']!r}; scoring with {asked!r} as rm_eval.conversation_format says."
            )
    elif conv.get("prompt_format"):
        fmt, why = conv["prompt_format"], "the export's scoring convention (metarm_scoring)"
    elif getattr(tok, "chat_template", None):
        fmt, why = "chat_template", "no scoring convention; the tokenizer has a chat template"
    else:
        fmt, why = "hh", "no scoring convention and no chat template"
    add_bos = conv.get("bos_added_unless_prompt_starts_with_it", bool(config.data.add_bos))
    return {
        "tokenizer": tok,
        "tokenizer_path": tok_path,
        "conversation_format": fmt,
        "conversation_format_from": why,
        "add_bos": bool(add_bos),
    }


def _scoring_config(config, setup: dict) -> ml_collections.ConfigDict:
    """config with the data keys RewardScorer tokenizes by set to the RM's convention."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.data.tokenizer_path = setup["tokenizer_path"]
    c.data.conversation_format = setup["conversation_format"]
    c.data.add_bos = setup["add_bos"]
    c.data.meta_batch_size = config.rm_eval.batch_size
    return c


def render(bench_rows, setup: dict, data_cfg, report: SkipReport):
    """(kept rows, prompt texts, response texts, prompts cut from the left) in the RM's format;
    a row the template refuses, or whose longest response alone exceeds data.max_length, is a
    bad row (responses are never cut; a long prompt keeps its last tokens, as in training)."""
    tok = setup["tokenizer"]
    prompt_fn, reply_fn = formats.formatter(setup["conversation_format"], tok)
    spec_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    spec_cfg.add_bos = setup["add_bos"]
    spec = TokenSpec.from_config(spec_cfg, tok)
    kept, prompts, responses, cut = [], [], [], 0
    for r in bench_rows:
        try:
            p = prompt_fn(r.turns)
            rs = [reply_fn(t, r.turns) for t in r.responses]
        except formats.ChatTemplateError as e:
            report.bad(r.source, MALFORMED, "prompt", str(e))
            continue
        n_prompt = len(tok(p, add_special_tokens=False)["input_ids"])
        longest = max(len(ids) for ids in tok(rs, add_special_tokens=False)["input_ids"])
        budget = spec.max_length - spec.n_special - longest
        if budget < 1:
            report.bad(
                r.source,
                TOO_LONG,
                "chosen/rejected",
                f"a response alone needs {longest + spec.n_special} of data.max_length="
                f"{spec.max_length} tokens; raise data.max_length",
            )
            continue
        cut += n_prompt > budget
        kept.append(r)
        prompts.append(p)
        responses.append(rs)
    return kept, prompts, responses, cut


def score_rows(scorer, prompts, responses) -> list[list[float]]:
    """Every row's response scores, scored in groups of rows with the same number of responses
    (a Ties row's 20 answers do not pad every 4-answer row to 20)."""
    out: list[list[float] | None] = [None] * len(prompts)
    by_k: dict[int, list[int]] = {}
    for i, rs in enumerate(responses):
        by_k.setdefault(len(rs), []).append(i)
    for _, idx in sorted(by_k.items()):
        rewards, _ = scorer.score([prompts[i] for i in idx], [responses[i] for i in idx])
        for i, r in zip(idx, rewards):
            out[i] = [float(x) for x in r]
    bad = [i for i, s in enumerate(out) if not np.all(np.isfinite(s))]
    if bad:
        raise FloatingPointError(f"rm_eval: non-finite rewards for rows {bad[:5]}.")
    return out


def run(ctx) -> dict:
    config, re_ = ctx.config, ctx.config.rm_eval  # resolved: rm_path, output_dir filled
    rm_path, out_dir = re_.rm_path, re_.output_dir
    fmt = re_.format
    d = config.data
    report = SkipReport(f"rm_eval:{fmt}", d.on_bad_record, d.max_skip_fraction)
    found = rows.read_rows(re_.path, report, name="", data_dir="", split=re_.split)
    bench = rb.read_rows(found, report, fmt)
    setup = scoring_setup(rm_path, config)
    bench, prompts, responses, cut = render(bench, setup, d, report)
    report.check()
    if not bench:
        raise DataError(f"{re_.path}: no usable RewardBench {fmt} rows ({report.total} read).")
    scorer = RewardScorer(_scoring_config(config, setup), ctx.mesh, rm_path)
    scores = score_rows(scorer, prompts, responses)
    if fmt == "v1":
        results = [rb.pair_result(*s) for s in scores]
        summary = rb.v1_summary([r.subset for r in bench], results)
    else:
        summary = rb.v2_summary(bench, scores)
        results = [
            None if rb.is_ties(r.subset) else rb.best_of_n_result(s) for r, s in zip(bench, scores)
        ]
    summary.update(
        rm_path=rm_path,
        path=re_.path,
        rows=len(bench),
        rows_read=report.total,
        skipped=report.skipped,
        skipped_by_reason=dict(report.counts),
        prompts_cut_from_left=int(cut),
        max_length=int(d.max_length),
        conversation_format=setup["conversation_format"],
        conversation_format_from=setup["conversation_format_from"],
        tokenizer_path=setup["tokenizer_path"],
        add_bos=setup["add_bos"],
        source=rb.SOURCE,
    )
    if hosts.is_lead():
        fileio.write_json(os.path.join(out_dir, "rm_eval.json"), summary, indent=1)
        title = f"RewardBench {'2' if fmt == 'v2' else '(v1)'}: {rm_path}"
        fileio.write_text(os.path.join(out_dir, "rm_eval.md"), rb.markdown(summary, title))
        fileio.write_jsonl(
            os.path.join(out_dir, "scores.jsonl"),
            (
                {"file": r.source.file, "row": r.source.row, "id": r.id, "subset": r.subset,
                 "num_correct": r.num_correct, "scores": s, "result": res}
                for r, s, res in zip(bench, scores, results)
            ),
        )  # fmt: skip
    out = {"score": summary["score"], "rows": len(bench), "skipped": report.skipped}
    out["output_dir"] = out_dir
    parts = summary.get("sections") if fmt == "v1" else summary["subsets"]
    for name, e in parts.items():
        out[f"rm_eval/{name}"] = e["score"] if fmt == "v1" else e["accuracy"]
    return out
