"""Pieces every training stage shares: the stage's loop config, its data, its length in steps, and
its export."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np

from metarm_jax import data as D
from metarm_jax.models import hf
from metarm_jax.runtime.errors import ConfigError
from metarm_jax.runtime.layout import StageDir

Batches = Callable[[], Iterable[Mapping[str, np.ndarray]]]


@dataclasses.dataclass
class StageData:
    """What a stage trains and evaluates on."""

    train: dict[str, Any]  # {name: checkpointable iterator}, repeating; the loop draws from each
    num_examples: int  # training examples (pairs) after bad rows: one epoch
    val: Batches  # a fresh pass over the validation batches (padded last batch: example_mask)
    tokenizer: Any = None
    meta_eval: Batches | None = None  # a fresh pass over meta batches (the RM stages' |Δr|)


def preference_data(d, tok):
    """(training iterator, validation batches) of ``config.data``'s preference pairs, packed one
    row per pair when ``data.shared_prompt`` is on: what the RM, MetaRM and DPO stages read."""
    shared = bool(d.shared_prompt)
    train = D.preference_iterator(d, tok, num_epochs=0, shared_prompt=shared)  # loop stops it
    val = lambda: D.preference_iterator(
        d,
        tok,
        split=d.eval_split,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        shared_prompt=shared,
    )
    return train, val


def stage_train_config(
    train: ml_collections.ConfigDict, stage: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """A copy of ``train`` (config.train) with the keys that ``stage`` (config.sft, config.dpo)
    also has set to the stage's values. Neither input is changed."""
    out = ml_collections.ConfigDict(train.to_dict())
    for key in stage:
        if key in out:
            out[key] = stage[key]
    return out


def total_steps(
    stage: str,
    *,
    steps: int,
    epochs: float,
    num_examples: int,
    batch_size: int,
    block: str,
    batch_key: str,
    unit: str = "examples",
) -> int:
    """``steps`` if set, else ⌊epochs · num_examples / batch_size⌋; an error names the keys when
    the run would have no step."""
    total = int(steps) or math.floor(epochs * num_examples / batch_size)
    if total < 1:
        raise ConfigError(
            f"{stage}: the run has 0 steps ({num_examples} {unit} x {block}.epochs={epochs} / "
            f"data.{batch_key}={batch_size}); set {block}.steps or {block}.epochs."
        )
    return total


def export(model, workdir: str, name: str, *, tokenizer=None, scoring=None) -> str:
    """Write ``model`` to ``<workdir>/export/<name>`` as an HF checkpoint (with ``tokenizer``, and
    an RM's ``scoring`` convention: ``hf.save_hf``); returns the path."""
    out = StageDir(workdir).export(name)
    hf.save_hf(model, out, tokenizer=tokenizer, scoring=scoring)
    return out
