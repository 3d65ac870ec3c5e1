"""Tokenization (records -> int32 token arrays) and collation (-> padded, bucketed numpy batches).

Every sequence is [BOS] + prompt + response + EOS, where the BOS is left out when the prompt's
own tokens start with it (a chat template that renders the BOS itself, as Llama-2's does) so a
sequence never starts with two. Responses are never truncated: the prompt is
cut from the left (keeping the end of the conversation) to fit `max_length`; a row that still
does not fit is a bad row (`too_long`). Batches are padded to the smallest of a few fixed bucket
lengths, so jitted steps compile a bounded number of times.

Batch contract (numpy int32; n pairs, m prompts, k responses, T a bucket length):
  preference: chosen_ids, chosen_mask, rejected_ids, rejected_mask            [n, T]
  meta:       input_ids, attention_mask [m, k, T]; sample_mask [m, k]
  SFT:        input_ids, attention_mask, loss_mask                             [n, T]
              packed (pack_sft): {"packed": a core.packed.Packing of ids, segment_ids,
              positions, loss_mask [R, L]}, the n examples in R <= n rows (no example_mask)
  prompts:    input_ids, attention_mask [n, T] (LEFT-padded); prompt_index [n]
  + example_mask [n] (1 real, 0 padding row) only in batches made with drop_remainder=False.
With ``shared_prompt`` (the RM stages' ``data.shared_prompt``), preference and meta batches are
packed instead, one row per prompt with its responses: their ids and masks are replaced by one
``Packing`` under the key "packed" (``metarm_jax.data.packing``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from metarm_jax.config import defaults
from metarm_jax.core.packed import Packing
from metarm_jax.data import packing
from metarm_jax.data.records import (
    TOO_LONG,
    DataError,
    MetaExample,
    PreferencePair,
    PromptExample,
    Records,
    SFTExample,
    SkipReport,
)

PAD_ROW = {"__pad__": True}  # stands for a padding row (example_mask 0) in a final batch


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    max_length: int
    buckets: tuple[int, ...]
    pad_id: int
    eos_id: int
    bos_id: int | None
    pad_side: str = "right"
    max_prompt_length: int = 0  # prompt batches only; 0 means max_length

    @classmethod
    def from_config(cls, cfg, tokenizer) -> TokenSpec:
        if cfg.pad_side not in ("left", "right"):
            raise DataError(f"data.pad_side must be 'left' or 'right', got {cfg.pad_side!r}.")
        if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
            raise DataError("the tokenizer needs a pad token and an eos token.")
        return cls(
            int(cfg.max_length),
            bucket_lengths(cfg.bucket_lengths, cfg.max_length),
            int(tokenizer.pad_token_id),
            int(tokenizer.eos_token_id),
            tokenizer.bos_token_id if cfg.add_bos else None,
            cfg.pad_side,
            int(cfg.max_prompt_length),
        )

    @property
    def n_special(self) -> int:
        return (self.bos_id is not None) + 1

    def bucket(self, length: int) -> int:
        for b in self.buckets:
            if length <= b:
                return b
        raise AssertionError(f"length {length} > max_length {self.max_length}")


def bucket_lengths(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """Sorted buckets below max_length, then max_length itself (always a bucket)."""
    return tuple(sorted({int(b) for b in buckets if 0 < int(b) < max_length})) + (int(max_length),)


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)  # same ids, ~25% faster in batch
    if backend is not None:
        return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def _bos(spec: TokenSpec, ids: Sequence[int]) -> list[int]:
    """[BOS] to put in front of ``ids``; [] without a BOS or when ``ids`` starts with it."""
    if spec.bos_id is None or (len(ids) and ids[0] == spec.bos_id):
        return []
    return [spec.bos_id]


def _join(spec: TokenSpec, prompt: list[int], reply: list[int]) -> np.ndarray:
    bos = _bos(spec, prompt)
    return np.asarray(bos + prompt + reply + [spec.eos_id], np.int32)


def _prompt_budget(spec: TokenSpec, longest_reply: int) -> int:
    return spec.max_length - spec.n_special - longest_reply


def _report(records, name) -> SkipReport:
    """A copy of the records' load report (tokenizing twice must not count twice)."""
    rep = getattr(records, "skip_report", None)
    if rep is not None:
        rep = rep.copy()
    else:  # records made in memory: the configured bad-row policy's defaults
        d = defaults.data()
        rep = SkipReport(name, d.on_bad_record, d.max_skip_fraction)
        rep.total = len(records)
    return rep


def _too_long(report, rec, spec, n_prompt, n_reply):
    report.bad(
        rec.source,
        TOO_LONG,
        None,
        f"the response alone needs {n_reply + spec.n_special} of max_length="
        f"{spec.max_length} tokens (prompt: {n_prompt}); responses are never truncated, "
        "so raise data.max_length or drop the row",
    )


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer, spec: TokenSpec) -> Records:
    """[{'chosen': int32[Lc], 'rejected': int32[Lr]}], sharing one left-truncated prompt."""
    report = _report(pairs, "preference")
    ps = _encode(tokenizer, [p.prompt for p in pairs])
    cs = _encode(tokenizer, [p.chosen for p in pairs])
    rs = _encode(tokenizer, [p.rejected for p in pairs])
    out = []
    for rec, p, c, r in zip(pairs, ps, cs, rs):
        budget = _prompt_budget(spec, max(len(c), len(r)))
        if budget < 1:
            _too_long(report, rec, spec, len(p), max(len(c), len(r)))
            continue
        p = p[-budget:]
        out.append({"chosen": _join(spec, p, c), "rejected": _join(spec, p, r)})
    report.check()
    return Records(out, report)


def tokenize_sft(examples: Sequence[SFTExample], tokenizer, spec: TokenSpec) -> Records:
    """[{'ids': int32[L], 'loss': int32[L]}]: loss 1 on assistant segments and the final EOS."""
    report = _report(examples, "sft")
    flat = [t for ex in examples for t, _ in ex.segments]
    enc = iter(_encode(tokenizer, flat))
    out = []
    for ex in examples:
        ids, loss = [], []
        for (_, is_loss), toks in zip(ex.segments, enc):
            ids += toks
            loss += [int(is_loss)] * len(toks)
        last = _last_len(loss)
        budget = _prompt_budget(spec, last)
        if budget < 1:
            _too_long(report, ex, spec, len(ids) - last, last)
            continue
        head = len(ids) - last  # everything before the final reply is the prompt: cut its left end
        keep = min(head, budget)
        ids, loss = ids[head - keep :], loss[head - keep :]
        bos = _bos(spec, ids)
        out.append(
            {
                "ids": np.asarray(bos + ids + [spec.eos_id], np.int32),
                "loss": np.asarray([0] * len(bos) + loss + [1], np.int32),
            }
        )
    report.check()
    return Records(out, report)


def _last_len(loss) -> int:
    """Token count of the final (loss) segment: the trailing run of loss tokens."""
    n = 0
    for v in reversed(loss):
        if not v:
            break
        n += 1
    return n


def tokenize_prompts(prompts: Sequence[PromptExample], tokenizer, spec: TokenSpec) -> Records:
    """[{'ids': int32[L], 'index': int}]; prompts keep their last max_prompt_length tokens."""
    limit = (spec.max_prompt_length or spec.max_length) - (spec.bos_id is not None)
    out = [
        {"ids": np.asarray(_bos(spec, p[-limit:]) + p[-limit:], np.int32), "index": i}
        for i, p in enumerate(_encode(tokenizer, [p.prompt for p in prompts]))
    ]
    return Records(out, getattr(prompts, "skip_report", None))


def tokenize_meta(examples: Sequence[MetaExample], tokenizer, spec: TokenSpec) -> Records:
    """[{'samples': [int32[L_i]] * k_i}] with one left-truncated prompt shared by the k samples."""
    report = _report(examples, "meta")
    ps = _encode(tokenizer, [e.prompt for e in examples])
    flat = _encode(tokenizer, [r for e in examples for r in e.responses])
    out, j = [], 0
    for rec, p in zip(examples, ps):
        rs = flat[j : j + len(rec.responses)]
        j += len(rec.responses)
        longest = max(len(r) for r in rs)
        budget = _prompt_budget(spec, longest)
        if budget < 1:
            _too_long(report, rec, spec, len(p), longest)
            continue
        out.append({"samples": [_join(spec, p[-budget:], r) for r in rs]})
    report.check()
    return Records(out, report)


# ----------------------------------------------------------------------------------------------
# Collation: a list of features -> one padded numpy batch (called by the grain pipeline).


def _pad_rows(
    seqs: Sequence[np.ndarray], T: int, pad_id: int, side: str
) -> tuple[np.ndarray, np.ndarray]:
    """values [len(seqs), T] padded with pad_id on `side`, and the 0/1 mask of real positions."""
    ids = np.full((len(seqs), T), pad_id, np.int32)
    mask = np.zeros((len(seqs), T), np.int32)
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        ids[i, sl] = s
        mask[i, sl] = 1
    return ids, mask


def _example_mask(feats) -> np.ndarray:
    return np.asarray([f is not PAD_ROW for f in feats], np.int32)


def real_rows(batch) -> np.ndarray:
    """[n] bool: the rows of a batch that are real examples (not the fill rows of a padded last
    batch, which carry ``example_mask`` 0); all rows when the batch has no example_mask."""
    if "example_mask" in batch:
        return np.asarray(batch["example_mask"]) > 0
    first = next(v for k, v in batch.items() if k != "example_mask")
    return np.ones(len(first.ids if isinstance(first, Packing) else first), bool)


class Collate:
    """Base: holds the spec; subclasses make one batch kind. Stable repr for grain."""

    kind = ""

    def __init__(self, spec: TokenSpec, with_example_mask: bool = False, k: int = 0):
        self.spec, self.with_example_mask, self.k = spec, with_example_mask, k
        self.shared_prompt = False  # pairs and meta: pack each prompt with its responses
        self.pack_sft = False  # sft: several examples per row (packing.pack_examples)
        self.row_multiple = 1  # packed sft: the row count splits into this many equal parts

    def __repr__(self):
        return (
            f"{type(self).__name__}({self.spec}, {self.with_example_mask}, k={self.k}, "
            f"shared_prompt={self.shared_prompt}, pack_sft={self.pack_sft}, "
            f"row_multiple={self.row_multiple})"
        )

    def _finish(self, batch, example_mask):
        if self.with_example_mask:
            batch["example_mask"] = example_mask
        return batch

    def _pack(self, batch, pack):
        """``pack`` (packing.pack_pairs / pack_meta) when shared_prompt is on."""
        if not self.shared_prompt:
            return batch
        return pack(batch, self.spec.buckets, self.spec.pad_id)


class CollatePairs(Collate):
    kind = "preference"

    def __call__(self, feats):
        em = _example_mask(feats)
        s = self.spec
        blank = np.zeros((0,), np.int32)
        cs = [f["chosen"] if f is not PAD_ROW else blank for f in feats]
        rs = [f["rejected"] if f is not PAD_ROW else blank for f in feats]
        T = s.bucket(max(len(x) for x in cs + rs))
        ci, cm = _pad_rows(cs, T, s.pad_id, s.pad_side)
        ri, rm = _pad_rows(rs, T, s.pad_id, s.pad_side)
        batch = {"chosen_ids": ci, "chosen_mask": cm, "rejected_ids": ri, "rejected_mask": rm}
        return self._finish(self._pack(batch, packing.pack_pairs), em)


class CollateSFT(Collate):
    kind = "sft"

    def __call__(self, feats):
        em = _example_mask(feats)
        s = self.spec
        blank = np.zeros((0,), np.int32)
        ids = [f["ids"] if f is not PAD_ROW else blank for f in feats]
        if self.pack_sft:  # padding rows hold no token: no example_mask is needed
            losses = [f["loss"] if f is not PAD_ROW else blank for f in feats]
            rows = packing.pack_examples(
                list(zip(ids, losses)), s.buckets, s.pad_id, self.row_multiple
            )
            return {packing.KEY: rows}
        T = s.bucket(max(len(x) for x in ids))
        x, m = _pad_rows(ids, T, s.pad_id, s.pad_side)
        loss, _ = _pad_rows(
            [f["loss"] if f is not PAD_ROW else blank for f in feats], T, 0, s.pad_side
        )
        return self._finish({"input_ids": x, "attention_mask": m, "loss_mask": loss}, em)


class CollatePrompts(Collate):
    """Prompt batches are always LEFT-padded (generation appends on the right)."""

    kind = "prompt"

    def __call__(self, feats):
        em = _example_mask(feats)
        s = self.spec
        ids = [f["ids"] if f is not PAD_ROW else np.zeros((0,), np.int32) for f in feats]
        T = s.bucket(max(len(x) for x in ids))
        x, m = _pad_rows(ids, T, s.pad_id, "left")
        index = np.asarray([f["index"] if f is not PAD_ROW else -1 for f in feats], np.int32)
        return self._finish({"input_ids": x, "attention_mask": m, "prompt_index": index}, em)


class CollateMeta(Collate):
    kind = "meta"

    def __call__(self, feats):
        em = _example_mask(feats)
        s, k = self.spec, self.k
        blank = np.zeros((0,), np.int32)
        seqs, smask = [], np.zeros((len(feats), k), np.int32)
        for i, f in enumerate(feats):
            samples = [] if f is PAD_ROW else f["samples"]
            if len(samples) > k:
                raise DataError(f"a meta example has {len(samples)} responses, more than k={k}.")
            smask[i, : len(samples)] = 1
            seqs += list(samples) + [blank] * (k - len(samples))
        T = s.bucket(max(len(x) for x in seqs))
        x, m = _pad_rows(seqs, T, s.pad_id, s.pad_side)
        batch = {
            "input_ids": x.reshape(len(feats), k, T),
            "attention_mask": m.reshape(len(feats), k, T),
            "sample_mask": smask,
        }
        return self._finish(self._pack(batch, packing.pack_meta), em)
