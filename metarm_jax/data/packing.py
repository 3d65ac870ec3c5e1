"""Shared-prompt packing: a prompt and its j responses in one row, so the prompt is computed once.

Both sides of a preference pair share their prompt, and so do the k samples of a meta prompt. In a
causal model the shared tokens' hidden states are the same in every sequence that starts with
them, so one row ``[prefix | suffix_1 | ... | suffix_j | pad]`` with a branch-aware causal mask
(``core.packed.Packing``: each suffix sees the prefix and itself, positions continuing from the
prefix's end) gives every token exactly the hidden state it has in its own unpacked sequence, and
the reward of response i is read at its suffix's last token. The prefix is the longest common
prefix of the row's token sequences (at least the prompt: every sequence is BOS + prompt + reply
+ EOS), cut so that every sequence keeps at least one token of its own.

Packed batch: the batch's ids and masks are replaced by ONE ``core.packed.Packing`` under the key
``KEY`` (numpy int32; R rows of length L, a packed bucket; j = 2 for pairs, k for meta): ids,
segment_ids, branch_ids, positions, prev [R, L] and read_at [R, j]. The other keys of the batch
(sample_mask, example_mask, margin) are kept as they are.

A sequence of length 0 (a masked meta sample, a padding row) gets an empty branch; its reward is
read at the prefix's last token (a finite value that ``difference_loss`` drops with the mask).

Packed SFT (``pack_examples``): the other use of the same layout. Independent examples share a
row, each its own segment (ids 1, 2, ... in the row; branch 0), positions restarting at 0, so
every token has the hidden state of its unpacked row and the batch's SFT loss (a sum over its
response tokens divided by their count) is unchanged. A batch keeps its examples: packing removes
padding, not examples, so a packed run takes the same optimizer steps as an unpacked one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from metarm_jax.core.packed import Packing

KEY = "packed"  # a packed batch's Packing, in place of its ids and masks
PAIR_KEYS = ("chosen_ids", "chosen_mask", "rejected_ids", "rejected_mask")
META_KEYS = ("input_ids", "attention_mask")


def packed_buckets(buckets: Sequence[int], parts: int) -> tuple[int, ...]:
    """Row lengths a packed batch is padded to: every bucket times 1..parts (a packed row of j
    sequences of at most max(buckets) tokens each is never longer than j·max(buckets)), so a
    jitted step compiles a bounded number of times."""
    return tuple(sorted({int(b) * i for b in buckets for i in range(1, parts + 1)}))


def common_prefix(seqs: Sequence[np.ndarray]) -> int:
    """Length of the longest common prefix of the non-empty ``seqs``, cut so that each keeps at
    least one token of its own (0 when none is non-empty)."""
    real = [s for s in seqs if len(s)]
    if not real:
        return 0
    limit = min(len(s) for s in real) - 1
    if len(real) == 1:
        return limit
    first = real[0][:limit]
    n = limit
    for s in real[1:]:
        neq = np.nonzero(s[:n] != first[:n])[0]
        if len(neq):
            n = int(neq[0])
    return n


def pack_rows(
    groups: Sequence[Sequence[np.ndarray]], buckets: Sequence[int], pad_id: int
) -> Packing:
    """Pack each group of sequences (the real tokens of each, no padding) into one row.

    ``buckets``: the allowed row lengths (``packed_buckets``); the batch takes the smallest one
    that holds its longest row. All groups must have the same number of sequences j."""
    j = len(groups[0])
    rows, read_at = [], np.zeros((len(groups), j), np.int32)
    for r, seqs in enumerate(groups):
        if len(seqs) != j:
            raise ValueError(f"pack_rows: group {r} has {len(seqs)} sequences, expected {j}.")
        p = common_prefix(seqs)
        prefix = next((s[:p] for s in seqs if len(s)), np.zeros((0,), np.int32))
        ids, branch, pos = [prefix], [np.zeros(p, np.int32)], [np.arange(p, dtype=np.int32)]
        prev = [np.arange(-1, p - 1, dtype=np.int32)]
        end = p
        for i, s in enumerate(seqs):
            suffix = s[p:] if len(s) else s
            ids.append(suffix)
            branch.append(np.full(len(suffix), i + 1, np.int32))
            pos.append(np.arange(p, p + len(suffix), dtype=np.int32))
            before = np.arange(end - 1, end - 1 + len(suffix), dtype=np.int32)
            if len(suffix):  # its first token follows the prefix's last (-1: none, p = 0)
                before[0] = p - 1
            prev.append(before)
            end += len(suffix)
            read_at[r, i] = end - 1 if len(suffix) else max(p - 1, 0)
        rows.append(
            (np.concatenate(ids), np.concatenate(branch), np.concatenate(pos), np.concatenate(prev))
        )
    need = max(len(row[0]) for row in rows)
    length = next((b for b in sorted(buckets) if b >= need), None)
    if length is None:
        raise ValueError(
            f"pack_rows: a packed row needs {need} tokens, past every bucket {buckets}."
        )
    out = {k: np.zeros((len(groups), length), np.int32) for k in ("ids", "seg", "br", "pos")}
    out["ids"][:] = pad_id
    out["prev"] = np.full((len(groups), length), -1, np.int32)
    for r, (ids, branch, pos, prev) in enumerate(rows):
        n = len(ids)
        out["ids"][r, :n] = ids
        out["seg"][r, :n] = 1
        out["br"][r, :n] = branch
        out["pos"][r, :n] = pos
        out["prev"][r, :n] = prev
    return Packing(
        ids=out["ids"],
        segment_ids=out["seg"],
        positions=out["pos"],
        branch_ids=out["br"],
        read_at=read_at,
        prev=out["prev"],
    )


def _real(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(ids)[np.asarray(mask) > 0].astype(np.int32)


def pack_pairs(batch, buckets: Sequence[int], pad_id: int) -> dict:
    """A preference batch (chosen/rejected ids and masks [n, T], either padding side) as n packed
    rows [prompt | chosen | rejected] (under ``KEY``); read_at[:, 0] is the chosen reward, [:, 1]
    the rejected."""
    groups = [
        (
            _real(batch["chosen_ids"][i], batch["chosen_mask"][i]),
            _real(batch["rejected_ids"][i], batch["rejected_mask"][i]),
        )
        for i in range(len(batch["chosen_ids"]))
    ]
    out = {k: v for k, v in batch.items() if k not in PAIR_KEYS}
    out[KEY] = pack_rows(groups, packed_buckets(buckets, 2), pad_id)
    return out


def pack_meta(batch, buckets: Sequence[int], pad_id: int) -> dict:
    """A meta batch (input_ids, attention_mask [m, k, T]; sample_mask [m, k]) as m packed rows
    [prompt | sample_1 | ... | sample_k] (under ``KEY``); a masked sample gets an empty branch."""
    ids, mask = np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"])
    smask = np.asarray(batch.get("sample_mask", np.ones(ids.shape[:2], np.int32)))
    m, k, _ = ids.shape
    groups = [
        [
            _real(ids[i, s], mask[i, s]) if smask[i, s] else np.zeros((0,), np.int32)
            for s in range(k)
        ]
        for i in range(m)
    ]
    out = {key: v for key, v in batch.items() if key not in META_KEYS}
    out[KEY] = pack_rows(groups, packed_buckets(buckets, k), pad_id)
    return out


def packed_tokens(rows: Packing) -> int:
    """Real tokens packed rows compute (a shared prompt counted once per row)."""
    return int(np.sum(np.asarray(rows.segment_ids) > 0))


def _round_up(x: int, multiple: int) -> int:
    return multiple * -(-x // multiple)


def _first_fit(sizes: Sequence[int], row_length: int) -> list[list[int]]:
    """Indices of the non-empty sizes in rows of ``row_length``: first fit by decreasing size."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        if sizes[i] == 0:
            continue
        r = next((r for r, free in enumerate(room) if free >= sizes[i]), None)
        if r is None:
            rows.append([])
            room.append(row_length)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= sizes[i]
    return rows


def pack_examples(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    row_lengths: Sequence[int],
    pad_id: int,
    row_multiple: int = 1,
) -> Packing:
    """Packed SFT: each (ids, loss_mask) example (its real tokens) placed whole in a row, first
    fit by decreasing length; empty examples (padding rows) hold no token and are dropped.

    The row length is the one of ``row_lengths`` (the buckets) that computes the fewest tokens
    (rows × length; ties: the shorter). The row count is rounded up to a multiple of
    ``max(row_multiple, ceil(n / 8))`` rounded to ``row_multiple`` (n = len(examples)), so a
    jitted step compiles for at most 8 row counts per length, and the rows split evenly over the
    data-parallel devices and micro-batches (``row_multiple``). Padding rows are segment 0 with
    loss mask 0. Returns the rows (ids, segment_ids, positions, loss_mask [R, L], int32; every
    token in branch 0), which hosts may pad with more empty rows (``pad_rows``)."""
    n = len(examples)
    mult = max(int(row_multiple), 1)
    step = _round_up(max(1, -(-n // 8)), mult)  # ceil(n/8), rounded up to row_multiple
    sizes = [len(ids) for ids, _ in examples]
    longest = max(sizes, default=0)
    fits = [int(b) for b in sorted(row_lengths) if int(b) >= longest]
    if not fits:
        raise ValueError(
            f"pack_examples: an example has {longest} tokens, past every row length {row_lengths}."
        )
    best = None
    for length in fits:
        rows = _first_fit(sizes, length)
        count = max(step, _round_up(len(rows), step))
        if best is None or count * length < best[0] * best[1]:
            best = (count, length, rows)
    count, length, rows = best
    out = Packing(
        ids=np.full((count, length), pad_id, np.int32),
        segment_ids=np.zeros((count, length), np.int32),
        positions=np.zeros((count, length), np.int32),
        loss_mask=np.zeros((count, length), np.int32),
        pad_rows=True,
    )
    for r, members in enumerate(rows):
        at = 0
        for seg, i in enumerate(sorted(members), start=1):  # batch order inside a row
            ids, loss = examples[i]
            sl = slice(at, at + len(ids))
            out.ids[r, sl] = ids
            out.segment_ids[r, sl] = seg
            out.positions[r, sl] = np.arange(len(ids))
            out.loss_mask[r, sl] = loss
            at += len(ids)
    return out
