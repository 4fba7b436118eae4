"""Atomic file writing: a result file is either the old one or the whole new one, never half.

Write to a temp file in the same folder, flush + fsync, then ``os.replace`` (atomic on POSIX), then
fsync the folder so the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from robustkit.errors import RobustkitError


def writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create folder ``path`` (and its parents) if needed and check that files can be written into it, before any
    work whose results would go there; a file in the way, a missing permission or a read-only disk is one
    RobustkitError naming ``flag``."""
    path = Path(path)
    top = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)   # the first folder made
    try:
        path.mkdir(parents=True, exist_ok=True)
        if top is not None and _made is not None:
            _made.append(top)
        fd, probe = tempfile.mkstemp(prefix=".robustkit-write-check.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = (f" ({exc.filename})" if exc.filename and Path(exc.filename) != path
                 and not Path(exc.filename).name.startswith(".robustkit-write-check.") else "")
        raise RobustkitError(f"cannot write into {path}{where}: {exc.strerror or exc}; give {flag} a folder "
                             "you can write to") from None
    return path


_made: list[Path] | None = None   # the folders writable_dir made inside the innermost tidy_on_error block


@contextlib.contextmanager
def tidy_on_error() -> Iterator[None]:
    """A command that fails (bad settings found late, Ctrl-C) leaves no empty folder behind: the folders
    :func:`writable_dir` made inside the block are removed when the block raises and nothing was written
    into them. A folder holding any file is kept as it is."""
    global _made
    outer, _made = _made, []
    made = _made
    try:
        yield
    except BaseException:
        for top in reversed(made):
            if top.is_dir() and not any(p.is_file() or p.is_symlink() for p in top.rglob("*")):
                shutil.rmtree(top, ignore_errors=True)
        raise
    finally:
        _made = outer
        if outer is not None:
            outer.extend(made)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on clean exit it is fsynced and renamed onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: object) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV; columns default to the keys of the first row."""
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buf.getvalue())
