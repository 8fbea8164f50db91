"""Files a command writes for others to read: a file's identity (which checkpoint made these embeddings?) and
writes that a reader or a stop never sees half done."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def file_identity(path: str | Path, known: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"sha256", "bytes", "modified", "mtime_ns"}`` of a file: what tells one checkpoint from another at the same
    path. Given the ``known`` identity of an earlier look, a file of the same size and modification time (to the
    nanosecond) is taken as unchanged without reading it again."""
    p = Path(path).expanduser()
    stat = p.stat()
    if known and known.get("bytes") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
        return dict(known)
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "modified": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime))}


def describe_file(path: str | Path | None, identity: dict[str, Any] | None) -> str:
    """``PATH (sha256 0123456789ab, 12.3 MB, modified 2026-01-02 03:04:05)``."""
    if not identity:
        return f"{path} (identity not recorded)"
    return (f"{path} (sha256 {identity['sha256'][:12]}, {identity['bytes'] / 2**20:.1f} MB, modified "
            f"{identity['modified']})")


def write_whole(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes ``path`` through ``write(file)`` under a temporary name in its folder, then renames it into place: a
    reader or a stop never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
