"""The one atomic-write helper: every file this project writes goes to a temp file beside its target
and is renamed over it, so a crash mid-write leaves the previous file intact. Temp files are named
``.<name>.<random>-<pid>@<host>.tmp`` (their writer); those a killed write left behind are removed by
``remove_stale_temps``."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

TEMP_GLOB = ".*.tmp"


def _host() -> str:
    return socket.gethostname()[:32]


def _new_temp(path: Path) -> str:
    """Create an empty temp file beside path with the mode a plain open() gives (0o666 & ~umask;
    mkstemp would make it 0600), named after its writer (pid@host)."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}-{os.getpid()}@{_host()}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call write(tmp_path) on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except RuntimeError as e:  # torch.save's writer reports a failed write (disk full, ulimit -f) without errno
        if not any(s in str(e) for s in ("inline_container", "PytorchStreamWriter", "file write failed")):
            raise
        raise write_failed(path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_failed(path: Path) -> OSError:
    """The OSError a write of ``path`` that torch could not finish stands for: the disk (or quota) is full when
    little space is left, else the file size limit (ulimit -f) when one is set, else an I/O error."""
    import errno
    import resource

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and free < 64 << 20:
        code = errno.ENOSPC
    elif resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        code = errno.EFBIG
    else:
        code = errno.EIO
    return OSError(code, os.strerror(code), str(path))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _writer_gone(name: str) -> bool:
    """Was this temp file written by a process of this machine that no longer runs (a killed write)?"""
    left, at, host = name.removesuffix(".tmp").rpartition("@")
    pid = left.rpartition("-")[2]
    if not at or host != _host() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_stale_temps(folders: Iterable[str | os.PathLike], max_age_s: float = 600) -> list[Path]:
    """Delete temp files of killed writes in these folders: those whose writer process on this machine is
    gone, and any older than max_age_s. A live writer's temp file (in a parallel job, maybe on another
    machine of a shared file system) is safe: every writer here finishes in seconds, 10 min leaves a margin
    for clock skew. Returns the files removed."""
    removed, now = [], time.time()
    for folder in map(Path, folders):
        for p in folder.glob(TEMP_GLOB) if folder.is_dir() else ():
            try:
                if p.is_file() and (now - p.stat().st_mtime > max_age_s or _writer_gone(p.name)):
                    p.unlink()
                    removed.append(p)
            except FileNotFoundError:  # renamed or removed by another process meanwhile
                pass
    return removed
