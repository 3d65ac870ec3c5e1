"""Dataset schemas: one module per dataset, each a few parse functions from its row dicts to
records, and its ``READERS = {dataset name: {kind: reader}}``. Adding a dataset is one module
here plus one line below. Kinds: preference, sft, prompt, meta (``metarm_jax.data.readers.load``).
"""

from __future__ import annotations

from metarm_jax.data.records import DataError
from metarm_jax.data.schemas import hh_rlhf, meta, oasst1, pku, prompts, sharegpt, summarize, trl
from metarm_jax.data.schemas.common import Reader

DATASETS: dict[str, dict[str, Reader]] = {}
for _module in (hh_rlhf, summarize, sharegpt, oasst1, pku, prompts, trl, meta):
    DATASETS.update(_module.READERS)

# How the kinds are named in messages ("unknown SFT dataset ...").
KIND_NAMES = {"preference": "preference", "sft": "SFT", "prompt": "prompt", "meta": "meta"}


def names(kind: str) -> list[str]:
    """The datasets that give records of ``kind``."""
    return sorted(name for name, readers in DATASETS.items() if kind in readers)


def reader(kind: str, dataset: str) -> Reader:
    """The reader of ``dataset``'s rows into records of ``kind``; a DataError naming the known
    datasets for an unknown one."""
    if kind not in KIND_NAMES:
        raise DataError(f"unknown kind of records {kind!r}; expected one of {list(KIND_NAMES)}.")
    if kind not in DATASETS.get(dataset, {}):
        raise DataError(f"unknown {KIND_NAMES[kind]} dataset {dataset!r}; known: {names(kind)}.")
    return DATASETS[dataset][kind]
