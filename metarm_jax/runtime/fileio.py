"""Files that appear complete or not at all: write to a temporary name beside the target, then
rename (``os.replace`` is atomic on POSIX), so a kill mid-write never leaves a half file."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary path to write; renamed to ``path`` when the block ends without an error
    (and removed when it raises). The target's folder is created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj: Any, **dumps_kwargs) -> None:
    """``json.dumps(obj, **dumps_kwargs)`` written atomically."""
    write_text(path, json.dumps(obj, **dumps_kwargs))


def write_jsonl(path: str, rows) -> None:
    """One ``json.dumps(row)`` line per row, written atomically."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
