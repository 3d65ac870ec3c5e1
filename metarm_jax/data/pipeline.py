"""grain pipelines: deterministic shuffle by seed, epochs, per-host slices, global jax.Arrays.

The global example stream is the same for any number of hosts: epoch e is a seeded permutation
of the examples, epochs are concatenated, and global batch b is stream items [b*B, (b+1)*B).
Host h of H takes items h, h+H, h+2H, ... of the stream, so its local batch b is a 1/H slice
of global batch b (no row lost or repeated), and `jax.make_array_from_process_local_data`
assembles the global array with the data-parallel sharding of `metarm_jax.sharding`.

The iterators are grain DatasetIterators: checkpoint them with orbax through
`grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` (see save_iterator_state), and
the restored iterator yields exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import grain
import jax
import orbax.checkpoint as ocp

from metarm_jax.data import features as F
from metarm_jax.data import readers
from metarm_jax.data.records import DataError
from metarm_jax.sharding import global_batch


class _Features:
    """The tokenized examples as a grain source (grain wants a stable __repr__)."""

    def __init__(self, items: Sequence, name: str):
        self.items, self.name = items, name

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __repr__(self):
        return f"_Features({self.name!r}, n={len(self.items)})"


class _PadTo:
    """Index i of the stream, or PAD_ROW past its end (fills the last global batch)."""

    def __init__(self, ds, n_real: int):
        self.ds, self.n_real = ds, n_real

    def __call__(self, i):
        return self.ds[i] if i < self.n_real else F.PAD_ROW

    def __repr__(self):
        return f"_PadTo(n_real={self.n_real})"


class _Global:
    """Local numpy batch -> global jax.Arrays on the mesh (``sharding.global_batch``: lengths
    equalised across hosts). A class with a stable repr, as grain wants."""

    def __init__(self, mesh):
        self.mesh = mesh

    def __repr__(self):
        return f"_Global({dict(self.mesh.shape)})"

    def __call__(self, batch: dict) -> dict:
        return global_batch(self.mesh, batch)


def make_iter_dataset(
    feats: Sequence,
    collate: F.Collate,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    mesh=None,
    num_threads: int = 2,
    prefetch_buffer_size: int = 4,
    name: str = "data",
) -> grain.IterDataset:
    """Batches of `feats` through `collate`; `batch_size` is global (all hosts together).

    shard_index/shard_count default to jax.process_index()/process_count(); pass them to
    simulate hosts. With `mesh`, batches are global jax.Arrays; without, local numpy dicts.
    num_epochs 0/None repeats forever. drop_remainder=False pads the last batch (example_mask).
    """
    if shard_index is None or shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    if not feats:
        raise DataError(f"{name}: no examples to batch.")
    if batch_size % shard_count:
        raise DataError(
            f"{name}: global batch size {batch_size} is not divisible by the number of "
            f"hosts {shard_count}."
        )
    ds = grain.MapDataset.source(_Features(feats, name))
    if shuffle:
        ds = ds.shuffle(seed=int(seed))  # a fresh permutation every epoch
    ds = ds.repeat(num_epochs or None)
    if num_epochs:
        n_batches = len(ds) // batch_size if drop_remainder else math.ceil(len(ds) / batch_size)
        if n_batches == 0:
            raise DataError(
                f"{name}: {len(feats)} examples x {num_epochs} epochs is less than one "
                f"global batch of {batch_size}; lower the batch size or set "
                "drop_remainder=False."
            )
        if drop_remainder:
            ds = ds[: n_batches * batch_size]  # every host gets the same number of batches
        else:
            ds = grain.MapDataset.range(n_batches * batch_size).map(_PadTo(ds, len(ds)))
    ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size // shard_count, drop_remainder=True, batch_fn=collate)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if mesh is not None:  # on the caller's thread, in step on every host
        it = it.map(_Global(mesh))
    return it


# ----------------------------------------------------------------------------------------------
# From config (`config.data`): records -> tokens -> iterator. Each returns a grain
# DatasetIterator with `.skip_report`, `.num_examples` (and `.records` for prompt iterators).


@dataclasses.dataclass(frozen=True)
class Kind:
    """How one kind of example goes from records (``readers.load``) to batches."""

    tokenize: Callable  # (records, tokenizer, spec) -> Records of features
    collate: Callable  # (spec, k) -> Collate
    batch_size_key: str  # config.data key of the global batch size
    seed_key: str  # config.data key of the shuffle seed


KINDS = {
    "preference": Kind(
        F.tokenize_pairs,
        lambda spec, k: F.CollatePairs(spec),
        "pref_batch_size",
        "pref_seed",
    ),
    "meta": Kind(
        F.tokenize_meta,
        lambda spec, k: F.CollateMeta(spec, k=k),
        "meta_batch_size",
        "meta_seed",
    ),
    "sft": Kind(
        F.tokenize_sft,
        lambda spec, k: F.CollateSFT(spec),
        "sft_batch_size",
        "sft_seed",
    ),
    "prompt": Kind(
        F.tokenize_prompts,
        lambda spec, k: F.CollatePrompts(spec),
        "prompt_batch_size",
        "prompt_seed",
    ),
}


def load_records(kind: str, cfg, tokenizer, *, split: str | None = None, k: int | None = None):
    """The records of one kind (see ``iterator``) from its ``config.data`` keys
    (``readers.DataSource.from_config``); ``split`` instead of the configured split (not for
    meta)."""
    changes = {"split": split} if split and kind != "meta" else {}
    source = readers.DataSource.from_config(cfg, kind, **changes)
    return readers.load(kind, source, tokenizer=tokenizer, k=k)


def iterator(
    kind: str,
    cfg,
    tokenizer,
    *,
    records=None,
    split: str | None = None,
    k: int | None = None,
    mesh=None,
    shard_index=None,
    shard_count=None,
    shuffle=None,
    num_epochs=None,
    drop_remainder=None,
    shared_prompt: bool = False,
    pack_sft: bool = False,
    row_multiple: int = 1,
):
    """Batches of one kind of example, from ``cfg`` (``config.data``): records (read from the
    kind's dataset keys, or passed in) -> tokens -> a checkpointable grain DatasetIterator with
    ``.skip_report``, ``.num_examples`` (after skips: one epoch) and ``.records``.

    kind      preference: chosen_ids, chosen_mask, rejected_ids, rejected_mask [n, T]
              meta:       input_ids, attention_mask [m, k, T]; sample_mask [m, k] (needs ``k``)
              sft:        input_ids, attention_mask, loss_mask [n, T]
              prompt:     left-padded input_ids, attention_mask [n, T]; prompt_index [n]
                          (``it.records[prompt_index]`` is the row's PromptExample)
    split     the split to read instead of the kind's configured one (not for meta).
    shuffle, num_epochs, drop_remainder: None takes ``cfg``'s value. drop_remainder=False pads
    the last batch and adds an ``example_mask`` [n]. shared_prompt (preference, meta): pack
    each prompt with its responses in one row (``metarm_jax.data.packing``). pack_sft (sft):
    several examples per row, the row count a multiple of ``row_multiple`` (the local
    data-parallel devices times the micro-batches).
    """
    spec_of = KINDS[kind]
    if kind == "meta" and (k is None or k < 1):
        raise ValueError(f"meta batches need k (responses per prompt, config.meta.k), got {k!r}.")
    if records is None:
        records = load_records(kind, cfg, tokenizer, split=split, k=k)
    spec = F.TokenSpec.from_config(cfg, tokenizer)
    feats = spec_of.tokenize(records, tokenizer, spec)
    collate = spec_of.collate(spec, k)
    drop = cfg.drop_remainder if drop_remainder is None else drop_remainder
    collate.with_example_mask = not drop
    if shared_prompt and kind not in ("preference", "meta"):
        raise ValueError(f"shared_prompt packs preference and meta batches, not {kind!r} ones.")
    collate.shared_prompt = bool(shared_prompt)
    if pack_sft and kind != "sft":
        raise ValueError(f"pack_sft packs sft batches, not {kind!r} ones.")
    collate.pack_sft, collate.row_multiple = bool(pack_sft), int(row_multiple)
    ds = make_iter_dataset(
        feats,
        collate,
        batch_size=cfg[spec_of.batch_size_key],
        seed=cfg[spec_of.seed_key],
        shuffle=cfg.shuffle if shuffle is None else shuffle,
        num_epochs=cfg.num_epochs if num_epochs is None else num_epochs,
        drop_remainder=drop,
        shard_index=shard_index,
        shard_count=shard_count,
        mesh=mesh,
        num_threads=cfg.num_threads,
        prefetch_buffer_size=cfg.prefetch_buffer_size,
        name=kind,
    )
    it = iter(ds)
    it.skip_report = getattr(feats, "skip_report", None)
    it.num_examples = len(feats)  # after all skips: what one epoch holds
    it.records = records
    return it


preference_iterator = functools.partial(iterator, "preference")
meta_iterator = functools.partial(iterator, "meta")
sft_iterator = functools.partial(iterator, "sft")
prompt_iterator = functools.partial(iterator, "prompt")


# ----------------------------------------------------------------------------------------------
# Orbax checkpointing of iterator state (the checkpoint manager can put
# grain.checkpoint.CheckpointSave(it) into its Composite args instead).


def _checkpointer():

    return ocp.Checkpointer(grain.checkpoint.CheckpointHandler())


def save_iterator_state(directory: str, iterator) -> None:
    """Writes the iterator's position under `directory` (one json per process) through orbax."""
    _checkpointer().save(directory, args=grain.checkpoint.CheckpointSave(iterator), force=True)


def restore_iterator_state(directory: str, iterator):
    """Sets `iterator` (built from the same data and config) to the saved position; returns it."""
    return _checkpointer().restore(directory, args=grain.checkpoint.CheckpointRestore(iterator))
