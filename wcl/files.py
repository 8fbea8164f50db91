"""Files a command writes for others to read: a file's identity (which checkpoint made these embeddings?), writes
that a reader or a stop never sees half done, and a stop by SIGTERM or Ctrl-C that leaves only whole files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from wcl.errors import ConfigError, WCLError


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


class WriteError(WCLError, OSError):
    """A file could not be written (a full disk, a read-only folder); nothing half-written was left."""


def write_whole(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Writes ``path`` through ``write(file)`` under a temporary name in its folder, then renames it into place: a
    reader or a stop never sees a half-written file. A failed write (a full disk) is a :class:`WriteError` whose
    message names the file and its folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as err:
        try:
            free = f", {shutil.disk_usage(path.parent).free / 2**20:.1f} MB free there"
        except OSError:
            free = ""
        raise WriteError(f"cannot write {path.name} into {path.parent}: {err.strerror or err}{free}; nothing "
                         "half-written was left. Free space there or choose another output folder.") from err
    finally:
        if tmp.exists():
            tmp.unlink()


def lock_folder(folder: Path, name: str, busy: str) -> IO[str] | None:
    """Holds an exclusive lock on ``folder`` (the file ``folder/name``) while the returned file is open; the system
    frees it when the process ends in any way (kill -9 included), so a stale file never blocks. Where another process
    holds it, a ``ConfigError`` says ``busy`` formatted with ``root`` (the folder) and ``holder`` (its process, host
    and start). ``None`` where the system has no locks (Windows, some network file systems): unguarded."""
    try:
        import fcntl
    except ImportError:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / name, "a+")  # noqa: SIM115 - held open while the caller writes
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigError(busy.format(root=folder, holder=holder)) from None
    except OSError:
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


class Stopped(BaseException):
    """SIGTERM (or Ctrl-C) inside :func:`stops_cleanly`; ``code`` is the exit status a shell shows (143, 130)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum, self.code = signum, 128 + signum


@contextlib.contextmanager
def stops_cleanly(prog: str) -> Iterator[None]:
    """Runs a command's body so that SIGTERM and Ctrl-C end it with one line and exit status 128 + the signal's
    number (143, 130), never a traceback: the file being written is dropped (:func:`write_whole`), the files
    written before it are whole. The previous handlers are restored after."""
    def stop(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
    try:
        yield
    except Stopped as stopped:
        name = signal.Signals(stopped.signum).name
        print(f"{prog}: stopped by {name}; the files it wrote before are whole, the one it was writing was dropped",
              file=sys.stderr, flush=True)
        raise SystemExit(stopped.code) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
