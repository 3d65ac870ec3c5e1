"""The one entry point of the readers: ``load(kind, source)`` -> canonical records.

``source`` is a ``DataSource``: which dataset, where, and how to read it, built from the
``config.data`` block (``DataSource.from_config``) or from ``defaults.data()`` with a few fields
changed (``DataSource.of``). Rows come from ``rows.read_rows`` (a hub name or local files), each
dataset's parse functions are in ``schemas/``, and bad rows follow ``source.on_bad_record``.
"""

from __future__ import annotations

import dataclasses

from metarm_jax.config import defaults
from metarm_jax.data import rows, schemas
from metarm_jax.data.records import DataError, Records, SkipReport, unique_prompts
from metarm_jax.data.schemas.common import ParseOptions

# The config.data keys of each kind's dataset (meta reads only data.meta_path).
_PREFIX = {"preference": "", "sft": "sft_", "prompt": "prompt_"}


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One dataset to read: ``config.data``'s keys for one kind of records, as values.

    dataset: reader name (docs/data.md; ``meta`` for a meta dataset). path: a hub name (passed to
    ``datasets.load_dataset`` as is) or a local file, glob or directory. split, name, data_dir:
    the split (in a directory: the files whose name says it), the hub config name, the hub
    subset or subfolder. The rest are the reader options of ``config.data``.
    """

    dataset: str
    path: str
    split: str
    name: str
    data_dir: str
    on_bad_record: str
    max_skip_fraction: float
    conversation_format: str
    pku_preference: str
    oasst_lang: str

    @classmethod
    def from_config(cls, cfg, kind: str, **changes) -> DataSource:
        """The source of ``kind``'s records in ``cfg`` (``config.data``): its
        ``<prefix>dataset/path/split/name/data_dir`` keys (``meta``: ``meta_path``), with
        ``changes`` to any field."""
        if kind == "meta":
            where = dict(dataset="meta", path=cfg.meta_path, split="", name="", data_dir="")
        elif kind in _PREFIX:
            p = _PREFIX[kind]
            where = {f: cfg[p + f] for f in ("dataset", "path", "split", "name", "data_dir")}
        else:
            raise DataError(
                f"unknown kind of records {kind!r}; expected one of {[*_PREFIX, 'meta']}."
            )
        options = (
            "on_bad_record",
            "max_skip_fraction",
            "conversation_format",
            "pku_preference",
            "oasst_lang",
        )
        return cls(**{**where, **{f: cfg[f] for f in options}, **changes})

    @classmethod
    def of(cls, dataset: str, path: str, **changes) -> DataSource:
        """``dataset`` at ``path``; every other field from ``defaults.data()`` (its preference
        keys: split 'train', no name, no data_dir) unless given in ``changes``."""
        return cls.from_config(defaults.data(), "preference", dataset=dataset, path=path, **changes)


def load(kind: str, source: DataSource, *, tokenizer=None, k: int | None = None) -> Records:
    """The records of ``kind`` in ``source``: a list with ``.skip_report`` (per-reason counts
    of the skipped rows).

    kind  preference: PreferencePair (``prompt + chosen`` is the chosen transcript)
          sft:        SFTExample (loss on the assistant segments)
          prompt:     PromptExample, de-duplicated by prompt text (first occurrence kept)
          meta:       MetaExample, from local files written by ``write_meta_dataset``
    tokenizer: needed for ``conversation_format='chat_template'``. k: a meta row with more
    responses is a bad row (None: no limit).
    """
    if kind == "meta" and not rows.is_local(source.path):
        raise DataError(
            f"{source.path}: meta datasets are local files written by write_meta_dataset."
        )
    read = schemas.reader(kind, source.dataset)
    report = SkipReport(
        f"{source.dataset}:{source.split}", source.on_bad_record, source.max_skip_fraction
    )
    opts = ParseOptions(
        conversation_format=None if kind == "meta" else source.conversation_format,
        tokenizer=tokenizer,
        pku_preference=source.pku_preference,
        oasst_lang=source.oasst_lang,
        k=k,
    )
    found = rows.read_rows(
        source.path, report, name=source.name, data_dir=source.data_dir, split=source.split
    )
    out = read(found, report, opts)
    report.check()
    if not out:
        raise DataError(
            f"{source.path}: no usable {schemas.KIND_NAMES[kind]} records for dataset "
            f"{source.dataset!r} ({report.total} rows read); is this the right dataset name and "
            "format?"
        )
    return Records(unique_prompts(out) if kind == "prompt" else out, report)
