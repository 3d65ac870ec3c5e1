"""The ``build_meta`` stage: sample k responses per prompt from a policy -> the MetaRM meta dataset.

    python -m metarm_jax.main --config=configs/X.py --config.pipeline='("build_meta",)' \
        --config.build_meta.policy_path=runs/sft/hf --config.build_meta.k=5

Round r of iterative RLHF samples its meta dataset X_s from the round r-1 policy (round 1: the
SFT model). Prompts come from the data layer (``load_prompts``), are tokenized like roll-out
prompts (``tokenize_prompts``: BOS + the last ``data.max_prompt_length`` tokens), sampled with
:func:`metarm_jax.generation.sampling.generate` (``config.sampling``, k = ``build_meta.k``) and written with
``write_meta_dataset`` in the schema ``load("meta", ...)`` reads, with the sampling settings and
the policy step on every row.

Resumable: prompts are processed in chunks of ``chunk_size``; each chunk is written atomically
(tmp + rename) to ``<output>.chunks/chunk-NNNNN.jsonl`` and recorded in a small manifest. A
killed run started again skips the chunks on disk. Chunk c, batch j draws from
``fold_in(fold_in(fold_in(key(seed), round), c), j)`` (and one key per row inside the sampler), so the output is
byte-identical whether or not the run was interrupted. The final file is the concatenation of the
chunks, written atomically at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any

import jax
import numpy as np

from metarm_jax import data as D
from metarm_jax import models, sharding
from metarm_jax.data import MetaExample, SamplingInfo
from metarm_jax.data.features import CollatePrompts, TokenSpec
from metarm_jax.data.schemas.meta import meta_row
from metarm_jax.generation import sampling
from metarm_jax.runtime import faults, fileio, hosts
from metarm_jax.runtime.errors import ConfigError, Preempted, UserError

MANIFEST = "manifest.json"


class BuildMetaError(UserError):
    pass


# ---------------------------------------------------------------------------------------------


def _policy(config, mesh):
    """(model, name, step) for the policy to sample from (``build_meta.policy_path``, resolved:
    '' only when config.model is a random preset)."""
    bm, m = config.build_meta, config.model
    model = models.from_config(m, "lm", mesh, path=bm.policy_path, seed=config.seed)
    if bm.policy_path:
        name = os.path.abspath(bm.policy_path)
    else:
        name = f"random:{m.preset}:seed{config.seed}"
    step = int(bm.policy_step)
    if step < 0:
        step = 0
        state_file = os.path.join(bm.policy_path, "trainer_state.json")
        if bm.policy_path and os.path.isfile(state_file):
            with open(state_file) as f:
                step = int(json.load(f).get("global_step", 0))
    return model, name, step


def _tokenizer(config, policy_path: str):
    if config.data.tokenizer_path:
        return D.load_tokenizer(config.data.tokenizer_path)
    path = policy_path
    if not path or not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        raise ConfigError(
            "build_meta needs a tokenizer: config.data.tokenizer_path is empty and the policy "
            f"directory {policy_path!r} has no tokenizer; set data.tokenizer_path."
        )
    return D.load_tokenizer(path)


def _prompts(config, tokenizer):
    """The prompt records (``build_meta.prompt_*``, resolved) and a description of the source."""
    bm, d = config.build_meta, config.data
    dcfg = d.copy_and_resolve_references()
    dcfg.prompt_dataset, dcfg.prompt_path = bm.prompt_dataset, bm.prompt_path
    recs = D.load_records("prompt", dcfg, tokenizer, split=bm.prompt_split)
    dataset, path, split = bm.prompt_dataset, bm.prompt_path, bm.prompt_split
    recs = recs[bm.skip_prompts :]
    if bm.max_prompts > 0:
        recs = recs[: bm.max_prompts]
    if not recs:
        raise ConfigError(
            f"build_meta: no prompts left in {dataset}:{path}:{split} after skipping "
            f"{bm.skip_prompts}; the source has fewer prompts."
        )
    return list(recs), f"{dataset}:{path}:{split}[{bm.skip_prompts}:]"


def _fingerprint(**items) -> dict:
    return json.loads(json.dumps(items, sort_keys=True, default=str))


def _check_manifest(chunk_dir: str, fp: dict) -> None:
    mpath = os.path.join(chunk_dir, MANIFEST)
    chunks = (
        [n for n in os.listdir(chunk_dir) if n.startswith("chunk-")]
        if os.path.isdir(chunk_dir)
        else []
    )
    if not os.path.exists(mpath):
        if chunks:
            raise BuildMetaError(
                f"{chunk_dir}: chunk files but no {MANIFEST}; delete the folder to start over."
            )
        return
    with open(mpath) as f:
        old = json.load(f)["fingerprint"]
    diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
    if diff:
        k = diff[0]
        raise BuildMetaError(
            f"{chunk_dir}: holds chunks of a different build_meta run ({k}: was {old.get(k)!r}, "
            f"now {fp.get(k)!r}; {len(diff)} setting(s) differ). Resuming would mix them: delete "
            "the folder or set config.build_meta.output_path to a new file."
        )


def _decode(tokenizer, tokens: np.ndarray, mask: np.ndarray, stops: set[int]) -> tuple[str, bool]:
    """Text of one sampled row (stop token dropped) and whether invalid UTF-8 was removed."""
    ids = [int(t) for t, m in zip(tokens, mask) if m]
    if ids and ids[-1] in stops:
        ids = ids[:-1]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    # A response cut at max_new_tokens can end inside a multi-byte character; the data readers
    # reject U+FFFD, so drop it (the reward model re-tokenizes the text anyway).
    return text.replace("\ufffd", ""), "\ufffd" in text


def _sample_chunk(model, tokenizer, spec, prompts, key, batch_size, settings, gen_kw, stops):
    """Responses [len(prompts)][k] for one chunk; batches padded to batch_size (one compile)."""
    feats = D.tokenize_prompts(prompts, tokenizer, spec)
    collate = CollatePrompts(spec)  # left-padded
    k = gen_kw["num_samples"]
    out, bad = [], 0
    for j in range(0, len(feats), batch_size):
        rows = list(feats[j : j + batch_size])
        n_real = len(rows)
        rows += [rows[-1]] * (batch_size - n_real)  # one batch shape: one compile
        batch = collate(rows)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        res = sampling.generate(
            model, ids, mask, jax.random.fold_in(key, j // batch_size), settings, **gen_kw
        )
        toks, msk = sharding.to_host((res.tokens, res.mask))
        for i in range(n_real):
            texts = []
            for s in range(k):
                text, had_bad = _decode(tokenizer, toks[i * k + s], msk[i * k + s], stops)
                texts.append(text)
                bad += had_bad
            out.append(texts)
    return out, bad


def run(ctx) -> dict[str, Any]:
    """Stage ``build_meta`` (its keys: ``config.build_meta``, resolved; sampling: ``config.sampling``)."""
    config, mesh = ctx.config, ctx.mesh
    bm, sc = config.build_meta, config.sampling
    output = bm.output_path
    chunk_dir = output + ".chunks"
    lead = jax.process_index() == 0
    t0 = time.time()

    model, policy_name, policy_step = _policy(config, mesh)
    tokenizer = _tokenizer(config, bm.policy_path)
    models.check_vocab(model, tokenizer, "build_meta")
    spec = TokenSpec.from_config(config.data, tokenizer)
    prompts, source = _prompts(config, tokenizer)

    settings = sampling.settings(sc)
    gen_kw = dict(
        num_samples=int(bm.k),
        eos_id=int(tokenizer.eos_token_id),
        pad_id=int(tokenizer.pad_token_id),
        mesh=mesh,
    )
    stops = {int(tokenizer.eos_token_id), *settings.stop_token_ids}
    seed = int(sc.seed)
    info = SamplingInfo(
        temperature=settings.temperature,
        top_p=settings.top_p,
        policy_step=policy_step,
        seed=seed,
        round=int(bm.round),
        repetition_penalty=settings.repetition_penalty,
        max_new_tokens=settings.max_new_tokens,
        policy=policy_name,
    )
    digest = hashlib.sha256("\x00".join(p.prompt for p in prompts).encode()).hexdigest()
    fp = _fingerprint(
        sampling=dict(
            dataclasses.asdict(settings), **{k: v for k, v in gen_kw.items() if k != "mesh"}
        ),
        seed=seed,
        info=dataclasses.asdict(info),
        chunk_size=bm.chunk_size,
        batch_size=bm.batch_size,
        prompts=len(prompts),
        prompts_sha256=digest,
        source=source,
        max_prompt_length=spec.max_prompt_length,
        max_length=spec.max_length,
        add_bos=spec.bos_id is not None,
    )

    n_chunks = -(-len(prompts) // bm.chunk_size)
    if lead:
        os.makedirs(chunk_dir, exist_ok=True)
        _check_manifest(chunk_dir, fp)
    manifest = {"fingerprint": fp, "num_chunks": n_chunks, "done": []}
    hosts.barrier(f"build_meta:{output}:start")  # every process sees the same chunks on disk

    def chunk_path(c):
        return os.path.join(chunk_dir, f"chunk-{c:05d}.jsonl")

    def chunk_ok(c) -> bool:
        """A chunk on disk counts when it holds its prompts' rows, each whole JSON with k
        responses; a damaged one (truncated, corrupted) is reported and sampled again."""
        path = chunk_path(c)
        if not os.path.exists(path):
            return False
        want = len(prompts[c * bm.chunk_size : (c + 1) * bm.chunk_size])
        try:
            with open(path, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            ok = len(rows) == want and all(len(r["responses"]) == bm.k for r in rows)
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            ok = False
        if not ok and lead:
            print(f"[build_meta] {path} is damaged; sampling that chunk again.", flush=True)
        return ok

    done = [c for c in range(n_chunks) if chunk_ok(c)]
    resumed = len(done)
    manifest["done"] = done
    if lead:
        fileio.write_json(os.path.join(chunk_dir, MANIFEST), manifest, indent=1, sort_keys=True)
    base = jax.random.fold_in(jax.random.key(seed), int(bm.round))  # fresh draws each round
    bad_utf8 = 0
    for c in range(n_chunks):
        if c in done:
            continue
        part = prompts[c * bm.chunk_size : (c + 1) * bm.chunk_size]
        responses, bad = _sample_chunk(
            model,
            tokenizer,
            spec,
            part,
            jax.random.fold_in(base, c),
            bm.batch_size,
            settings,
            gen_kw,
            stops,
        )
        bad_utf8 += bad
        if lead:
            rows = [
                meta_row(MetaExample(p.prompt, tuple(r), info)) for p, r in zip(part, responses)
            ]
            D.write_meta_dataset(chunk_path(c), rows)
            faults.point("build_meta_chunk")  # the chunk is on disk, the manifest not yet
            manifest["done"] = sorted(manifest["done"] + [c])
            fileio.write_json(os.path.join(chunk_dir, MANIFEST), manifest, indent=1, sort_keys=True)
            print(
                f"[build_meta] chunk {c + 1}/{n_chunks}: {len(part)} prompts x {bm.k} "
                f"({time.time() - t0:.0f}s)",
                flush=True,
            )
        if c + 1 < n_chunks and hosts.preemption_point():  # the chunks on disk resume
            raise Preempted(
                f"build_meta stopped after chunk {c + 1} of {n_chunks} on a preemption notice "
                f"(SIGTERM); the chunks in {chunk_dir} are kept. Run the same command again to "
                "resume from them."
            )

    if lead:
        rows = []
        for c in range(n_chunks):
            with open(chunk_path(c), encoding="utf-8") as f:
                rows.extend(json.loads(line) for line in f if line.strip())
        D.write_meta_dataset(output, rows)
    hosts.barrier(f"build_meta:{output}:done")  # the next stage reads it on every process
    return dict(
        output=output,
        prompts=len(prompts),
        k=int(bm.k),
        chunks=n_chunks,
        chunks_resumed=resumed,
        policy=policy_name,
        policy_step=policy_step,
        responses_with_invalid_utf8=bad_utf8,
        seconds=round(time.time() - t0, 1),
    )
