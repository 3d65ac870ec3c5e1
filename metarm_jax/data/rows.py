"""Rows of a dataset: a hub name or local files (json, jsonl, jsonl.gz, parquet) -> row dicts.

Generic: nothing here knows a dataset's schema (``metarm_jax.data.schemas`` parses the rows).
Local files are read directly (json, gzip, pyarrow), hub names through ``datasets.load_dataset``.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from metarm_jax.data.records import MALFORMED, UNDECODABLE, DataError, SkipReport, Source

_EXTS = {
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}
_SPLIT_WORDS = ("train", "test", "valid", "validation", "eval", "dev")


def file_ext(path: str) -> str | None:
    """The data-file extension of `path` (".jsonl.gz", ".parquet", ...), or None."""
    for e in sorted(_EXTS, key=len, reverse=True):
        if path.endswith(e):
            return e
    return None


def is_local(path: str) -> bool:
    """True for a local file, glob or directory; anything else is a hub dataset name."""
    return (
        os.path.exists(path)
        or glob.has_magic(path)
        or path.startswith(("/", ".", "~"))
        or file_ext(path) is not None
    )


def resolve_files(path: str, split: str, data_dir: str) -> list[str]:
    """A local file, glob or directory -> the sorted data files (of `split`, where names tell)."""
    path = os.path.expanduser(path)
    if data_dir and os.path.isdir(path):
        path = os.path.join(path, data_dir)
    if os.path.isdir(path):
        files = sorted(
            f
            for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
            if os.path.isfile(f) and file_ext(f)
        )
        named = [f for f in files if _split_of(f)]
        if split and named:
            files = [f for f in files if _split_of(f) == _canon_split(split)]
            if not files:
                raise DataError(
                    f"{path}: no data file for split {split!r} (found "
                    f"{[os.path.relpath(f, path) for f in named]})."
                )
    elif glob.has_magic(path):
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
    elif os.path.isfile(path):
        files = [path]
    else:
        raise DataError(f"{path}: no such file or directory.")
    if not files:
        raise DataError(f"{path}: no data files (.json, .jsonl, .jsonl.gz, .parquet) found.")
    for f in files:
        if not file_ext(f):
            raise DataError(
                f"{f}: unknown file format; expected .json, .jsonl, .jsonl.gz or .parquet."
            )
    return files


def _canon_split(s: str) -> str:
    return {"valid": "validation", "dev": "validation", "eval": "validation"}.get(s, s)


def _split_of(f: str) -> str | None:
    words = re.split(r"[^a-z]+", os.path.basename(f).lower()) + [
        os.path.basename(os.path.dirname(f)).lower()
    ]
    for w in words:
        if w in _SPLIT_WORDS:
            return _canon_split(w)
    return None


def _quiet_datasets():
    import datasets  # heavy: imported only when reading

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _load_file(file: str) -> list[dict] | None:
    """All rows of one local file, or None for a JSON-lines file that needs the line-by-line
    reader (a line that is not JSON, or not UTF-8, is then a counted bad row).

    Read directly (json, gzip, pyarrow), not through `datasets`: nothing is cached outside the
    run, no column is cast to a type inferred from other rows, and a damaged file says so."""
    if os.path.getsize(file) == 0:
        raise DataError(f"{file}: the file is empty.")
    ext = file_ext(file)
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(file).to_pylist()
        except Exception as e:
            raise DataError(
                f"{file}: not a readable parquet file ({str(e).splitlines()[0][:200]})."
            ) from None
    opener = gzip.open if ext.endswith(".gz") else open
    try:
        with opener(file, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # a truncated or corrupt gzip stream
        raise DataError(f"{file}: cannot read it ({e}); is the file complete?") from None
    if ext in (".json", ".json.gz"):
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None  # JSON lines under a .json name, or bad lines: read line by line
        if isinstance(obj, list):
            return obj
        if isinstance(obj, dict):
            return [obj]
        raise DataError(f"{file}: expected a JSON list of objects (or JSON lines).")
    return None


def _lines_with_errors(file: str, report: SkipReport) -> Iterator[tuple[int, Any]]:
    """Line-by-line JSONL fallback that turns undecodable / malformed lines into bad rows."""
    opener = gzip.open if file.endswith(".gz") else open
    with opener(file, "rb") as f:
        data = f.read()
    row = 0
    for line in io.BytesIO(data):
        if not line.strip():
            continue
        where = Source("", file, row)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            report.total += 1
            report.bad(where, UNDECODABLE, None, f"invalid UTF-8 at byte {e.start}")
            row += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            report.total += 1
            report.bad(where, MALFORMED, None, f"invalid JSON: {e.msg} at column {e.colno}")
            row += 1
            continue
        yield row, obj
        row += 1


def read_rows(
    path: str, report: SkipReport, *, name: str, data_dir: str, split: str
) -> Iterator[tuple[Source, dict]]:
    """(Source, row dict) for every row; counts rows in `report.total`."""
    if not path:
        raise DataError(f"{report.name}: no dataset path given (a hub name or a local file).")
    if not is_local(path):
        yield from _read_hub(path, report, name=name, data_dir=data_dir, split=split)
        return
    files = resolve_files(path, split, data_dir)
    for file in files:
        rows = _load_file(file)
        if rows is not None:
            it = enumerate(rows)
        elif file.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            it = _lines_with_errors(file, report)
        else:
            raise DataError(
                f"{file}: could not parse this {file_ext(file)} file; check that it is valid "
                "(a JSON list or JSON lines, or a parquet table)."
            )
        for i, row in it:
            report.total += 1
            where = Source(report.name, file, i)
            if not isinstance(row, dict):
                report.bad(
                    where, MALFORMED, None, f"expected a JSON object, got {type(row).__name__}"
                )
                continue
            yield where, row
    if report.total == 0:
        raise DataError(f"{path}: no rows found (empty file?).")


def _read_hub(path, report, *, name, data_dir, split):
    datasets = _quiet_datasets()
    try:
        ds = datasets.load_dataset(path, name or None, data_dir=data_dir or None, split=split)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise DataError(
            f"could not load {path!r} (config {name or None!r}, data_dir {data_dir or None!r}, split "
            f"{split!r}) with datasets.load_dataset: {type(e).__name__}: {first}. If this machine is "
            "offline or the name is wrong, download the data and pass a local path instead (a file, "
            "a glob, or a directory of .json/.jsonl/.jsonl.gz/.parquet files)."
        ) from None
    for i, row in enumerate(ds):
        report.total += 1
        yield Source(report.name, path, i), row
