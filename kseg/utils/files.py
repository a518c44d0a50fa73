"""Atomic file writes: a file appears complete under its name, or not at all.

Everything kseg writes for a later step to read (records' shard lists and
split files, config.json, evaluation results, CRF flagfiles, Bbox-Seg masks)
is written under a temporary name next to it and renamed into place, so a
run killed mid-write leaves the previous file or none, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it to `path` when the
    block ends without an exception, and removes it otherwise.

    The temporary name holds the process id, so processes writing the same
    file at once (the workers of a multi-worker run) do not collide.

    Example:
        >>> import tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "result.txt")
        >>> with atomic_path(target) as tmp:
        ...     with open(tmp, "w") as f:
        ...         _ = f.write("done")
        >>> open(target).read()
        'done'
    """
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def write_json(path: str, value, **kwargs) -> None:
    """Writes `value` as JSON (indent 1; `kwargs` go to json.dump) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, **{"indent": 1, **kwargs})
