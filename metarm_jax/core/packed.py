"""Packed rows: several sequences in one row [R, L], each token seeing only its own context.

``Packing`` is the one type of a packed batch. The data layer builds it once
(``metarm_jax.data.packing``: a prompt and its responses, or independent SFT examples); the
model reads its layout (``Llama(ids, None, packing)``), ``core.metarm`` its reward read-outs,
the SFT and DPO losses its loss mask and previous-token index, and the sharding layer asks it
which axes each host may pad (``pad_axes``). A batch (a dict of the data layer) holds its packed
sequences as one ``Packing`` value in place of its ids and masks; ``rows(batch)`` finds it.

Field by field (int32; R rows of length L; j reads per row):
  ids          [R, L] the tokens (pad id after a row's last token)
  segment_ids  [R, L] 0 for padding, s >= 1 for the tokens of sequence group s (a group never
               sees another group's tokens)
  positions    [R, L] rotary position of each token (its position in its own unpacked sequence)
  branch_ids   [R, L] 0 for a group's shared prefix (seen by every branch of the group), b >= 1
               for the tokens of its branch b (seen only by branch b); None: every token is in
               branch 0 (packed SFT: one sequence per segment)
  read_at      [R, j] index in the row of each response's last token (a reward head reads
               there); None when nothing is read out
  prev         [R, L] index in the row of the token before each token in its own sequence (-1
               for a sequence's first token): a causal LM's logits there predict it (DPO)
  loss_mask    [R, L] 1 where a token is a target of the SFT loss
  pad_rows     static: whether rows may be added, all zero (segment 0: no token; loss mask 0).
               True for packed SFT, whose row count follows its examples' lengths; False where
               every row is an example (a reward is read from each).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

Array = Any  # a jax.Array on device, a numpy array on the host


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packing:
    """Packed rows and their layout (see the module docstring)."""

    ids: Array
    segment_ids: Array
    positions: Array
    branch_ids: Array | None = None
    read_at: Array | None = None
    prev: Array | None = None
    loss_mask: Array | None = None
    pad_rows: bool = dataclasses.field(default=False, metadata=dict(static=True))

    def allowed(self) -> jax.Array:
        """[R, L, L] True where query t may attend to key s: causal, within its segment, and to
        the shared prefix (branch 0) or its own branch."""
        seg = self.segment_ids
        t = seg.shape[1]
        causal = jnp.arange(t)[None, :] <= jnp.arange(t)[:, None]  # [T, S]
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
        if self.branch_ids is None:
            return causal[None] & same
        br = self.branch_ids
        branch = (br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None])
        return causal[None] & same & branch

    def pad_axes(self) -> list[tuple[int, ...]]:
        """For each array of ``jax.tree.leaves(self)`` (in that order), the axes a host may pad
        with zeros to the longest of any host (``sharding.global_batch``): the row length (a zero
        tail is segment 0: no token), and the rows when ``pad_rows``. A read-out's j is never
        padded."""
        rows = (0,) if self.pad_rows else ()
        return [
            rows if f.name == "read_at" else rows + (1,)
            for f in dataclasses.fields(self)
            if not f.metadata.get("static") and getattr(self, f.name) is not None
        ]


def rows(batch: Mapping[str, Any]) -> Packing | None:
    """The ``Packing`` a packed batch holds in place of its ids and masks; None when unpacked."""
    return next((v for v in batch.values() if isinstance(v, Packing)), None)
